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


def test_a_resumed_run_continues_the_energy_its_checkpoint_holds():
    """8 steps, then a resume to 9: the run's train energy must include the first session's 8 steps (before,
    the resumed segment's one step replaced them)."""
    sets = ["tracking.system_metrics=false", "train.steps=8", "train.eval_every=0", "train.sample_every=0"]
    first = run(load_spec(SPEC, REGISTRIES, smoke=True, sets=sets), REGISTRIES, log=lambda m: None)
    held = checkpoint.load(first.run_dir / "checkpoint.pt")["energy"]
    train_j = sum(j for phase, _, j in held["joules"] if phase == "train")
    assert train_j > 0 and held["items"]
    longer = load_spec(SPEC, REGISTRIES, smoke=True, sets=sets[:-3] + ["train.steps=9", "train.eval_every=0",
                                                                       "train.sample_every=0"])
    resumed = run(longer, REGISTRIES, resume_run_id=first.run_id, log=lambda m: None)
    m = resumed.metrics
    assert m["energy/train_total_j"] > train_j
    assert m["perf/generated_items"] > first.metrics["perf/generated_items"]
