"""`StepOptions`: the flags of every train-step builder, and of `fit`, in one object."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from dlopt.core import validation
from dlopt.wrappers.loss_scale import DynamicLossScale


@dataclasses.dataclass(frozen=True)
class StepOptions:
    """The flags every train-step builder takes (`make_train_step`, the pmap and mesh steps).

    Pass them as keywords to a builder (``make_train_step(loss_fn, accumulation_steps=4)``)
    or as one object (``make_train_step(loss_fn, options=StepOptions(...))``; keywords win);
    `fit` takes the object for the step it builds (``fit(..., loss_fn=f, options=...)``).

    Attributes:
        accumulation_steps: micro-batches per update (must divide the batch size); their
            example-weighted gradients are summed in float32 (float64 for float64 params).
        skip_nonfinite: the NaN/Inf guard: when the gradients or the metrics are not finite,
            params, opt_state and model state stay, ``skipped_steps`` and ``step`` count up.
        loss_as_value: pass the batch loss as ``value=`` to ``tx.update`` (plateau
            transforms); an explicit ``value=`` keyword to the step wins.
        pass_loss: pass the batch loss as ``loss=`` to ``tx.update``
            (`dlopt.skip_step_on_spikes` watches it); an explicit ``loss=`` keyword wins.
        donate: donate the input state's buffers (the old state is unusable after a call).
        loss_scale: a `dlopt.dynamic_loss_scale` policy, or None: the loss is multiplied by
            the state's scale :math:`S` before differentiation and the gradients divided by
            it; a step with non-finite gradients is skipped (whatever ``skip_nonfinite``)
            and :math:`S` adjusted. The policy is given once, here: a state without a
            loss-scale state gets ``policy.init()`` on its first step
            (`dlopt.training.steps.with_loss_scale`).

    Skipped steps, one count: the step's guard (``skip_nonfinite`` and the loss scale's
    overflow skip are one ``lax.cond``, `dlopt.wrappers.finite.guarded`) counts every step it
    skips in ``state.skipped_steps`` (`dlopt.wrappers.finite.count_nonfinite`), and so is
    every update a `dlopt.skip_step_on_spikes` inside ``tx`` skips
    (`dlopt.wrappers.finite.skipped_in`). A ``tx`` wrapped in `dlopt.apply_if_finite`
    keeps optax's counters in its own state; under the step's guard it only sees finite
    gradients (see `dlopt.apply_if_finite`).
    """

    accumulation_steps: int = 1
    skip_nonfinite: bool = True
    loss_as_value: bool = False
    pass_loss: bool = False
    donate: bool = True
    loss_scale: DynamicLossScale | None = None

    def __post_init__(self):
        validation.check_int("accumulation_steps", self.accumulation_steps, 1)
        for name in ("skip_nonfinite", "loss_as_value", "pass_loss", "donate"):
            validation.check_flag(name, getattr(self, name))
        if self.loss_scale is not None and not isinstance(self.loss_scale, DynamicLossScale):
            raise ValueError(
                "loss_scale must be a dlopt.dynamic_loss_scale(...) policy or None, got "
                f"loss_scale={self.loss_scale!r}."
            )

    @classmethod
    def merge(cls, options: StepOptions | None, flags: Mapping[str, Any]) -> StepOptions:
        """``options`` (default: the defaults) with the keyword ``flags`` replaced."""
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(flags) - set(names))
        if unknown:
            raise TypeError(f"unexpected step option(s) {unknown}; the options are {names}.")
        if options is not None and not isinstance(options, cls):
            raise TypeError(f"options must be a StepOptions, got {type(options).__name__}.")
        return dataclasses.replace(options or cls(), **flags)
