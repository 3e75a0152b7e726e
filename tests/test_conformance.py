"""Every transform dlopt exports passes the conformance kit (`dlopt.testing.check_transformation`).

`TRANSFORMS` has one or more entries per exported factory; `test_table_is_complete` fails when
a public function returning a GradientTransformation has no entry, so no export skips the kit.
"""

from __future__ import annotations

import jax.numpy as jnp
import pytest
from cases_conformance import TRANSFORMS
from helpers import Entry
from support.exports import exported_transform_factories

import dlopt
from dlopt.testing import check_transformation


def _id(entry: Entry) -> str:
    return f"{entry.name}-{entry.variant}" if entry.variant else entry.name


@pytest.mark.parametrize("entry", TRANSFORMS, ids=_id)
def test_conformance(entry):
    check_transformation(entry.make(), **entry.kwargs)


def test_table_is_complete():
    exported = exported_transform_factories()
    assert {"sgd", "chain", "identity"} <= exported  # the introspection itself works
    missing = exported - {entry.name for entry in TRANSFORMS}
    assert not missing, f"add conformance entries to TRANSFORMS for {sorted(missing)}"


def test_table_names_are_exported():
    stale = {entry.name for entry in TRANSFORMS} - exported_transform_factories()
    assert not stale, f"TRANSFORMS names factories dlopt does not export: {sorted(stale)}"


MIXED_PRECISION_PARAMS = {
    "w": jnp.linspace(-1.0, 1.0, 6, dtype=jnp.float32).reshape(2, 3).astype(jnp.bfloat16),
    "b": [jnp.linspace(0.5, 1.0, 3, dtype=jnp.float32)],
}
MIXED_PRECISION = ["sgd", "adagrad", "rmsprop", "adadelta", "adam", "adamw", "nadam", "nadamw",
                   "adamax", "lion", "clip", "clip_by_global_norm", "clip_by_block_rms",
                   "adaptive_grad_clip", "clip_by_update_rms", "clip_by_norm_history",
                   "skip_step_on_spikes"]  # fmt: skip


@pytest.mark.parametrize("entry", [e for e in TRANSFORMS if e.name in MIXED_PRECISION], ids=_id)
def test_optimizers_and_clipping_keep_bf16_params_bf16(entry):
    # Updates come back in each parameter's dtype; bf16 arithmetic needs looser tolerances.
    check_transformation(
        entry.make(),
        MIXED_PRECISION_PARAMS,
        check_vmap=False,
        check_pmap=False,
        random_examples=0,
        rtol=2e-2,
        atol=1e-3,
        **entry.kwargs,
    )


def test_completeness_check_sees_new_exports(monkeypatch):
    def clip_everything(limit: float) -> dlopt.GradientTransformation:
        return dlopt.identity()

    clip_everything.__module__ = "dlopt.transforms.clipping"
    monkeypatch.setattr(dlopt, "clip_everything", clip_everything, raising=False)
    assert "clip_everything" in exported_transform_factories()
    with pytest.raises(AssertionError, match="clip_everything"):
        test_table_is_complete()
