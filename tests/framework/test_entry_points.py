"""A separately installed package that declares an entry point in group ``framework`` shows up in
``python -m framework plugins`` and its model runs from a spec; so does the example package of docs/guide.md
("Writing a plugin module"), built from the guide's own text so the two cannot drift."""

import os
import re
import shlex
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

PLUGIN = '''
"""A third-party plugin module: a tiny model registered through the entry point."""
import dataclasses
import torch
from framework import hookimpl
from framework.protocols import Model


class HelloGan(Model):
    @dataclasses.dataclass(frozen=True)
    class Params:
        scale: float = 0.5

    def __init__(self, params, *, representation, loss, data_info, runtime):
        super().__init__()
        self.shape = representation.shape
        self.w = torch.nn.Parameter(torch.zeros(()))
        self.optimizers = {"w": torch.optim.SGD([self.w], lr=0.1)}

    def train_step(self, batch, step):
        loss = (self.w - batch.mean()) ** 2
        self.optimizers["w"].zero_grad()
        loss.backward()
        self.optimizers["w"].step()
        return {"hello/loss": loss.detach()}

    def sample(self, n, truncation=None):
        return self.w.detach().expand(n, *self.shape).clone().clamp(-1, 1)


@hookimpl
def register_models(register):
    register("hello_gan", HelloGan)
'''

SETUP_CFG = """
[metadata]
name = framework-hello
version = 0.3.0

[options]
py_modules = hello_plugin

[options.entry_points]
framework =
    hello = hello_plugin
"""

SPEC = """
experiment: hello
train: {steps: 3, batch_size: 2, samples: 1}
dataset: {name: synthetic_images, params: {size: 4}}
representation: {name: raw}
model: {name: hello_gan, params: {scale: 0.25}}
loss: {name: bce}
tracking: {system_metrics: false}
"""


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    base = tmp_path_factory.mktemp("hello")
    pkg = base / "pkg"
    pkg.mkdir()
    (pkg / "hello_plugin.py").write_text(PLUGIN)
    (pkg / "setup.cfg").write_text(SETUP_CFG)
    (pkg / "pyproject.toml").write_text('[build-system]\nrequires = ["setuptools>=61"]\n'
                                        'build-backend = "setuptools.build_meta"\n')
    target = base / "site"
    out = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                          "--no-index", "--target", str(target), str(pkg)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return target


def framework(site, *args, cwd=ROOT, env=None):
    env = dict(os.environ, **(env or {}), PYTHONPATH=os.pathsep.join([str(site), str(ROOT)]))
    return subprocess.run([sys.executable, "-m", "framework", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)


def test_entry_point_plugin_is_listed_with_its_distribution(site):
    out = framework(site, "plugins")
    assert out.returncode == 0, out.stderr
    line = next(l for l in out.stdout.splitlines() if "hello_gan" in l)
    assert "hello_plugin" in line and "framework-hello 0.3.0" in line


def test_entry_point_model_runs_from_a_spec(site, tmp_path):
    spec = tmp_path / "hello.yaml"
    spec.write_text(SPEC)
    out = framework(site, "run", str(spec))
    assert out.returncode == 0, out.stdout + out.stderr
    assert "FINISHED after 3 steps" in out.stdout


def test_blocking_the_entry_point_hides_it(site, tmp_path):
    env_block = dict(os.environ, FRAMEWORK_DISABLE_PLUGINS="hello")
    out = subprocess.run([sys.executable, "-m", "framework", "plugins"], cwd=ROOT, capture_output=True, text=True,
                         env=dict(env_block, PYTHONPATH=os.pathsep.join([str(site), str(ROOT)])))
    assert out.returncode == 0 and "hello_gan" not in out.stdout


# ---------------------------------------------------------------- the guide's plugin package, as written there

def guide_plugin_section() -> str:
    text = (ROOT / "docs" / "guide.md").read_text()
    return text.split("## Writing a plugin module", 1)[1].split("\n## ", 1)[0]


def guide_blocks(section: str) -> list[tuple[str, str]]:
    """(language, body) of each fenced block of the guide's section."""
    return re.findall(r"```(\w+)\n(.*?)```", section, flags=re.S)


@pytest.fixture(scope="module")
def guide_site(tmp_path_factory):
    """The guide's package built from its text: each block whose first line is `# <path>` is that file, plus
    the empty `my_pkg/__init__.py` the prose names; installed like `pip install .` (into a --target folder, so
    the test environment is left as it was)."""
    section = guide_plugin_section()
    assert "`my_pkg/__init__.py`" in section
    pkg = tmp_path_factory.mktemp("guide") / "my-pkg"
    (pkg / "my_pkg").mkdir(parents=True)
    (pkg / "my_pkg" / "__init__.py").write_text("")
    files = [body.split("\n", 1) for lang, body in guide_blocks(section) if lang in ("python", "toml")]
    assert {first for first, _ in files} == {"# my_pkg/my_loss.py", "# pyproject.toml"}
    for first, body in files:
        (pkg / first[2:]).write_text(body)
    target = pkg.parent / "site"
    out = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                          "--no-index", "--target", str(target), str(pkg)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return target


def test_guide_plugin_package_installs_is_listed_and_runs(guide_site, tmp_path):
    commands = [shlex.split(line.split("  #")[0])[3:] for lang, body in guide_blocks(guide_plugin_section())
                if lang == "bash" for line in body.splitlines() if line.startswith("python -m framework ")]
    assert [c[0] for c in commands] == ["plugins", "run"]
    env = {"MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/mlflow.db", "FRAMEWORK_RUNS_DIR": str(tmp_path / "runs")}
    listed = framework(guide_site, *commands[0], env=env)
    assert listed.returncode == 0, listed.stderr
    line = next(l for l in listed.stdout.splitlines() if "least_squares" in l)
    assert "LeastSquares" in line and "my_pkg.my_loss" in line and "[my-pkg 0.1.0]" in line
    ran = framework(guide_site, *commands[1], env=env)
    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert re.search(r"FINISHED after \d+ steps", ran.stdout)
