"""Scripts under benchmarks/ that feed the docs run end to end on a tiny configuration (their numbers are
measurements for the docs, not test expectations)."""

import subprocess
import sys
from pathlib import Path

from framework.plugin_manager import collect_registries
from framework.runner import run
from framework.spec import load_spec

ROOT = Path(__file__).resolve().parents[1]


def test_mdct_level_profile_on_a_smoke_checkpoint(tmp_path):
    registries = collect_registries()
    spec = load_spec(ROOT / "experiments" / "mp3net_piano.yaml", registries, smoke=True,
                     sets=["tracking.system_metrics=false"])
    result = run(spec, registries, log=lambda m: None)
    ckpt = result.run_dir / "checkpoint.pt"
    out = subprocess.run([sys.executable, "benchmarks/mdct_level_profile.py", str(ckpt), "--labels", "smoke",
                          "--n", "2", "--out", str(tmp_path / "p.png")], cwd=ROOT, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr
    rows = {line.split()[0]: line.split()[1:] for line in out.stdout.splitlines()[1:5]}  # label, 3 numbers
    assert list(rows) == ["real", "real+noise", "untrained", "smoke"]
    assert all(len(v) == 3 and all(float(x) == float(x) for x in v) for v in rows.values())  # numbers, not NaN
    assert (tmp_path / "p.png").stat().st_size > 1000
