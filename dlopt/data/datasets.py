"""Datasets as dicts of numpy arrays: TFDS through ArrayRecord sources, plus an offline default.

``load("digits")`` and ``load("breast_cancer")`` read scikit-learn's bundled files and need no
network. Any other name goes through ``tfds.data_source`` (random access, no TensorFlow needed).
TFDS and scikit-learn are imported only inside the functions that use them.
"""

from __future__ import annotations

import contextlib
import os
import socket
import tempfile
import threading
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import numpy as np

OFFLINE_DATASETS = ("digits", "breast_cancer")
"""Names ``load`` serves from scikit-learn's bundled files, with no network."""

_OFFLINE_TEST_FRACTION = 0.2
_CHUNK = 1024


_TEMPDIR_LOCK = threading.Lock()


@contextlib.contextmanager
def _scratch_tempdir() -> Iterator[None]:
    """While TFDS runs, `tempfile`'s default folder is a scratch folder removed afterwards.

    TFDS's ``DatasetInfo.initialize_from_bucket`` copies metadata through
    ``tempfile.mkdtemp("tfds")`` and never removes the folder: every probe of a dataset that is
    not prepared (and every ``data_source`` call) left an empty ``/tmp/tmpXXXXtfds`` behind.
    """
    with _TEMPDIR_LOCK, tempfile.TemporaryDirectory(prefix="dlopt-tfds-") as scratch:
        previous = tempfile.tempdir
        tempfile.tempdir = scratch
        try:
            yield
        finally:
            tempfile.tempdir = previous


class DatasetUnavailableError(RuntimeError):
    """A TFDS dataset is not prepared in ``data_dir`` and cannot be downloaded now."""


class ArraySource:
    """An indexable source over a dict of equal-length arrays: ``len`` and ``source[i]``.

    ``source[i]`` is one example (a dict of arrays without the leading axis); ``source[idx]``
    with an integer array or slice is a dict of stacked examples. Has the same interface as the
    sources ``tfds.data_source`` returns, so code written for one runs on the other.
    """

    def __init__(self, arrays: Mapping[str, np.ndarray]):
        lengths = {k: len(v) for k, v in arrays.items()}
        if len(set(lengths.values())) > 1:
            raise ValueError(f"all arrays must have the same length, got {lengths}.")
        self.arrays = dict(arrays)

    def __len__(self) -> int:
        return len(next(iter(self.arrays.values()))) if self.arrays else 0

    def __getitem__(self, index: Any) -> dict[str, np.ndarray]:
        return {k: v[index] for k, v in self.arrays.items()}

    def __getitems__(self, indices: Any) -> list[dict[str, np.ndarray]]:
        return [self[int(i)] for i in indices]


def _digits() -> dict[str, np.ndarray]:
    from sklearn.datasets import load_digits

    d = load_digits()
    image = (d.images / 16.0).astype(np.float32)[..., None]
    return {"image": image, "label": d.target.astype(np.int32)}


def _breast_cancer() -> dict[str, np.ndarray]:
    from sklearn.datasets import load_breast_cancer

    d = load_breast_cancer()
    return {"features": d.data.astype(np.float32), "label": d.target.astype(np.int32)}


_OFFLINE_LOADERS: dict[str, Callable[[], dict[str, np.ndarray]]] = {
    "digits": _digits,
    "breast_cancer": _breast_cancer,
}


def _offline_split(data: dict[str, np.ndarray], split: str | None) -> dict[str, np.ndarray]:
    if split in (None, "all"):
        return data
    if split not in ("train", "test"):
        raise ValueError(
            f"the offline datasets have splits 'train', 'test' and 'all' (or None), got "
            f"split={split!r}. Use dlopt.data.train_val_test_split for a validation split."
        )
    from dlopt.data.preprocess import train_val_test_split

    index = np.arange(len(data["label"]))
    (train, _), _, (test, _) = train_val_test_split(
        index, data["label"], val=0.0, test=_OFFLINE_TEST_FRACTION, seed=0
    )
    keep = np.sort(train if split == "train" else test)
    return {k: v[keep] for k, v in data.items()}


def _network_available(host: str = "storage.googleapis.com", timeout: float = 3.0) -> bool:
    """Whether ``host:443`` answers within ``timeout`` seconds (DNS included; never hangs)."""
    result: list[bool] = []

    def probe() -> None:
        try:
            with socket.create_connection((host, 443), timeout=timeout):
                result.append(True)
        except OSError:
            result.append(False)

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout)
    return bool(result and result[0])


def _unavailable(name: str, where: str, reason: str) -> DatasetUnavailableError:
    return DatasetUnavailableError(
        f"TFDS dataset {name!r} is not downloaded in {where} and {reason}. Download it once "
        f"on a machine with network (dlopt.data.load({name!r}, 'train', download=True, "
        f"data_dir=...)) and copy the data_dir here, or use an offline dataset bundled with "
        f"scikit-learn: dlopt.data.load('digits') (8x8 images, 10 classes) or "
        f"dlopt.data.load('breast_cancer') (30 features, 2 classes)."
    )


def gather(source: Any, indices: Any = None) -> dict[str, np.ndarray]:
    """Reads examples ``indices`` (all if None) of a random-access source into stacked arrays.

    Works on any ``len``/``source[i]`` source (``tfds.data_source``, :class:`ArraySource`),
    reading in chunks through ``__getitems__`` where the source supports it. Numeric fields
    only (string ids are dropped); ``label`` becomes int32.
    """
    indices = np.arange(len(source)) if indices is None else np.asarray(indices)
    columns: dict[str, list[np.ndarray]] = {}
    for start in range(0, len(indices), _CHUNK):
        keys = [int(i) for i in indices[start : start + _CHUNK]]
        try:
            examples = source.__getitems__(keys)
        except (AttributeError, TypeError):  # sources without (working) batched reads
            examples = [source[i] for i in keys]
        for example in examples:
            for key, value in example.items():
                columns.setdefault(key, []).append(np.asarray(value))
    out = {}
    for key, values in columns.items():
        array = np.stack(values)
        if array.dtype.kind in "biuf":  # drop strings such as cifar10's "id"
            out[key] = array.astype(np.int32) if key == "label" else array
    return out


def load(
    name: str,
    split: str | None = None,
    *,
    data_dir: str | os.PathLike | None = None,
    download: bool = False,
    as_source: bool = False,
) -> dict[str, np.ndarray] | Any:
    """Loads a dataset as a dict of numpy arrays (or an indexable source).

    Image sets give ``{"image": (n, h, w, c), "label": (n,) int32}``; tabular sets give
    ``{"features": (n, d) float32, "label": (n,) int32}``.

    * ``"digits"``: scikit-learn's 1,797 8x8 handwritten digits, ``image`` float32 in [0, 1]
      (the raw 0..16 counts divided by 16), 10 classes. Offline.
    * ``"breast_cancer"``: scikit-learn's Wisconsin diagnostic set, 569 x 30 raw float32
      features, 2 classes. Offline.
    * any TFDS name (``"mnist"``, ``"fashion_mnist"``, ``"cifar10"``, ...): read through
      ``tfds.data_source`` from ``data_dir``; ``image`` stays uint8, non-numeric fields (ids)
      are dropped. TFDS split syntax (``"train[:10%]"``, ``"train+test"``) passes through.

    The offline sets have no published split: ``split=None`` or ``"all"`` gives everything,
    ``"train"``/``"test"`` a fixed stratified 80/20 split (seed 0). For TFDS sets ``split=None``
    means ``"train"``.

    Args:
      name: ``"digits"``, ``"breast_cancer"`` or a TFDS dataset name.
      split: the split to read (see above).
      data_dir: TFDS data directory (TFDS's default, ``~/tensorflow_datasets``, if None).
      download: download and prepare a TFDS dataset that is not in ``data_dir`` yet. Without
        it, or without network, a missing dataset raises at once.
      as_source: return an indexable source (``len``, ``source[i]``) instead of arrays: the
        ``tfds.data_source`` itself for TFDS sets (nothing read into memory), an
        :class:`ArraySource` for the offline ones.

    Returns:
      A dict of numpy arrays with a common leading axis, or an indexable source.

    Raises:
      DatasetUnavailableError: a TFDS dataset is not prepared in ``data_dir`` and
        ``download=False`` or the network is unreachable; the message names the offline
        alternatives.

    Example:
      >>> from dlopt.data import load
      >>> data = load("digits")
      >>> data["image"].shape, data["label"].shape
      ((1797, 8, 8, 1), (1797,))

    References:
      TFDS data sources: https://www.tensorflow.org/datasets/api_docs/python/tfds/data_source
    """
    if name in _OFFLINE_LOADERS:
        data = _offline_split(_OFFLINE_LOADERS[name](), split)
        return ArraySource(data) if as_source else data

    try:
        import tensorflow_datasets as tfds
    except ImportError as e:  # pragma: no cover - depends on the install
        raise ImportError(
            f"loading {name!r} needs tensorflow-datasets (pip install 'dlopt[data]'); the "
            f"offline datasets {OFFLINE_DATASETS} need only scikit-learn."
        ) from e

    split = "train" if split is None else split
    data_dir = None if data_dir is None else os.fspath(data_dir)
    with _scratch_tempdir():
        try:
            builder = tfds.builder(name, data_dir=data_dir)
        except tfds.core.registered.DatasetNotFoundError:
            raise ValueError(
                f"unknown dataset name={name!r}: neither a TFDS dataset nor one of the offline "
                f"datasets {OFFLINE_DATASETS}."
            ) from None
        if not builder.is_prepared():
            where = f"data_dir={builder.data_dir!r}"
            if not download:
                raise _unavailable(name, where, "download=False")
            if not _network_available():
                raise _unavailable(name, where, "there is no network to download it")
        source = tfds.data_source(name, split=split, data_dir=data_dir, download=download)
    return source if as_source else gather(source)
