"""dlopt.data.load (offline sets, the TFDS path under tfds.testing.mock_data, the offline
error) and dlopt.data.batches."""

import glob
import os
import subprocess
import sys
import tempfile
import time

import chex
import numpy as np
import pytest
import tensorflow_datasets as tfds

import dlopt.data as data
from dlopt.data import datasets

OFFLINE = [
    # name, key, shape of one example, dtype, classes, n
    ("digits", "image", (8, 8, 1), np.float32, 10, 1797),
    ("breast_cancer", "features", (30,), np.float32, 2, 569),
]


@pytest.mark.parametrize("name,key,shape,dtype,classes,n", OFFLINE)
def test_offline_load(name, key, shape, dtype, classes, n):
    d = data.load(name)
    assert set(d) == {key, "label"}
    assert d[key].shape == (n, *shape) and d[key].dtype == dtype
    assert d["label"].dtype == np.int32
    np.testing.assert_array_equal(np.unique(d["label"]), np.arange(classes))
    assert np.isfinite(d[key]).all()
    if key == "image":
        assert d[key].min() == 0.0 and d[key].max() == 1.0


@pytest.mark.parametrize("name", ["digits", "breast_cancer"])
def test_offline_splits_partition_the_data(name):
    full, train, test = (data.load(name, s) for s in (None, "train", "test"))
    key = "image" if name == "digits" else "features"
    assert len(train["label"]) + len(test["label"]) == len(full["label"])
    assert abs(len(test["label"]) - 0.2 * len(full["label"])) <= 1
    rows = lambda d: {r.tobytes() for r in d[key].reshape(len(d[key]), -1)}  # noqa: E731
    assert not rows(train) & rows(test)
    assert rows(train) | rows(test) == rows(full)
    np.testing.assert_array_equal(data.load(name, "test")["label"], test["label"])  # fixed


def test_offline_bad_split_names_the_choices():
    with pytest.raises(ValueError, match="split='validation'.*train_val_test_split"):
        data.load("digits", "validation")


def test_offline_as_source_is_indexable():
    src = data.load("breast_cancer", as_source=True)
    full = data.load("breast_cancer")
    assert len(src) == 569
    np.testing.assert_array_equal(src[3]["features"], full["features"][3])
    np.testing.assert_array_equal(src[np.array([5, 1])]["label"], full["label"][[5, 1]])


def test_import_is_cheap():
    code = (
        "import sys, dlopt.data; "
        "print(any(m.split('.')[0] in ('tensorflow_datasets', 'sklearn', 'tensorflow') "
        "for m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.fixture
def prepared(monkeypatch):
    """mock_data serves the records; the builder reports itself prepared (as on disk)."""
    monkeypatch.setattr(tfds.core.DatasetBuilder, "is_prepared", lambda self: True)


TFDS_CASES = [("mnist", (28, 28, 1)), ("fashion_mnist", (28, 28, 1)), ("cifar10", (32, 32, 3))]


@pytest.mark.parametrize("name,shape", TFDS_CASES)
def test_tfds_load_through_data_source(prepared, name, shape):
    with tfds.testing.mock_data(num_examples=7):
        d = data.load(name, "train")
        src = data.load(name, "test", as_source=True)
    assert set(d) == {"image", "label"}  # cifar10's string "id" is dropped
    assert d["image"].shape == (7, *shape) and d["image"].dtype == np.uint8
    assert d["label"].shape == (7,) and d["label"].dtype == np.int32
    assert ((0 <= d["label"]) & (d["label"] < 10)).all()
    assert len(src) == 7 and src[0]["image"].shape == shape


def test_tfds_stack_uses_batched_reads_when_they_work():
    src = data.ArraySource({"image": np.arange(3000).reshape(3000, 1), "label": np.arange(3000)})
    d = data.gather(src)
    np.testing.assert_array_equal(d["label"], np.arange(3000))
    assert d["label"].dtype == np.int32 and d["image"].shape == (3000, 1)


def test_not_downloaded_fails_fast_and_names_offline_sets(tmp_path):
    start = time.monotonic()
    with pytest.raises(data.DatasetUnavailableError) as info:
        data.load("mnist", "train", data_dir=tmp_path)
    assert time.monotonic() - start < 30  # no download attempt, no hang
    message = str(info.value)
    assert "'mnist' is not downloaded" in message and str(tmp_path) in message
    assert "load('digits')" in message and "load('breast_cancer')" in message


def test_no_network_with_download_fails_fast(tmp_path, monkeypatch):
    monkeypatch.setattr(datasets, "_network_available", lambda: False)
    with pytest.raises(data.DatasetUnavailableError, match="no network.*digits"):
        data.load("cifar10", "train", data_dir=tmp_path, download=True)


def test_network_probe_never_hangs():
    start = time.monotonic()
    ok = datasets._network_available("host.invalid", timeout=0.5)
    assert ok is False and time.monotonic() - start < 5


def test_unknown_name():
    with pytest.raises(ValueError, match="name='no_such_set_xyz'.*offline"):
        data.load("no_such_set_xyz")


# --- batches

import jax  # noqa: E402
from jax.sharding import Mesh, NamedSharding, PartitionSpec  # noqa: E402

N = 10
DATA = {"image": np.arange(N * 4, dtype=np.float32).reshape(N, 2, 2, 1), "label": np.arange(N)}


def _labels(it):
    return [b["label"].tolist() for b in it]


@pytest.mark.parametrize(
    "kwargs,sizes",
    [
        ({}, [4, 4, 2]),
        ({"drop_remainder": True}, [4, 4]),
        ({"pad": True}, [4, 4, 4]),
        ({"pad": True, "drop_remainder": True}, [4, 4]),
    ],
)
def test_batches_sizes_and_coverage(kwargs, sizes):
    out = list(data.batches(DATA, 4, seed=3, **kwargs))
    assert [len(b["label"]) for b in out] == sizes
    assert len(out) == data.num_batches(N, 4, drop_remainder=kwargs.get("drop_remainder", False))
    for b in out:
        assert set(b) == {"image", "label"} | ({"mask"} if kwargs.get("pad") else set())
        assert all(isinstance(v, np.ndarray) for v in b.values())
        np.testing.assert_array_equal(b["image"][:, 0, 0, 0], 4 * b["label"])  # rows intact
    real = np.concatenate([b["label"][b["mask"]] if "mask" in b else b["label"] for b in out])
    assert len(set(real.tolist())) == len(real)  # no example twice among real rows
    if not kwargs.get("drop_remainder"):
        np.testing.assert_array_equal(np.sort(real), np.arange(N))  # every example once
    if kwargs.get("pad") and not kwargs.get("drop_remainder"):
        assert [int(b["mask"].sum()) for b in out] == [4, 4, 2]
        assert out[-1]["mask"].tolist() == [True, True, False, False]


def test_batches_deterministic_per_seed_and_epoch():
    same = _labels(data.batches(DATA, 3, seed=1, epoch=2))
    assert same == _labels(data.batches(DATA, 3, seed=1, epoch=2))
    assert same != _labels(data.batches(DATA, 3, seed=1, epoch=3))
    assert same != _labels(data.batches(DATA, 3, seed=2, epoch=2))
    assert _labels(data.batches(DATA, 5, shuffle=False)) == [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9]]


def test_batches_from_sources_equal_batches_from_arrays(prepared):
    def same(source, arrays, **kw):
        a, b = (
            list(data.batches(source, 3, seed=4, **kw)),
            list(data.batches(arrays, 3, seed=4, **kw)),
        )
        assert len(a) == len(b) > 0
        for x, y in zip(a, b, strict=True):
            chex.assert_trees_all_equal(x, y)

    same(data.load("digits", "test", as_source=True), data.load("digits", "test"), pad=True)
    with tfds.testing.mock_data(num_examples=8):
        src = data.load("cifar10", "train", as_source=True)
        same(src, data.gather(src))


def test_batches_validation():
    with pytest.raises(ValueError, match="batch_size=0"):
        data.batches(DATA, 0)
    with pytest.raises(ValueError, match="same length"):
        data.batches({"a": np.zeros(3), "b": np.zeros(4)}, 2)


def test_batches_sharded_over_mesh():
    mesh = Mesh(np.array(jax.devices()[:4]), ("data",))
    sharding = NamedSharding(mesh, PartitionSpec("data"))
    host = list(data.batches(DATA, 4, seed=5, pad=True))
    placed = list(data.batches(DATA, 4, seed=5, pad=True, sharding=sharding, prefetch=1))
    assert len(placed) == len(host) == 3
    for h, d in zip(host, placed, strict=True):
        assert set(d) == set(h)
        for k in h:
            assert isinstance(d[k], jax.Array) and d[k].sharding.is_equivalent_to(
                sharding, d[k].ndim
            )
            assert len(d[k].addressable_shards) == 4
            assert d[k].addressable_shards[0].data.shape[0] == 1
            np.testing.assert_array_equal(np.asarray(d[k]), h[k])
    # A short last batch of 2 cannot split over 4 devices: a clear error, before any work.
    with pytest.raises(ValueError, match="4 shards.*drop_remainder=True or pad=True"):
        data.batches(DATA, 4, sharding=sharding)
    with pytest.raises(ValueError, match="batch_size=6"):
        data.batches(DATA, 6, sharding=sharding, drop_remainder=True)


def _tfds_tmp_dirs():
    return set(glob.glob(os.path.join(tempfile.gettempdir(), "tmp*tfds")))


def test_tfds_probes_leave_no_tmp_folder(tmp_path, monkeypatch):
    before, tempdir = _tfds_tmp_dirs(), tempfile.tempdir
    with pytest.raises(data.DatasetUnavailableError):
        data.load("mnist", "train", data_dir=tmp_path)  # not prepared: the GCS metadata probe
    monkeypatch.setattr(tfds.core.DatasetBuilder, "is_prepared", lambda self: True)
    with tfds.testing.mock_data(num_examples=3):
        assert len(data.load("mnist", "train")["label"]) == 3
    assert _tfds_tmp_dirs() <= before  # other processes' folders may come and go
    assert tempfile.tempdir == tempdir
