"""Test-wide settings: no MLflow telemetry, one throw-away tracking store, runs folder and checkpoint cache per
session."""

import os

os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"

import pytest  # noqa: E402
import torch  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="session", autouse=True)
def _isolated_store(tmp_path_factory):
    """MLflow store, runs folder and checkpoint cache in a temporary directory, shared by the session (the sqlite
    schema migration costs seconds, so one store serves every test)."""
    base = tmp_path_factory.mktemp("tracking")
    old = {k: os.environ.get(k) for k in ("MLFLOW_TRACKING_URI", "FRAMEWORK_RUNS_DIR", "FRAMEWORK_CACHE_DIR")}
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{base}/mlflow.db"
    os.environ["FRAMEWORK_RUNS_DIR"] = str(base / "runs")
    os.environ["FRAMEWORK_CACHE_DIR"] = str(base / "cache")
    yield base
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
