"""The epoch loop: `fit` runs train/eval steps over data, drives callbacks, keeps `History`."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any


class History:
    """Per-epoch logs: one dict of floats per epoch (``"loss"``, ``"val_loss"``, metrics).

    ``history.history`` is Keras's view, a dict ``name -> list`` over epochs (``nan`` where an
    epoch lacks the name); ``to_dict``/``from_dict`` round-trip through JSON.

    Example:
        >>> h = History()
        >>> h.append({"loss": 0.5, "val_loss": 0.6})
        >>> h.history
        {'loss': [0.5], 'val_loss': [0.6]}
        >>> History.from_dict(h.to_dict()) == h
        True
    """

    def __init__(self, epochs: list[Mapping[str, float]] | None = None):
        self.epochs: list[dict[str, float]] = [
            {str(k): float(v) for k, v in e.items()} for e in (epochs or [])
        ]

    def append(self, logs: Mapping[str, Any]) -> None:
        """Records one epoch's logs (values converted to Python floats)."""
        self.epochs.append({str(k): float(v) for k, v in logs.items()})

    @property
    def history(self) -> dict[str, list[float]]:
        names: dict[str, None] = {}
        for e in self.epochs:
            names.update(dict.fromkeys(e))
        return {n: [e.get(n, math.nan) for e in self.epochs] for n in names}

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict ``{"epochs": [{name: float}, ...]}``."""
        return {"epochs": [dict(e) for e in self.epochs]}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> History:
        """The inverse of `to_dict`."""
        return cls(list(d["epochs"]))

    def __len__(self) -> int:
        return len(self.epochs)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, History):
            return NotImplemented
        if len(self.epochs) != len(other.epochs):
            return False
        return all(
            a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
            for a, b in zip(self.epochs, other.epochs, strict=True)
        )

    __hash__ = None  # mutable

    def __repr__(self) -> str:
        return f"History(epochs={self.epochs!r})"


def _same(a: float, b: float) -> bool:
    return a == b or (math.isnan(a) and math.isnan(b))
