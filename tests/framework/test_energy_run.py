"""Energy end to end on CPU: a smoke run logs estimated energy per phase, labelled tags, J per second of audio,
and its energy record; `generate` prints generation energy per second of audio."""

import os

import mlflow
import pytest

from framework import checkpoint, energy
from framework.generate import generate
from framework.runner import run
from framework.spec import load_spec
from tests.framework.test_runner import SPEC
from tests.framework.test_sweep_report import REGISTRIES


@pytest.fixture(scope="module")
def smoke_run():
    spec = load_spec(SPEC, REGISTRIES, smoke=True, sets=["tracking.system_metrics=false"])
    lines = []
    return run(spec, REGISTRIES, log=lines.append), lines


def test_a_cpu_run_logs_estimated_energy_per_phase(smoke_run):
    result, lines = smoke_run
    r = mlflow.MlflowClient(os.environ["MLFLOW_TRACKING_URI"]).get_run(result.run_id)
    m, tags = r.data.metrics, r.data.tags
    assert m["energy/train_cpu_estimated_j"] > 0 and m["energy/eval_ram_estimated_j"] > 0
    assert "energy/train_cpu_j" not in m  # no RAPL here: nothing may pass for a measurement
    parts = [k for k in m if k.endswith("_kwh") and k != "energy/total_kwh"]
    assert sum(m[k] for k in parts) == pytest.approx(m["energy/total_kwh"])
    phases = sum(m[f"energy/{p}_total_j"] for p in ("train", "eval", "generation"))
    assert phases == pytest.approx(m["energy/total_kwh"] * energy.J_PER_KWH)
    info = checkpoint.load(result.run_dir / "checkpoint.pt")["data_info"]
    seconds = info["shape"][-1] / info["sample_rate"]
    assert m["energy/eval_j_per_audio_s"] * seconds == pytest.approx(m["energy/eval_j_per_item"])
    assert m["energy/eval_j_per_item"] == pytest.approx(m["energy/eval_total_j"] / 16)  # 2 evals of 8 items
    assert tags["energy.cpu_source"].startswith("estimated: CPU time of the process tree x ")
    assert tags["energy.ram_source"].startswith("estimated: resident memory")
    assert tags["energy.total_estimated_parts"] == "cpu, ram"
    assert any(line.startswith("  training: ") and line.endswith(", estimated") for line in lines)
    assert (result.run_dir / energy.SUMMARY_FILE).is_file()


def test_generate_prints_energy_per_second_of_audio(smoke_run, tmp_path, capsys):
    result, _ = smoke_run
    generate(run_id=None, checkpoint_path=str(result.run_dir / "checkpoint.pt"), n=2, seconds=None, truncation=None,
             out=tmp_path, device="cpu", batch=2, tracking_uri=None)
    out = capsys.readouterr().out
    assert "generation:" in out and "J per generated second of audio, estimated" in out
    assert "per sample (" in out
