"""benchmarks/mp3net_flops.py: the forward FLOP counts behind docs/benchmarks.md's 5 s projection."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_flops_of_the_95s_and_5s_models():
    out = subprocess.run([sys.executable, "benchmarks/mp3net_flops.py", "--json"], cwd=ROOT, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    paper, short = json.loads(out.stdout)
    assert (paper["batch"], short["batch"]) == (8, 64) and paper["vs_first"] == 1.0
    # every conv is counted: G of the paper's model at batch 8 is ~4.3 TFLOP (2 x MACs), D ~3.9
    assert 4.0 < paper["g_tflop"] < 4.5 and 3.7 < paper["d_tflop"] < 4.1
    assert 6.5 < short["vs_first"] < 7.5  # the 5 s model at batch 64: ~7x the 95 s model's work per iteration
