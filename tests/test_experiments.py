"""In experiments/ means run in CI: every spec validates, and runs end to end through its smoke overlay."""

from pathlib import Path

import pytest

from framework.plugin_manager import collect_registries
from framework.runner import run
from framework.spec import load_spec

ROOT = Path(__file__).resolve().parents[1]
SPECS = sorted((ROOT / "experiments").rglob("*.yaml"))
REGISTRIES = collect_registries()


def test_there_are_specs():
    assert SPECS


@pytest.mark.parametrize("path", SPECS, ids=lambda p: str(p.relative_to(ROOT / "experiments")))
def test_spec_validates_and_smoke_runs(path):
    load_spec(path, REGISTRIES)  # the full spec is valid too
    spec = load_spec(path, REGISTRIES, smoke=True, sets=["tracking.system_metrics=false"])
    result = run(spec, REGISTRIES, log=lambda m: None)
    assert result.status == "FINISHED" and result.step == spec.train.steps
    if any(k.startswith("eval/") for k in result.metrics):  # what `report` reads is what the metrics log
        for m in spec.metrics:
            missing = [k for k in m.cls.higher_is_better if f"eval/{k}" not in result.metrics]
            assert not missing, f"metric '{m.name}' declares {missing} (higher_is_better) but did not log them"
