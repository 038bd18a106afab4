"""The ``analyze`` command: registered through the plugin manager, runs on short generated files (a stereo
sine, a mono file, silence), writes its figures and report, and fails with clear DataErrors on a missing,
empty or corrupt file. Numbers are checked against closed forms and invariants (Johnston's PE on hand-made
values, the SNR against its MDCT-domain expectation, silence fully masked), not against earlier outputs."""

import argparse
import json
import math

import numpy as np
import pytest
import soundfile as sf
import torch

from framework import cli
from framework.errors import DataError
from framework.plugin_manager import collect_commands
from plugins.representations.analyze import FIGURES, analyze_signal, band_of_bins, perceptual_entropy, run


def write(path, data, rate=44100):
    sf.write(str(path), data, rate, subtype="PCM_16")
    return path


def sine(seconds=1.5, rate=44100, freq=1000.0, amp=0.5, channels=2):
    t = np.arange(int(seconds * rate)) / rate
    x = amp * np.sin(2 * np.pi * freq * t)
    return np.stack([x] * channels, 1) if channels > 1 else x


def args(path, out, **kw):
    return argparse.Namespace(audio_file=str(path), start=kw.get("start", 0.0), seconds=kw.get("seconds", 96.0),
                              out=None if out is None else str(out), seed=0)


def test_registered_with_its_arguments():
    commands = collect_commands()
    run_fn, add_arguments, help_, module = commands["analyze"]
    assert run_fn is run and module == "plugins.representations.analyze" and "psychoacoustic" in help_
    parsed = cli.build_parser(commands).parse_args(["analyze", "song.flac", "--start", "3"])
    assert (parsed.audio_file, parsed.start, parsed.seconds, parsed.out) == ("song.flac", 3.0, 96.0, None)


def test_sine_file_through_the_cli(tmp_path, capsys):
    path = write(tmp_path / "sine.wav", sine())
    out = tmp_path / "report"
    assert cli.main(["analyze", str(path), "--out", str(out)]) == 0
    assert "coefficients below the masking threshold" in capsys.readouterr().out
    for name in FIGURES + ("report.json", "report.md"):
        assert (out / name).stat().st_size > 0, name
    r = json.loads((out / "report.json").read_text())
    T = math.ceil(1.5 * 22016 / 128) * 128  # resampled to 22016 Hz, padded to a multiple of 128
    assert (r["channels"], r["source_channels"], r["samples"], r["blocks"]) == (2, 2, T, T // 128 + 1)
    assert r["source_sample_rate"] == 44100 and r["figures"] == list(FIGURES)
    bands = r["masked_fraction_per_band"]
    assert len(bands) == 24 and sum(b["bins"] for b in bands) == 128
    assert 0.5 < r["masked_fraction"] < 1  # one partial: most bins hold only leakage and dither
    assert r["mean_tonality"] > 0.5  # a pure tone is tonal (white noise gives ~0.09)
    pe_bits = r["perceptual_entropy_bits_per_coefficient"] * r["coefficients"]
    assert r["compression_ratio_vs_pcm16"] == pytest.approx(16 * 2 * T / pe_bits)
    assert r["perceptual_entropy_kbit_per_s"] == pytest.approx(pe_bits / (T / 22016) / 1000)
    # the time-domain SNR of the noisy audio agrees with its MDCT-domain expectation 36 sum X^2 / sum thr^2
    assert r["snr_db_psychoacoustic_noise"] == pytest.approx(r["snr_db_expected"], abs=0.5)


def test_mono_file_and_default_output_folder(tmp_path, monkeypatch):
    path = write(tmp_path / "mono.flac", sine(seconds=1.0, channels=1, freq=300.0))
    monkeypatch.chdir(tmp_path)
    assert run(args(path, None, seconds=0.5)) == 0
    r = json.loads((tmp_path / "outputs" / "analyze" / "mono" / "report.json").read_text())
    assert (r["source_channels"], r["channels"]) == (1, 2)
    assert r["samples"] == math.ceil(0.5 * 22016 / 128) * 128


def test_silence_is_fully_masked_and_costs_no_bits(tmp_path):
    path = write(tmp_path / "silence.wav", np.zeros((22016, 2)), rate=22016)
    assert run(args(path, tmp_path / "out")) == 0
    r = json.loads((tmp_path / "out" / "report.json").read_text())
    assert r["masked_fraction"] == 1.0 and r["perceptual_entropy_bits_per_coefficient"] == 0.0
    assert r["compression_ratio_vs_pcm16"] is None and r["snr_db_psychoacoustic_noise"] is None
    assert "n/a (silent: 0 bits)" in (tmp_path / "out" / "report.md").read_text()


def test_perceptual_entropy_closed_form():
    step = math.sqrt(12.0)  # threshold 1: uniform quantiser step sqrt(12), noise power 1 = threshold^2
    X = torch.tensor([0.0, 0.4, -1.0, 10.2]) * step
    bits = perceptual_entropy(X, torch.ones(4))
    assert torch.allclose(bits, torch.tensor([0.0, 0.0, math.log2(3), math.log2(21)]))


def test_softer_costs_fewer_bits_down_to_the_threshold_in_quiet():
    """Masking scales with the masker, the threshold in quiet does not: lowering the level moves coefficients
    under the fixed quiet threshold, and a 1 kHz tone of amplitude 1e-6 (coefficients ~4e-7, intensity ~2e-13,
    below the quiet threshold ~2e-12 of its band, spec §2.3) is masked entirely."""
    t = torch.arange(128 * 100) / 22016
    reports = [analyze_signal(torch.stack([a * torch.sin(2 * torch.pi * 1000 * t)] * 2))["report"]
               for a in (0.3, 1e-2, 1e-5, 1e-6)]
    pe = [r["perceptual_entropy_bits_per_coefficient"] for r in reports]
    assert pe[0] > pe[1] > pe[2] > pe[3] == 0.0
    assert reports[-1]["masked_fraction"] == 1.0


def test_bins_belong_to_one_band_each_in_order():
    bands = band_of_bins(22016, 128, 24)
    assert bands[0] == 0 and bands[-1] == 23 and np.all(np.diff(bands) >= 0)
    assert set(bands) == set(range(24))  # at 86 Hz per bin every Bark band (>= 90 Hz wide) holds a bin centre


def test_bad_files_are_data_errors(tmp_path, capsys):
    with pytest.raises(DataError, match="no such audio file"):
        run(args(tmp_path / "missing.wav", tmp_path / "o"))
    empty = write(tmp_path / "empty.wav", np.zeros((0, 2)))
    with pytest.raises(DataError, match="empty audio"):
        run(args(empty, tmp_path / "o"))
    corrupt = tmp_path / "corrupt.wav"
    corrupt.write_bytes(b"RIFF" + bytes(range(256)) * 4)
    with pytest.raises(DataError, match="cannot read audio"):
        run(args(corrupt, tmp_path / "o"))
    short = write(tmp_path / "short.wav", sine(seconds=0.2))
    with pytest.raises(DataError, match="empty audio"):
        run(args(short, tmp_path / "o", start=5.0))
    with pytest.raises(DataError, match="--seconds > 0"):
        run(args(short, tmp_path / "o", seconds=0))
    assert cli.main(["analyze", str(corrupt)]) == 2
    assert "error:" in capsys.readouterr().err
