"""`python -m framework bench` end to end on CPU with the small MP3net's smoke model: every preset variant is
timed and its losses are finite, generation is measured in real-time multiples, the JSON holds what the table
prints, and `--steps 0` times generation alone. Speeds themselves are benchmarks, not tests."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]


def bench(*args):
    return subprocess.run([sys.executable, "-m", "framework", "bench", "mp3net_small", "--smoke", "--device", "cpu",
                           "--warmup", "0", "--repeats", "1", "--gen-batch", "1", *args],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_bench_preset_times_every_variant_and_generation(tmp_path):
    out = bench("--steps", "1", "--out", str(tmp_path / "b.json"))
    assert out.returncode == 0, out.stderr
    res = json.loads((tmp_path / "b.json").read_text())
    assert res["smoke"] is True and list(res["variants"]) == ["naive", "fast_gp_conv", "lazy_gp4"]
    for name, r in res["variants"].items():
        assert r["finite"], name
        assert r["s_per_step"] > 0 and 0 < r["representation_share"]
        assert r["generation_x_realtime"] > 0 and r["generation_s_per_sample"] > 0
        assert r["params"] > 0 and r["batch"] == 2  # the smoke overlay's batch size
        assert name in out.stdout
    # the three variants differ only in how the step is computed, so they build the same model
    assert len({r["params"] for r in res["variants"].values()}) == 1


def test_bench_generation_only_and_bad_arguments(tmp_path):
    out = bench("--steps", "0", "--variant", "gen:", "--out", str(tmp_path / "g.json"))
    assert out.returncode == 0, out.stderr
    r = json.loads((tmp_path / "g.json").read_text())["variants"]["gen"]
    assert "s_per_step" not in r and r["generation_x_realtime"] > 0 and r["generation_batch"] == 1
    bad = bench("--steps", "-1")
    assert bad.returncode != 0 and "--steps" in bad.stderr and "Traceback" not in bad.stderr


def test_bench_times_a_class_conditional_model_with_labels(tmp_path):
    # dcgan with num_classes > 0 refuses a train_step without labels, so this fails unless bench passes them
    out = subprocess.run([sys.executable, "-m", "framework", "bench", "experiments/mnist_cdcgan.yaml", "--smoke",
                          "--device", "cpu", "--steps", "1", "--warmup", "0", "--repeats", "1",
                          "--variant", "cond:", "--variant", "uncond:model.params.num_classes=0",
                          "--out", str(tmp_path / "c.json")], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    res = json.loads((tmp_path / "c.json").read_text())["variants"]
    assert res["cond"]["finite"] and res["uncond"]["finite"]
    assert res["cond"]["params"] > res["uncond"]["params"]  # the class embedding and the one-hot inputs


@pytest.mark.gpu
def test_bench_gives_the_process_its_tf32_settings_back():
    """bench times plain fp32 (TF32 off); a training run after it in the same process (gpu-check) must not
    inherit that."""
    from framework.bench import run_bench
    from framework.plugin_manager import collect_registries

    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = True, True
    run_bench(str(ROOT / "experiments/mp3net_piano_small.yaml"), collect_registries(), variants=[], sets=[],
              batch=None, steps=1, warmup=0, repeats=1, device="cuda", out=None, gen_batch=1, smoke=True)
    assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
