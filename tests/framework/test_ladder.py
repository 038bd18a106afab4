"""``python -m framework ladder``: rungs in order, each a normal run with train.until; the table, the JSON, the
per-rung figure and wav files; a rung without a criterion or an unknown rung name is a clear error."""

import json
import shutil
from pathlib import Path

import pytest

from framework.cli import main
from framework.errors import FrameworkError
from framework.ladder import find_rungs, run_ladder
from framework.plugin_manager import collect_registries

ROOT = Path(__file__).resolve().parents[2]
LADDER = ROOT / "experiments" / "ladder"


def test_rungs_are_picked_by_stem_number_or_name():
    assert [p.stem for p in find_rungs(LADDER, ["1", "sine_semitone"])] == ["01_sine_bin", "02_sine_semitone"]
    assert [p.stem for p in find_rungs(LADDER, [])][:2] == ["01_sine_bin", "02_sine_semitone"]
    with pytest.raises(FrameworkError, match="no rung 'sine9' in .*rungs: 01_sine_bin"):
        find_rungs(LADDER, ["sine9"])


def test_smoke_ladder_writes_table_json_figure_and_wavs(tmp_path):
    rows = run_ladder(collect_registries(), folder=LADDER, rungs=["01"], seeds=[3],
                      sets=["tracking.system_metrics=false", "train.eval_at_start=true"], smoke=True,
                      tracking_uri=None, device="cpu", out=tmp_path, keep_going=True)
    assert [(r.rung, r.seed, r.status) for r in rows] == [("01_sine_bin", 3, "FINISHED")]
    for r in rows:  # 4 smoke steps cannot make a tone: the criterion must not hold
        assert not r.passed and r.steps == 4 and r.examples == 4 * 16 and r.energy_j > 0
        assert set(r.values) == set(r.before) == {"eval/peak_conc_fake", "eval/pitch_tv"}
        folder = Path(r.folder)
        assert (folder / "coefficients.png").stat().st_size > 1000 and list(folder.glob("*.wav"))
    saved = json.loads((tmp_path / "ladder.json").read_text())
    assert [s["run_id"] for s in saved] == [r.run_id for r in rows]
    md = (tmp_path / "ladder.md").read_text()
    assert md.count("| 01_sine_bin | 3 |") == 1 and "eval/peak_conc_fake >= 0.71" in md and "| no |" in md


def test_a_spec_without_until_is_not_a_rung(tmp_path, capsys):
    shutil.copy(ROOT / "experiments" / "toy_synthetic.yaml", tmp_path / "01_toy.yaml")
    assert main(["ladder", "--dir", str(tmp_path), "--smoke", "--out", str(tmp_path / "out")]) == 2
    assert "needs a train.until criterion" in capsys.readouterr().err


def test_bad_seeds_are_one_line_errors(capsys):
    assert main(["ladder", "01", "--seeds", "0,x"]) == 2
    assert "--seeds '0,x': give comma-separated integers" in capsys.readouterr().err
