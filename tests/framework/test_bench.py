"""`python -m framework bench` end to end on CPU with the small MP3net's smoke model: every variant of the spec's
``bench:`` list is timed and its losses are finite, generation is measured in real-time multiples, the JSON holds what the table
prints, and `--steps 0` times generation alone. Speeds themselves are benchmarks, not tests."""

import json
import subprocess
import sys
from pathlib import Path

import re

import pytest
import torch

from framework.errors import SpecError
from framework.plugin_manager import collect_registries
from framework.spec import load_spec

ROOT = Path(__file__).resolve().parents[2]


def bench(*args):
    return subprocess.run([sys.executable, "-m", "framework", "bench", "experiments/mp3net_piano_small.yaml", "--smoke", "--device", "cpu",
                           "--warmup", "0", "--repeats", "1", "--gen-batch", "1", *args],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_bench_times_the_specs_variants_and_generation(tmp_path):
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


@pytest.mark.parametrize("block, message", [
    ("bench: {naive: [train.precision=fp32]}", "bench: must be a list of {name, set} variants"),
    ("bench: [{name: a, set: [train.precision]}]", "bench.0.set: must be a list of key=value strings"),
    ("bench: [{name: a}, {name: a}]", "bench.1.name: variant 'a' appears twice"),
    ("bench: [{nme: a}]", "bench.0: must be {name: NAME, set: [key=value, ...]}"),
])
def test_a_bad_bench_block_is_a_spec_error_naming_the_key(tmp_path, block, message):
    spec = tmp_path / "s.yaml"
    spec.write_text(f"extends: {ROOT / 'experiments/toy_synthetic.yaml'}\n{block}\n")
    with pytest.raises(SpecError, match=re.escape(message)):
        load_spec(spec, collect_registries())


def test_the_bench_block_is_not_part_of_the_run(tmp_path):
    spec = tmp_path / "s.yaml"
    spec.write_text(f"extends: {ROOT / 'experiments/toy_synthetic.yaml'}\nbench: [{{name: a, set: [seed=3]}}]\n")
    loaded, plain = load_spec(spec, collect_registries()), load_spec(ROOT / "experiments/toy_synthetic.yaml",
                                                                     collect_registries())
    assert loaded.bench == {"a": ("seed=3",)} and "bench" not in loaded.resolved
    assert loaded.sha256 == plain.sha256  # the same run, the same hash: bench variants are instructions to bench


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

    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = True, True
    run_bench(str(ROOT / "experiments/mp3net_piano_small.yaml"), collect_registries(), variants=[], sets=[],
              batch=None, steps=1, warmup=0, repeats=1, device="cuda", out=None, gen_batch=1, smoke=True)
    assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
