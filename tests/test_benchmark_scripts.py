"""Scripts under benchmarks/ that feed the docs run end to end on a tiny configuration (their numbers are
measurements for the docs, not test expectations)."""

import subprocess
import sys
from pathlib import Path

import pytest

from framework.plugin_manager import collect_registries
from framework.runner import run
from framework.spec import load_spec

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def smoke_checkpoint() -> Path:
    """checkpoint.pt of the paper spec's smoke run (MP3net, tiny widths, two steps)."""
    registries = collect_registries()
    spec = load_spec(ROOT / "experiments" / "mp3net_piano.yaml", registries, smoke=True,
                     sets=["tracking.system_metrics=false"])
    return run(spec, registries, log=lambda m: None).run_dir / "checkpoint.pt"


def script(*args: str) -> subprocess.CompletedProcess:
    out = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    return out


def test_mdct_level_profile_on_a_smoke_checkpoint(smoke_checkpoint, tmp_path):
    out = script("benchmarks/mdct_level_profile.py", str(smoke_checkpoint), "--labels", "smoke", "--n", "2",
                 "--out", str(tmp_path / "p.png"))
    rows = {line.split()[0]: [float(x) for x in line.split()[1:]] for line in out.stdout.splitlines()[1:5]}
    assert list(rows) == ["real", "real+noise", "untrained", "smoke"]  # low, high, difference (dB), shared (%)
    assert [len(v) for v in rows.values()] == [4, 3, 4, 4]  # the critic's view of real clips has no shared column
    assert all(x == x for v in rows.values() for x in v)  # numbers, not NaN
    assert all(-100 <= v[3] <= 100 for name, v in rows.items() if name != "real+noise")  # a share of the energy
    assert (tmp_path / "p.png").stat().st_size > 1000


def test_shared_pattern_on_a_smoke_checkpoint_and_untrained_stages(smoke_checkpoint):
    out = script("benchmarks/mp3net_shared_pattern.py", str(smoke_checkpoint), "--n", "4",
                 "--stages", "blocks=128,bins=16,latent_dim=8,base_channels=2,max_channels=8,windows=2,g_norm=batch")
    lines = out.stdout.splitlines()
    stages = dict(item.rsplit(" ", 1) for item in lines[0].split(": ", 1)[1].split(", "))
    assert list(stages) == ["dense", "block 1", "block 2", "block 3", "output"]  # depth 3 (16 bins)
    values = {line[:42].strip(): float(line[42:]) for line in lines[2:]}
    assert len(values) == 6 and all(v == v for v in values.values())
    # shares of an energy: at most 100 %, and at least -100 / (n - 1) % for the mean inner product of n items
    assert all(-34 < float(v) <= 100 for v in [*stages.values(), values["shared %"]])
    assert 0 <= values["common: constant in time %"] <= values["common: periods dividing 16 blocks %"] <= 100


def test_mdct_images_on_a_smoke_checkpoint(smoke_checkpoint, tmp_path):
    script("benchmarks/mdct_images.py", str(smoke_checkpoint), "--labels", "smoke", "--items", "2",
           "--out", str(tmp_path / "i.png"))
    assert (tmp_path / "i.png").stat().st_size > 1000


def test_regression_fit_lowers_the_error_of_a_smoke_generator(smoke_checkpoint, tmp_path):
    out = script("benchmarks/mp3net_regression_fit.py", str(smoke_checkpoint), "--items", "2", "--steps", "20",
                 "--lr", "1e-3", "--out", str(tmp_path / "fit.pt"))
    rel = [float(line.split()[4]) for line in out.stdout.splitlines() if line.startswith("step")]
    assert len(rel) == 5 + 1 and rel[-1] < rel[0]  # Adam on a plain MSE must make progress in 20 steps
    import torch
    saved = torch.load(tmp_path / "fit.pt")
    assert saved["fit"].shape == saved["target"].shape and saved["fit"].dim() == 4


def test_transcriber_yardstick_on_the_smoke_recipe(smoke_checkpoint, tmp_path):
    import json

    out = script("benchmarks/transcriber_yardstick.py", "--checkpoint", str(smoke_checkpoint), "--root",
                 "data/transcriber_smoke", "--recipe", "smoke", "--clips", "4", "--samples", "8160", "--repeats", "2",
                 "--out", str(tmp_path))
    data = json.loads((tmp_path / "yardstick.json").read_text())
    assert list(data["runs"]) == ["real", "noise 20 dB", "noise 10 dB", "low-pass 2 kHz", "pitch +1", "trained G",
                                  "untrained G", "piano-shaped noise", "silence", "noise, unsmoothed piano spectrum",
                                  "real, from its MIDI"]
    assert all(len(r) == 2 for r in data["runs"].values())  # one result per repeat
    scored = [r for name, rs in data["runs"].items() if name != "real, from its MIDI" for r in rs]
    assert all(0 <= r["frechet_transcriber"] < float("inf") and 0 <= r["notes_pitch_class_distance"] <= 1
               for r in scored)
    assert all(r["notes_per_s_fake"] > 0 for r in data["runs"]["real, from its MIDI"])  # the MIDI has notes
    assert "| silence |" in out.stdout and (tmp_path / "yardstick.png").stat().st_size > 1000


def test_piano_shaped_noise_keeps_the_envelope_and_drops_the_pitches():
    """A 440 Hz tone with a little noise: unsmoothed, its noise twin is the tone again (a peak at 440 Hz); averaged
    over a third of an octave, the peak is spread over 440 x 2^(+-1/6) = 392-494 Hz and the level is kept."""
    import importlib.util

    import numpy as np

    spec = importlib.util.spec_from_file_location("yardstick", ROOT / "benchmarks" / "transcriber_yardstick.py")
    ys = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ys)
    rng = np.random.default_rng(0)
    rate, n = ys.tr.SAMPLE_RATE, 22016
    t = np.arange(n) / rate
    x = (np.sin(2 * np.pi * 440 * t) + 1e-3 * rng.standard_normal((2, 2, n))).astype(np.float32)  # (clips, ch, T)
    freqs = np.fft.rfftfreq(n, 1 / rate)

    def peak_share(y):  # share of the power within 1 Hz of 440 Hz
        p = (np.abs(np.fft.rfft(y, axis=-1)) ** 2).mean((0, 1))
        return p[np.abs(freqs - 440) <= 1].sum() / p.sum()

    fine, smooth = ys.shaped_noise(x, rng, None), ys.shaped_noise(x, rng)
    assert peak_share(fine) > 0.9 and peak_share(smooth) < 0.1
    band = (np.abs(np.fft.rfft(smooth, axis=-1)) ** 2).mean((0, 1))
    assert band[(freqs > 385) & (freqs < 500)].sum() / band.sum() > 0.95  # still where the tone was
    assert np.isclose((smooth ** 2).mean(), (x ** 2).mean(), rtol=1e-3)


def test_ladder_criteria_and_pitches_on_rung_1(tmp_path):
    out = script("benchmarks/ladder_criteria.py", "experiments/ladder/01_sine_bin.yaml", "--repeats", "1", "--n", "8",
                 "--out", str(tmp_path))
    rows = {line.split("|")[1].strip(): line for line in out.stdout.splitlines() if line.startswith("| ")}
    assert {"real", "loudness+tilt", "untrained G", "collapsed"} <= set(rows)
    assert (tmp_path / "criteria.json").is_file()
    registries = collect_registries()
    spec = load_spec(ROOT / "experiments" / "ladder" / "01_sine_bin.yaml", registries, smoke=True,
                     sets=["tracking.system_metrics=false"])
    run_id = run(spec, registries, log=lambda m: None).run_id
    lines = script("benchmarks/ladder_pitches.py", run_id, "--n", "16").stdout.splitlines()
    assert lines[0] == "key real generated" and lines[-1].startswith("total variation")
    assert sum(int(line.split()[1]) for line in lines[1:-1]) == 16  # every real clip has one key
