"""torchrun with 2 CPU processes (gloo): trains, rank 0 alone tracks and checkpoints, and the run resumes
in a single process from the positions both ranks consumed."""

import shutil
import subprocess
import sys
from pathlib import Path

import mlflow

from framework import checkpoint
from framework.runner import runs_dir

ROOT = Path(__file__).resolve().parents[2]
SPEC = ROOT / "experiments" / "toy_synthetic.yaml"
SETS = ["--smoke", "--device", "cpu", "--set", "tracking.system_metrics=false", "--set", "train.batch_size=4"]


def test_torchrun_two_processes_then_resume_with_one():
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent))
    runs_dir().mkdir(parents=True, exist_ok=True)
    before = set(runs_dir().glob("*"))
    out = subprocess.run([torchrun, "--standalone", "--nproc_per_node=2", "-m", "framework", "run", str(SPEC),
                          *SETS], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    (run_dir,) = set(runs_dir().glob("*")) - before  # one run, filed under rank 0's id
    state = checkpoint.load(run_dir / "checkpoint.pt")
    assert state["step"] == 6 and state["consumed"] == 6 * 4 * 2
    assert out.stdout.count("FINISHED after 6 steps") == 1  # rank 0 reports

    out = subprocess.run([sys.executable, "-m", "framework", "run", str(SPEC), *SETS, "--set", "train.steps=8",
                          "--resume", run_dir.name], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    state = checkpoint.load(run_dir / "checkpoint.pt")
    assert state["step"] == 8 and state["consumed"] == 6 * 4 * 2 + 2 * 4
    assert mlflow.MlflowClient().get_run(run_dir.name).info.status == "FINISHED"
