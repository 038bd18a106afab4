"""The CLI as a user meets it: validate errors exit non-zero with the file, key, valid keys and a close
match; plugins lists every kind. (``ui`` is tested in test_ui.py.)"""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SPEC = ROOT / "experiments" / "toy_synthetic.yaml"


def cli(*args, **kw):
    return subprocess.run([sys.executable, "-m", "framework", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=120, **kw)


def test_validate_ok():
    out = cli("validate", str(SPEC), "--smoke")
    assert out.returncode == 0 and "valid" in out.stdout


def test_validate_typo_exits_nonzero_naming_file_key_valid_keys_and_match(tmp_path):
    spec = tmp_path / "typo.yaml"
    spec.write_text(SPEC.read_text().replace("latent_dim: 32", "lattent_dim: 32"))
    out = cli("validate", str(spec))
    assert out.returncode == 2
    err = out.stderr.strip()
    assert err.startswith("error: ") and str(spec) in err and "model.params.lattent_dim" in err
    assert "valid: latent_dim" in err and "did you mean 'latent_dim'" in err
    assert "Traceback" not in out.stderr


def test_validate_unknown_plugin_and_malformed_yaml(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(SPEC.read_text().replace("name: toy_gan", "name: toy_gun"))
    out = cli("validate", str(bad))
    assert out.returncode == 2 and "unknown model 'toy_gun'" in out.stderr and "did you mean 'toy_gan'" in out.stderr
    bad.write_text("experiment: x\ntrain: [1, 2\n")
    out = cli("validate", str(bad))
    assert out.returncode == 2 and f"{bad}:3:" in out.stderr and "malformed YAML" in out.stderr


def test_missing_spec_and_bad_resume_are_clear_errors(tmp_path):
    out = cli("validate", str(tmp_path / "nope.yaml"))
    assert out.returncode == 2 and "spec file not found" in out.stderr
    out = cli("run", str(SPEC), "--smoke", "--resume", "0123456789abcdef")
    assert out.returncode == 2 and "no checkpoint" in out.stderr
    out = cli("run")
    assert out.returncode == 2 and "run: give a SPEC file" in out.stderr and "or --resume RUN_ID" in out.stderr


def test_plugins_lists_every_kind():
    out = cli("plugins")
    assert out.returncode == 0
    for kind in ("datasets:", "representations:", "models:", "losses:", "metrics:"):
        assert kind in out.stdout
    assert "toy_gan" in out.stdout and "plugins.losses.gan" in out.stdout
