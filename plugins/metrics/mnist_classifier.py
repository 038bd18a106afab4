"""``fid_mnist`` and ``is_mnist``: Fréchet distance and Inception Score of MNIST-like images, measured with a
LeNet-style classifier that the project trains itself (the "MNIST classifier" variant of FID/IS used to judge
MNIST GANs, where an ImageNet Inception network would be the wrong judge for 28x28 digits).

FID (Heusel et al. 2017, eq. 6): ``|mu_r - mu_f|^2 + tr(S_r + S_f - 2 (S_r S_f)^(1/2))`` between Gaussians fitted
to the classifier's penultimate features (128 ReLU units) of real and generated images, in float64.
IS (Salimans et al. 2016, §4): ``exp(E_x KL(p(y|x) || p(y)))`` of the classifier's softmax on generated images;
10 for perfectly confident, class-balanced images, 1 for useless ones.

The classifier (:class:`LeNet`: LeCun et al. 1998's two conv + pool stages, Caffe's 20/50 channels, a 128-unit
hidden layer) is trained once by a fixed recipe (:data:`RECIPE`, seed included) on the ``mnist`` dataset's
training split and cached as ``<root>/lenet.pt`` with a JSON sidecar ``<root>/lenet.pt.json`` (sha256 of the
weights, the recipe, its test accuracy). ``root`` is the metric's ``params.root``; left empty (the default) it
follows the run's dataset when that is ``mnist`` (its ``dataset.params.root``), else ``data/mnist``. A missing
file, a checksum mismatch or a changed recipe retrain it. The recipe lives in code, not in the spec, on purpose:
the classifier defines the metrics' units, so two runs are comparable only when they use the same one (as FID's
Inception weights are fixed).

Both metrics are streaming: ``update`` accumulates float64 feature sums (FID) or softmax rows (IS); numbers of
different classifiers (other recipe, other training device) are not comparable with each other.

Not here: Inception-network FID/IS, KID, precision/recall.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from framework import hookimpl
from framework.errors import DataError
from framework.protocols import DataInfo, Metric
from framework.runtime import Runtime

# The classifier's training recipe (version it when changing anything: the cache is retrained on mismatch).
RECIPE = {"version": 1, "arch": "lenet-20-50-128", "epochs": 3, "batch_size": 64, "lr": 1e-3,
          "schedule": "cosine", "seed": 0}
MIN_ACCURACY = 0.99  # a weaker classifier would give unreliable FID/IS (the task's floor: >= 99 % on test)
FILENAME = "lenet.pt"
DEFAULT_ROOT = "data/mnist"


class LeNet(nn.Module):
    """(B, 1, 28, 28) in [-1, 1] -> features (B, 128) -> logits (B, 10)."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, 20, 5), nn.ReLU(), nn.MaxPool2d(2),  # (B, 20, 12, 12)
            nn.Conv2d(20, 50, 5), nn.ReLU(), nn.MaxPool2d(2),  # (B, 50, 4, 4)
            nn.Flatten(), nn.Linear(800, 128), nn.ReLU())  # (B, 128): the FID features
        self.head = nn.Linear(128, 10)

    def features(self, x: Tensor) -> Tensor:  # (B, 1, 28, 28) -> (B, 128)
        return self.body(x)

    def forward(self, x: Tensor) -> Tensor:  # (B, 1, 28, 28) -> (B, 10)
        return self.head(self.body(x))


# ------------------------------------------------------------------------------------ the classifier

def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@torch.no_grad()
def accuracy(model: LeNet, images: Tensor, labels: Tensor, batch_size: int = 1000) -> float:
    """Fraction of ``images`` (N, 1, 28, 28) classified as ``labels`` (N,)."""
    model.eval()
    device = next(model.parameters()).device
    correct = sum(int((model(images[i:i + batch_size].to(device)).argmax(1).cpu() == labels[i:i + batch_size]).sum())
                  for i in range(0, len(images), batch_size))
    return correct / len(images)


def train_classifier(images: Tensor, labels: Tensor, device: torch.device, recipe: dict = RECIPE) -> LeNet:
    """LeNet trained on ``images`` (N, 1, 28, 28) / ``labels`` (N,) by ``recipe`` (Adam, cosine decay to 0).

    Seeded through a forked RNG, so the global random streams of the caller are untouched.
    """
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(recipe["seed"])
        model = LeNet().to(device)
        opt = torch.optim.Adam(model.parameters(), lr=recipe["lr"])
        steps_per_epoch = math.ceil(len(images) / recipe["batch_size"])
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=recipe["epochs"] * steps_per_epoch)
        model.train()
        for _ in range(recipe["epochs"]):
            order = torch.randperm(len(images))
            for i in range(0, len(images), recipe["batch_size"]):
                idx = order[i:i + recipe["batch_size"]]
                loss = F.cross_entropy(model(images[idx].to(device)), labels[idx].to(device))
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
    return model.eval()


def _mnist_split(root: str, split: str) -> tuple[Tensor, Tensor]:
    from plugins.datasets.mnist import Mnist  # the classifier is trained on the project's own MNIST reader

    ds = Mnist(Mnist.Params(root=root), split=split)
    return ds.all_images(), ds.labels


def _cache_valid(weights: Path, sidecar: Path) -> bool:
    if not (weights.is_file() and sidecar.is_file()):
        return False
    try:
        meta = json.loads(sidecar.read_text())
    except (OSError, ValueError):
        return False
    return meta.get("recipe") == RECIPE and meta.get("sha256") == _sha256(weights)


_LOADED: dict[tuple[str, str], LeNet] = {}


def load_classifier(root: str, device: torch.device) -> LeNet:
    """The cached classifier of ``root`` (``<root>/lenet.pt``), trained first when missing or mismatched."""
    weights = Path(root) / FILENAME
    sidecar = weights.with_name(FILENAME + ".json")
    if not _cache_valid(weights, sidecar):
        images, labels = _mnist_split(root, "train")
        model = train_classifier(images, labels, device)
        acc = accuracy(model, *_mnist_split(root, "test"))
        if acc < MIN_ACCURACY:
            warnings.warn(f"{weights}: the MNIST classifier reached only {acc:.4f} test accuracy (< {MIN_ACCURACY}); "
                          f"fid_mnist / is_mnist will be less reliable", stacklevel=2)
        tmp = weights.with_name(f".{FILENAME}.tmp")
        torch.save({k: v.cpu() for k, v in model.state_dict().items()}, tmp)
        tmp.replace(weights)  # atomic: concurrent runs never read half a file
        meta = {"sha256": _sha256(weights), "recipe": RECIPE, "test_accuracy": acc, "torch": torch.__version__}
        sidecar.write_text(json.dumps(meta, indent=1) + "\n")
    key = (str(weights.resolve()), str(device))
    if key not in _LOADED:
        model = LeNet()
        try:
            model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
        except (RuntimeError, OSError) as exc:
            raise DataError(f"{weights}: cannot load the MNIST classifier ({exc}); delete it and its .json sidecar "
                            f"to retrain it") from exc
        _LOADED[key] = model.to(device).eval().requires_grad_(False)
    return _LOADED[key]


# ---------------------------------------------------------------------------------------------- math

def frechet_distance(mu1: np.ndarray, cov1: np.ndarray, mu2: np.ndarray, cov2: np.ndarray) -> float:
    """Fréchet distance of N(mu1, cov1) and N(mu2, cov2) in float64.

    tr((S1 S2)^(1/2)) = tr((S1^(1/2) S2 S1^(1/2))^(1/2)), the eigenvalues of a symmetric PSD matrix: stable for
    singular covariances (dead ReLU units), where scipy's sqrtm of the non-symmetric S1 S2 can turn complex.
    """
    mu1, mu2, cov1, cov2 = (np.asarray(a, dtype=np.float64) for a in (mu1, mu2, cov1, cov2))
    w, v = np.linalg.eigh((cov1 + cov1.T) / 2)
    root1 = (v * np.sqrt(np.clip(w, 0, None))) @ v.T  # S1^(1/2)
    inner = np.linalg.eigvalsh(root1 @ cov2 @ root1)
    tr_sqrt = np.sqrt(np.clip(inner, 0, None)).sum()
    return float(((mu1 - mu2) ** 2).sum() + np.trace(cov1) + np.trace(cov2) - 2 * tr_sqrt)


def inception_score(probs: np.ndarray, splits: int = 1) -> float:
    """exp(E_x KL(p(y|x) || p(y))) of softmax rows ``probs`` (N, classes), averaged over ``splits`` equal parts."""
    probs = np.asarray(probs, dtype=np.float64)
    scores = []
    for part in np.array_split(probs, splits):
        marginal = part.mean(0, keepdims=True)
        kl = (part * (np.log(np.clip(part, 1e-30, None)) - np.log(np.clip(marginal, 1e-30, None)))).sum(1)
        scores.append(math.exp(kl.mean()))
    return float(np.mean(scores))


class GaussianStats:
    """Streaming mean and covariance of feature rows (float64 sums of x and x x^T)."""

    def __init__(self, dim: int):
        self.n, self.s, self.ss = 0, torch.zeros(dim, dtype=torch.float64), torch.zeros(dim, dim, dtype=torch.float64)

    def add(self, f: Tensor) -> None:  # (B, dim)
        f = f.detach().double().cpu()
        self.n += f.shape[0]
        self.s += f.sum(0)
        self.ss += f.T @ f

    def mean_cov(self) -> tuple[np.ndarray, np.ndarray]:
        if self.n < 2:
            raise ValueError(f"fid_mnist: need at least 2 items per set, got {self.n}")
        mu = self.s / self.n
        cov = (self.ss - self.n * torch.outer(mu, mu)) / (self.n - 1)
        return mu.numpy(), cov.numpy()


# -------------------------------------------------------------------------------------------- metrics

def classifier_root(root: str, data_info: DataInfo | None) -> str:
    """The MNIST folder a metric reads: ``root`` when set, else the run's mnist dataset's (its ``data.root``
    tag), else :data:`DEFAULT_ROOT`."""
    tags = data_info.tags if data_info is not None else {}
    return root or (tags.get("data.root", DEFAULT_ROOT) if tags.get("data.source") == "mnist" else DEFAULT_ROOT)


def open_classifier(name: str, root: str, data_info: DataInfo | None, device: torch.device) -> LeNet:
    """:func:`load_classifier` for metric ``name``; a missing MNIST names the key that chooses the folder."""
    folder = classifier_root(root, data_info)
    try:
        return load_classifier(folder, device)
    except DataError as exc:
        how = "set by its params.root" if root else "empty params.root: the mnist dataset's root, else data/mnist"
        raise DataError(f"{exc}. Metric '{name}' reads MNIST from {folder} ({how}); set its params.root "
                        f"(metrics: [{{name: {name}, params: {{root: FOLDER}}}}]) to the folder that holds MNIST, or "
                        f"leave it empty to follow dataset.params.root") from exc


def _check_images(x: Tensor, name: str) -> None:
    if x.dim() != 4 or tuple(x.shape[1:]) != (1, 28, 28):
        raise DataError(f"{name}: expects (B, 1, 28, 28) images, got {tuple(x.shape)}; use an MNIST-shaped dataset")


class FidMnist(Metric):
    """Fréchet distance of real vs generated images in the MNIST classifier's 128-d feature space (0 is best)."""
    higher_is_better = {"fid_mnist": False}

    @dataclasses.dataclass(frozen=True)
    class Params:
        root: str = ""  # MNIST folder (the classifier is cached there); empty: the mnist dataset's root

    def __init__(self, params: "FidMnist.Params", *, representation=None, data_info: DataInfo | None = None,
                 runtime: Runtime | None = None):
        self.params = params
        self.device = runtime.device if runtime is not None else torch.device("cpu")
        self.net = open_classifier("fid_mnist", params.root, data_info, self.device)
        self.reset()

    def reset(self) -> None:
        self.real, self.fake = GaussianStats(128), GaussianStats(128)

    @torch.no_grad()
    def update(self, real: Tensor, fake: Tensor) -> None:  # (B, 1, 28, 28) each, in [-1, 1]
        _check_images(real, "fid_mnist"), _check_images(fake, "fid_mnist")
        self.real.add(self.net.features(real.float().to(self.device)))
        self.fake.add(self.net.features(fake.float().to(self.device)))

    def compute(self) -> dict[str, float]:
        return {"fid_mnist": frechet_distance(*self.real.mean_cov(), *self.fake.mean_cov())}


class IsMnist(Metric):
    """Inception Score of the generated images under the MNIST classifier (10 is best; real test images: ~9.9)."""
    higher_is_better = {"is_mnist": True}

    @dataclasses.dataclass(frozen=True)
    class Params:
        root: str = ""  # MNIST folder (the classifier is cached there); empty: the mnist dataset's root
        splits: int = 1  # IS averaged over this many equal parts of the generated set (Salimans et al. use 10)

    def __init__(self, params: "IsMnist.Params", *, representation=None, data_info: DataInfo | None = None,
                 runtime: Runtime | None = None):
        if params.splits < 1:
            raise ValueError(f"is_mnist: splits must be >= 1, got {params.splits}")
        self.params = params
        self.device = runtime.device if runtime is not None else torch.device("cpu")
        self.net = open_classifier("is_mnist", params.root, data_info, self.device)
        self.reset()

    def reset(self) -> None:
        self.probs: list[Tensor] = []

    @torch.no_grad()
    def update(self, real: Tensor, fake: Tensor) -> None:  # (B, 1, 28, 28) each; only the fakes are scored
        _check_images(fake, "is_mnist")
        self.probs.append(self.net(fake.float().to(self.device)).double().softmax(1).cpu())

    def compute(self) -> dict[str, float]:
        if not self.probs:
            raise ValueError("is_mnist: compute() before any update()")
        return {"is_mnist": inception_score(torch.cat(self.probs).numpy(), self.params.splits)}


@hookimpl
def register_metrics(register):
    register("fid_mnist", FidMnist)
    register("is_mnist", IsMnist)
