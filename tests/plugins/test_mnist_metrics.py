"""``fid_mnist`` / ``is_mnist``: the Fréchet distance against closed forms and an independent scipy formula, the
Inception Score at its known extremes, streaming statistics against numpy, the classifier cache (retrained when
missing, corrupt or of another recipe), and, when ``data/mnist`` holds MNIST and the trained classifier, the
real-data facts: >= 99 % test accuracy, IS of real test images > 9.5, FID of a set against itself ~ 0 and far
below FID of real digits against noise; the metrics' folder follows the mnist dataset's root."""

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import scipy.linalg
import torch

from framework.errors import DataError
from framework.plugin_manager import collect_registries
from framework.protocols import DataInfo
from framework.runtime import Runtime
from plugins.metrics import mnist_classifier as MC

ROOT = Path(__file__).resolve().parents[2]
REAL = ROOT / "data" / "mnist"
METRICS = collect_registries()["metrics"]
INFO = DataInfo(kind="image", shape=(1, 28, 28))


def build(name, root, **params):
    cls = METRICS.get(name).cls
    return cls(cls.Params(root=str(root), **params), representation=None, data_info=INFO, runtime=Runtime())


def random_cov(rng, d):
    a = rng.normal(size=(d, d))
    return a @ a.T / d + 0.1 * np.eye(d)


# --------------------------------------------------------------------------------------------- math

def test_frechet_distance_of_diagonal_gaussians_has_a_closed_form():
    rng = np.random.default_rng(0)
    m1, m2, v1, v2 = rng.normal(size=5), rng.normal(size=5), rng.uniform(0.1, 2, 5), rng.uniform(0.1, 2, 5)
    want = ((m1 - m2) ** 2).sum() + ((np.sqrt(v1) - np.sqrt(v2)) ** 2).sum()
    assert MC.frechet_distance(m1, np.diag(v1), m2, np.diag(v2)) == pytest.approx(want, rel=1e-10)


def test_frechet_distance_matches_scipy_sqrtm_formula():
    rng = np.random.default_rng(1)
    m1, m2, c1, c2 = rng.normal(size=12), rng.normal(size=12), random_cov(rng, 12), random_cov(rng, 12)
    covmean = scipy.linalg.sqrtm(c1 @ c2).real  # the pytorch-fid / TTUR formula
    want = ((m1 - m2) ** 2).sum() + np.trace(c1 + c2 - 2 * covmean)
    got = MC.frechet_distance(m1, c1, m2, c2)
    assert got == pytest.approx(want, rel=1e-8)
    assert MC.frechet_distance(m2, c2, m1, c1) == pytest.approx(got, rel=1e-8)  # symmetric


def test_frechet_distance_of_a_singular_gaussian_with_itself_is_zero():
    rng = np.random.default_rng(2)
    a = rng.normal(size=(10, 4))
    cov = a @ a.T  # rank 4 of 10, as with dead ReLU units
    # sqrt of eigenvalues that are 0 up to rounding (1e-16) costs ~1e-8 each: exact zero is not attainable
    assert abs(MC.frechet_distance(np.ones(10), cov, np.ones(10), cov)) < 1e-6 * np.trace(cov)


def test_streaming_stats_equal_numpy():
    rng = np.random.default_rng(3)
    f = rng.normal(size=(300, 7)) * rng.uniform(0.5, 3, 7) + 2
    s = MC.GaussianStats(7)
    for chunk in np.array_split(f, 7):
        s.add(torch.from_numpy(chunk).float())
    mu, cov = s.mean_cov()
    f32 = f.astype(np.float32).astype(np.float64)
    assert np.allclose(mu, f32.mean(0), atol=1e-10) and np.allclose(cov, np.cov(f32, rowvar=False), atol=1e-9)


def test_inception_score_extremes():
    uniform = np.full((50, 10), 0.1)
    assert MC.inception_score(uniform) == pytest.approx(1.0)
    one_hot = np.eye(10)[np.arange(100) % 10]  # confident and class-balanced
    assert MC.inception_score(one_hot) == pytest.approx(10.0)
    assert MC.inception_score(one_hot, splits=10) == pytest.approx(10.0)
    assert MC.inception_score(np.eye(10)[np.zeros(100, int)]) == pytest.approx(1.0)  # mode collapse


# ----------------------------------------------------------------------- metric plumbing and caching

@pytest.fixture
def untrained(monkeypatch):
    """Metrics on a randomly initialised LeNet: the invariants hold for any feature map."""
    torch.manual_seed(0)
    net = MC.LeNet().eval().requires_grad_(False)
    monkeypatch.setattr(MC, "load_classifier", lambda root, device: net)
    return net


def images(n, seed):
    return torch.rand(n, 1, 28, 28, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def test_fid_of_a_set_against_itself_is_zero_and_against_another_positive(untrained):
    fid = build("fid_mnist", "unused")
    x = images(64, 0)
    for part in x.split(16):
        fid.update(part, part)
    assert abs(fid.compute()["fid_mnist"]) < 1e-6
    fid.reset()
    fid.update(x, -x)
    assert fid.compute()["fid_mnist"] > 1e-3


def test_is_metric_scores_fakes_only_and_checks_shapes(untrained):
    m = build("is_mnist", "unused")
    m.update(torch.zeros(4, 1, 28, 28) + float("nan"), images(8, 1))  # the reals are not used
    assert 1.0 <= m.compute()["is_mnist"] <= 10.0
    with pytest.raises(DataError, match=r"\(B, 1, 28, 28\)"):
        m.update(images(2, 0), torch.zeros(2, 3, 32, 32))


def test_classifier_cache_is_retrained_when_missing_corrupt_or_of_another_recipe(tmp_path, monkeypatch):
    trained = []

    def fake_train(images, labels, device, recipe=MC.RECIPE):
        trained.append(1)
        return MC.LeNet().eval()

    monkeypatch.setattr(MC, "train_classifier", fake_train)
    monkeypatch.setattr(MC, "_mnist_split", lambda root, split: (images(20, 0), torch.arange(20) % 10))
    monkeypatch.setattr(MC, "_LOADED", {})
    dev = torch.device("cpu")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the stand-in is far below 99 %: the warning is expected
        MC.load_classifier(str(tmp_path), dev)
        assert len(trained) == 1 and (tmp_path / "lenet.pt").is_file()
        meta = json.loads((tmp_path / "lenet.pt.json").read_text())
        assert meta["recipe"] == MC.RECIPE and len(meta["sha256"]) == 64
        MC.load_classifier(str(tmp_path), dev)
        assert len(trained) == 1  # valid cache: no retraining
        (tmp_path / "lenet.pt").write_bytes((tmp_path / "lenet.pt").read_bytes()[:-1] + b"x")
        MC.load_classifier(str(tmp_path), dev)
        assert len(trained) == 2  # checksum mismatch
        monkeypatch.setattr(MC, "RECIPE", dict(MC.RECIPE, version=-1))
        MC.load_classifier(str(tmp_path), dev)
        assert len(trained) == 3  # another recipe


# ------------------------------------------------------------------------------------ real MNIST

def _real_classifier_ready() -> bool:
    return MC._cache_valid(REAL / MC.FILENAME, REAL / (MC.FILENAME + ".json"))


needs_classifier = pytest.mark.skipif(
    not _real_classifier_ready(),
    reason=f"no MNIST classifier cached in {REAL} (training it takes minutes: run "
           f"`python -m framework prepare experiments/mnist_dcgan.yaml`, then "
           f"`python -c \"import torch; from plugins.metrics.mnist_classifier import load_classifier; "
           f"load_classifier('data/mnist', torch.device('cpu'))\"`)")


@pytest.fixture(scope="module")
def real():
    from plugins.datasets.mnist import Mnist

    test, train = (Mnist(Mnist.Params(root=str(REAL)), split=s) for s in ("test", "train"))
    return {"test": test.all_images(), "test_labels": test.labels, "train": train.all_images()[:10000]}


@needs_classifier
def test_cached_classifier_reaches_99_percent(real):
    net = MC.load_classifier(str(REAL), torch.device("cpu"))
    assert MC.accuracy(net, real["test"], real["test_labels"]) >= 0.99


@needs_classifier
def test_is_of_real_test_images_is_near_ten(real):
    m = build("is_mnist", REAL)
    for x in real["test"].split(1000):
        m.update(x, x)
    assert m.compute()["is_mnist"] > 9.5  # published for real MNIST with a good classifier: 9.88


@needs_classifier
def test_fid_orders_real_against_real_far_below_real_against_noise(real):
    fid = build("fid_mnist", REAL)
    for x in real["test"].split(2500):
        fid.update(x, x)
    noise = torch.rand(10000, 1, 28, 28, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with torch.no_grad():
        stats = {}
        for name, x in (("test", real["test"]), ("train", real["train"]), ("noise", noise)):
            stats[name] = MC.GaussianStats(128)
            stats[name].add(torch.cat([fid.net.features(c) for c in x.split(2500)]))
    test, train, noise = (stats[k].mean_cov() for k in ("test", "train", "noise"))
    to_noise, floor = MC.frechet_distance(*test, *noise), MC.frechet_distance(*test, *train)
    assert abs(fid.compute()["fid_mnist"]) < 1e-6 * to_noise  # a set against itself
    assert floor < 0.01 * to_noise  # test vs train digits: what a perfect generator would reach


def test_metrics_follow_the_mnist_datasets_root_and_a_missing_mnist_names_the_key(tmp_path, monkeypatch):
    """dataset.params.root elsewhere: the metrics read (and cache their classifier in) that folder, not data/mnist."""
    from plugins.datasets import mnist

    fake = (torch.zeros(4, 28, 28, dtype=torch.uint8), torch.arange(4))
    monkeypatch.setattr(mnist, "load_split", lambda root, split: fake)
    info = mnist.Mnist(mnist.Mnist.Params(root=str(tmp_path / "elsewhere")), split="test").info
    roots = []
    monkeypatch.setattr(MC, "load_classifier", lambda root, device: roots.append(root) or MC.LeNet())
    for name in ("fid_mnist", "is_mnist"):
        cls = METRICS.get(name).cls
        cls(cls.Params(), data_info=info, runtime=Runtime())  # root left empty: the dataset's
        cls(cls.Params(root=str(tmp_path / "mine")), data_info=info, runtime=Runtime())  # set: its own
        cls(cls.Params(), data_info=INFO, runtime=Runtime())  # not an mnist dataset: the default folder
    assert roots == [str(tmp_path / "elsewhere"), str(tmp_path / "mine"), "data/mnist"] * 2
    monkeypatch.undo()
    cls = METRICS.get("fid_mnist").cls
    with pytest.raises(DataError, match=r"no MNIST data in .*mine.*Metric 'fid_mnist' reads MNIST from .*mine \(set "
                                        r"by its params.root\); set its params.root \(metrics: \[\{name: fid_mnist"):
        cls(cls.Params(root=str(tmp_path / "mine")), data_info=info, runtime=Runtime())
