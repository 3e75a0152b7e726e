"""Progress output that suits where it goes: a tqdm bar on a terminal, plain lines in a log.

A bar redraws itself with carriage returns; written to a file or a pipe (a CI log,
``dlopt demo > log 2>&1``) those pile up into one long garbled line. So each helper here looks
at the stream it writes to (standard error by default) when it starts: on a terminal, with
tqdm installed (the ``progress`` extra), it draws a bar; otherwise it writes plain lines, one
per epoch (`EpochProgress`) or one per finished run (`Progress.note`), and nothing per batch.

Example:
    >>> import sys
    >>> from dlopt.lab.progress import Progress
    >>> with Progress(total=2, unit="run", stream=sys.stdout) as bar:  # not a terminal: lines
    ...     for name in ("sgd", "adam"):
    ...         bar.describe(name)
    ...         bar.update()
    ...         bar.note(f"{name}: done")
    sgd: done
    adam: done
"""

from __future__ import annotations

import sys
import time
from collections.abc import Mapping
from typing import Any, TextIO


def is_terminal(stream: Any) -> bool:
    """Whether ``stream`` is an interactive terminal (False for files, pipes and captures)."""
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


def _tqdm(stream: TextIO, **kwargs: Any) -> Any | None:
    """A tqdm bar on ``stream`` when it is a terminal and tqdm is installed, else None."""
    if not is_terminal(stream):
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return None
    return tqdm(file=stream, **kwargs)


def format_logs(logs: Mapping[str, float]) -> str:
    """``"loss 0.1234  accuracy 0.9531  val_loss 0.2"``: each value to 4 significant digits."""
    return "  ".join(f"{k} {float(v):.4g}" for k, v in logs.items())


class EpochProgress:
    """The progress of an epoch loop (`dlopt.training.fit`).

    On a terminal: a bar over each epoch's batches with the running loss and examples/s
    (removed when the epoch ends). Elsewhere: one line per epoch,
    ``epoch 3/40  loss 0.1234  val_loss 0.2345  (1.2 s)``. Disabled: nothing.

    Args:
        epochs: the number one past the last epoch (shown as ``epoch k/epochs``).
        enabled: False prints nothing.
        stream: where to write (default: ``sys.stderr`` at construction).
    """

    def __init__(self, epochs: int, *, enabled: bool = True, stream: TextIO | None = None):
        self.epochs, self.enabled = epochs, enabled
        self.stream = sys.stderr if stream is None else stream
        self.terminal = enabled and is_terminal(self.stream)
        self._bar: Any | None = None
        self._start = self._seen = 0.0

    @property
    def per_batch(self) -> bool:
        """Whether `batch_end` draws anything (only a terminal bar does; it costs a host sync)."""
        return self._bar is not None

    def epoch_begin(self, epoch: int, num_batches: int | None = None) -> None:
        """Starts the epoch's clock and, on a terminal, its bar over ``num_batches``."""
        self._start, self._seen = time.perf_counter(), 0.0
        if self.terminal:
            self._bar = _tqdm(
                self.stream,
                total=num_batches,
                desc=f"epoch {epoch + 1}/{self.epochs}",
                unit="batch",
                leave=False,
            )

    def batch_end(self, loss: Any, num_examples: Any) -> None:
        """Advances the bar by one batch, showing ``loss`` and the examples/s so far."""
        if self._bar is None:
            return
        self._seen += float(num_examples)
        rate = self._seen / max(time.perf_counter() - self._start, 1e-9)
        self._bar.set_postfix(loss=f"{float(loss):.4g}", ex_s=f"{rate:.0f}")
        self._bar.update()

    def epoch_end(self, epoch: int, logs: Mapping[str, float]) -> None:
        """Closes the bar; off a terminal writes the epoch's line."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        if self.enabled and not self.terminal:
            seconds = time.perf_counter() - self._start
            line = f"epoch {epoch + 1}/{self.epochs}  {format_logs(logs)}  ({seconds:.1f} s)"
            print(line, file=self.stream, flush=True)


class Progress:
    """A count of work units (epochs over several runs, benchmark cases) with notes.

    On a terminal: a tqdm bar; ``describe`` sets its label. Elsewhere: no bar, and ``note``
    writes its line instead, so a log gets one line per finished piece of work rather than
    a redrawn bar. A context manager (the bar closes on exit).

    Args:
        total: the units of work.
        unit: their name (``"epoch"``, ``"case"``).
        enabled: False prints nothing, notes included.
        stream: where to write (default: ``sys.stderr`` at construction).
    """

    def __init__(
        self,
        total: int | None = None,
        *,
        unit: str = "epoch",
        enabled: bool = True,
        stream: TextIO | None = None,
    ):
        self.enabled = enabled
        self.stream = sys.stderr if stream is None else stream
        self._bar = _tqdm(self.stream, total=total, unit=unit) if enabled else None

    def update(self, n: int = 1) -> None:
        """Counts ``n`` units done."""
        if self._bar is not None and n:
            self._bar.update(n)

    def describe(self, text: str) -> None:
        """Labels the bar (what runs now); nothing off a terminal."""
        if self._bar is not None:
            self._bar.set_description(text)

    @property
    def bar(self) -> bool:
        """Whether a bar is drawn (a terminal, tqdm installed, enabled)."""
        return self._bar is not None

    def note(self, line: str) -> None:
        """The plain-line stand-in for the bar: written only when no bar is drawn."""
        if self.enabled and self._bar is None:
            print(line, file=self.stream, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
