"""Quiet orbax reads: the warnings every restore printed (absl's "read only" notes of a
read-only `CheckpointManager`) and the asyncio task reports that a damaged checkpoint's failed
read leaves behind are dropped while `dlopt.training.store` reads; nothing else is touched.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import warnings
from collections.abc import Iterator, Sequence

# What orbax says on every read that is no news to the user: absl warnings of a read-only
# manager, and asyncio's reports of the tasks that a failed (damaged) read leaves behind.
_NOISE = {
    "absl": ("read only", "read_only=True"),
    "asyncio": ("Task exception was never retrieved", "Task was destroyed", "Executing <Task"),
}


class _DropNoise(logging.Filter):
    def __init__(self, needles: Sequence[str]):
        super().__init__()
        self.needles = tuple(needles)

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(needle in message for needle in self.needles)


@contextlib.contextmanager
def quiet_reads() -> Iterator[None]:
    """Drops the records of `_NOISE` from the ``absl`` and ``asyncio`` loggers (and the
    "coroutine ... was never awaited" warnings) while a read runs; every other record passes,
    and the loggers are as before afterwards. After a failed read the abandoned tasks are
    collected inside, so their reports are dropped too."""
    filters = [(logging.getLogger(name), _DropNoise(needles)) for name, needles in _NOISE.items()]
    for logger, noise in filters:
        logger.addFilter(noise)
    failed = False
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", "coroutine .* was never awaited", RuntimeWarning)
            try:
                yield
            except BaseException:
                failed = True
                raise
            finally:
                if failed:
                    gc.collect()
    finally:
        for logger, noise in filters:
            logger.removeFilter(noise)
