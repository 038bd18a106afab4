"""``python -m framework gpu-check``: the whole command on the CPU with ``--smoke`` (what CI runs, so the command
never rots before a GPU is there), its refusal without CUDA, the time budget, failures recorded stage by stage,
and SIGTERM keeping the summary written so far."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from plugins.commands.gpu_check import SMALL_SPEC, SPEC_5S, STAGES, Check, _train, run_gpu_check, stage_data, train_spec
from framework.plugin_manager import collect_registries

ROOT = Path(__file__).resolve().parents[2]
NAMES = [stage[0] for stage in STAGES]


def gpu_check(tmp_path, *args, **kw):
    cmd = [sys.executable, "-m", "framework", "gpu-check", "--out", str(tmp_path / "out"), "--work",
           str(tmp_path / "work"), "--tracking-uri", os.environ["MLFLOW_TRACKING_URI"], *args]
    return subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def summary(tmp_path):
    return json.loads((tmp_path / "out" / "gpu_check.json").read_text())


def test_smoke_runs_every_stage_on_the_cpu_and_writes_json_and_markdown(tmp_path):
    proc = gpu_check(tmp_path, "--smoke")
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, out[-3000:] + err[-3000:]
    s = summary(tmp_path)
    assert s["smoke"] and list(s["stages"]) == NAMES
    st = s["stages"]
    assert all(v["status"] == "ok" for v in st.values()), {k: v.get("error") for k, v in st.items()}
    assert st["env"]["torch"] == torch.__version__ and st["env"]["device"] == "cpu"
    assert st["tests"]["tests"] >= 3 and st["tests"]["failures"] == st["tests"]["errors"] == 0
    assert list(st["bench_95s"]["variants"]) == ["naive", "optimised", "optimised_lazy_gp4"]
    for v in [*st["bench_95s"]["variants"].values(), *st["bench_5s"]["variants"].values()]:
        assert v["finite"] and v["s_per_step"] > 0 and v["generation_x_realtime"] > 0
    for name, steps in (("train_small", 2), ("train_5s", 3)):  # the specs' smoke overlays
        assert st[name]["run_status"] == "FINISHED" and st[name]["steps"] == steps and st[name]["run_id"]
        assert st[name]["energy_source"].startswith("not measured")  # no NVML on a CPU: no number is made up
    rows = st["projection"]["table"]["rows"]
    assert [r[:3] for r in rows] == [["95s", "optimised", 750_000], ["95s", "optimised_lazy_gp4", 750_000],
                                     ["5s", "optimised", 160_000]]
    assert rows[0][4] == round(st["bench_95s"]["variants"]["optimised"]["s_per_step"] * 750_000 / 3600, 1)
    md = (tmp_path / "out" / "gpu_check.md").read_text()
    assert all(f"## {name}: ok" in md for name in NAMES) and "| naive |" in md and "not measured" in md
    assert {p.name for p in (tmp_path / "out").iterdir()} == {"gpu_check.json", "gpu_check.md", "gpu_tests.log",
                                                               "bench_95s.json", "bench_5s.json"}


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_without_cuda_it_says_so_and_exits_non_zero(tmp_path):
    proc = gpu_check(tmp_path)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 2 and "no CUDA device" in err and "--smoke" in err and "Traceback" not in err


def test_a_budget_skips_the_stages_that_do_not_fit_and_keeps_the_files(tmp_path):
    rc = run_gpu_check(collect_registries(), out=tmp_path / "out", work=tmp_path / "work", minutes=1e-4,
                       smoke=True)
    st = summary(tmp_path)["stages"]
    assert rc == 0 and list(st) == NAMES
    assert st["env"]["status"] == st["projection"]["status"] == "ok"  # they need no time
    assert all(v["status"] == "skipped" and " s left" in v["reason"] for k, v in st.items()
               if k not in ("env", "projection"))
    assert "## tests: skipped" in (tmp_path / "out" / "gpu_check.md").read_text()


def test_failed_stages_are_recorded_and_the_rest_still_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no tests/ and no experiments/ here: those stages fail, loudly and by name
    rc = run_gpu_check(collect_registries(), out=tmp_path / "out", work=tmp_path / "work", minutes=5, smoke=True)
    st = summary(tmp_path)["stages"]
    assert rc == 1 and list(st) == NAMES and st["env"]["status"] == "ok"
    assert st["tests"]["status"] == "failed" and "no GPU tests found" in st["tests"]["error"]
    assert st["bench_95s"]["status"] == "failed" and "spec file not found" in st["bench_95s"]["error"]
    assert st["train_small"]["status"] == "failed" and "--data synthetic" in st["train_small"]["error"]
    assert st["projection"]["status"] == "ok" and st["projection"]["table"]["rows"] == []


def test_sigterm_stops_the_stage_in_progress_and_keeps_what_was_written(tmp_path):
    proc = gpu_check(tmp_path, "--smoke")
    path, deadline = tmp_path / "out" / "gpu_check.json", time.time() + 120
    while not (path.is_file() and "env" in summary(tmp_path)["stages"]):  # env done: the tests stage is running
        assert proc.poll() is None and time.time() < deadline, proc.communicate()
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    st = summary(tmp_path)["stages"]
    assert proc.returncode == 1, err[-3000:]
    assert st["env"]["status"] == "ok" and st["tests"]["status"] == "interrupted" and list(st) == ["env", "tests"]
    assert "## tests: interrupted" in (tmp_path / "out" / "gpu_check.md").read_text()


@pytest.mark.parametrize("data", ["piano", "synthetic"])
def test_the_gpu_runs_specs_are_valid_for_both_data_choices(tmp_path, data):
    # the non-smoke training stages only run on a GPU: their specs are checked here, where they are built
    check = Check(collect_registries(), out=tmp_path, work=tmp_path / "work", minutes=8, smoke=False, data=data,
                  device=torch.device("cpu"), tracking_uri=None)
    for path, window in ((SMALL_SPEC, 65472), (SPEC_5S, 130944)):
        spec = train_spec(check, path, 123, [])
        assert spec.train.steps == 123 and spec.train.eval_every == 0 and not spec.tracking.log_checkpoint
        p = spec.dataset.params
        if data == "piano":
            assert p.root == f"{(tmp_path / 'work').resolve()}/data/piano" and p.window_samples == window
        else:
            assert spec.dataset.name == "synthetic_audio" and p.samples == window and p.size == 256


def test_a_gpu_training_stage_runs_through_the_runner_on_cpu_with_synthetic_data(tmp_path):
    # what train_small runs on a GPU (the spec's real model, not its smoke overlay), cut to 2 steps
    check = Check(collect_registries(), out=tmp_path, work=tmp_path / "work", minutes=8, smoke=False,
                  data="synthetic", device=torch.device("cpu"), tracking_uri=os.environ["MLFLOW_TRACKING_URI"])
    check.summary["stages"]["data"] = {"status": "ok", **stage_data(check)}
    r = _train(check, SMALL_SPEC, 2, ["train.eval_samples=2", "train.samples=1"])
    assert r["run_status"] == "FINISHED" and r["steps"] == 2 and r["batch"] == 4 and r["steps_per_s"] > 0
    assert r["j_per_step"] is None and r["energy_source"].startswith("not measured")
    assert {"train/d/gp", "train/g/adv"} <= set(r["final"])
