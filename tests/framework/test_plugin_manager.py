"""Plugin loading as a third-party author meets it: real modules with real entry points (a ``.dist-info`` on
sys.path, which importlib.metadata reads like an installed package). A failing import names its entry point and
distribution; an unknown name explains a blocked plugin or a module that forgot ``@hookimpl``; blocking works by
module name as well as by entry-point name."""

import textwrap

import pytest

from framework.errors import PluginError, SpecError
from framework.plugin_manager import collect_registries, make_plugin_manager
from framework.spec import load_spec
from tests.framework.test_cli import SPEC

LOSS_MODULE = '''
import dataclasses
from framework import hookimpl
from framework.protocols import Loss


class Zero(Loss):
    @dataclasses.dataclass(frozen=True)
    class Params:
        pass

    default_weights = {"d/zero": 1.0, "g/zero": 1.0}

    def discriminator_terms(self, critic, real, fake, step=0):
        return {"d/zero": critic(real).mean() * 0}

    def generator_terms(self, critic, fake):
        return {"g/zero": critic(fake).mean() * 0}


HOOKIMPL
def register_losses(register):
    register("NAME", Zero)
'''


def installed(tmp_path, monkeypatch, module: str, source: str, ep_name: str) -> str:
    """Put ``module`` on sys.path as distribution ``framework-<ep_name> 0.1.0`` with a ``framework`` entry point."""
    site = tmp_path / "site"
    info = site / f"framework_{ep_name}-0.1.0.dist-info"
    info.mkdir(parents=True)
    (site / f"{module}.py").write_text(textwrap.dedent(source))
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: framework-{ep_name}\nVersion: 0.1.0\n")
    (info / "entry_points.txt").write_text(f"[framework]\n{ep_name} = {module}\n")
    monkeypatch.syspath_prepend(str(site))
    return f"framework-{ep_name} 0.1.0"


def loss_module(name: str, hookimpl: bool = True) -> str:
    return LOSS_MODULE.replace("HOOKIMPL", "@hookimpl" if hookimpl else "").replace("NAME", name)


def test_entry_point_plugin_is_registered_with_its_distribution(tmp_path, monkeypatch):
    dist = installed(tmp_path, monkeypatch, "pm_ok_mod", loss_module("pm_ok_loss"), "pmok")
    entry = collect_registries(make_plugin_manager(builtins=()))["losses"].get("pm_ok_loss")
    assert (entry.module, entry.distribution) == ("pm_ok_mod", dist)


def test_a_failing_import_names_the_entry_point_and_distribution(tmp_path, monkeypatch):
    installed(tmp_path, monkeypatch, "pm_broken_mod", "import pm_not_installed_anywhere\n", "pmbroken")
    with pytest.raises(PluginError) as exc:
        make_plugin_manager(builtins=())
    msg = str(exc.value)
    assert "plugin entry point 'pmbroken = pm_broken_mod' of framework-pmbroken 0.1.0 failed to load" in msg
    assert "No module named 'pm_not_installed_anywhere'" in msg
    assert "fix or uninstall framework-pmbroken, or block it with FRAMEWORK_DISABLE_PLUGINS=pmbroken" in msg


def test_a_module_without_hookimpl_is_named_when_its_name_is_unknown(tmp_path, monkeypatch):
    installed(tmp_path, monkeypatch, "pm_forgot_mod", loss_module("pm_forgot_loss", hookimpl=False), "pmforgot")
    registries = collect_registries(make_plugin_manager())
    note = ("plugin module pm_forgot_mod (framework-pmforgot 0.1.0) registered nothing: it defines "
            "register_losses without @hookimpl")
    with pytest.raises(PluginError, match="unknown loss 'pm_forgot_loss'") as exc:
        registries["losses"].get("pm_forgot_loss")
    assert note in str(exc.value)
    with pytest.raises(SpecError) as exc:  # the spec's message, what `validate` / `run` print
        load_spec(SPEC, registries, sets=["loss.name=pm_forgot_loss"])
    assert "loss.name: unknown loss 'pm_forgot_loss'" in str(exc.value) and note in str(exc.value)


@pytest.mark.parametrize("block", ["pm_blocked_mod", "pmblocked"])
def test_blocking_by_module_or_entry_point_name_and_the_unknown_name_says_so(tmp_path, monkeypatch, block):
    installed(tmp_path, monkeypatch, "pm_blocked_mod", loss_module("pm_blocked_loss"), "pmblocked")
    monkeypatch.setenv("FRAMEWORK_DISABLE_PLUGINS", block)
    losses = collect_registries(make_plugin_manager(builtins=()))["losses"]
    assert "pm_blocked_loss" not in losses
    with pytest.raises(PluginError) as exc:
        losses.get("pm_blocked_loss")
    assert ("'pm_blocked_loss' comes from pm_blocked_mod (entry point 'pmblocked = pm_blocked_mod' of "
            "framework-pmblocked 0.1.0), which FRAMEWORK_DISABLE_PLUGINS blocks") in str(exc.value)


def test_a_blocked_builtin_is_named_when_its_name_is_unknown(monkeypatch):
    monkeypatch.setenv("FRAMEWORK_DISABLE_PLUGINS", "plugins.losses.gan")
    losses = collect_registries(make_plugin_manager(entry_points=False))["losses"]
    with pytest.raises(PluginError, match=r"'wgan_gp' comes from plugins.losses.gan \(built-in module\), "
                                          r"which FRAMEWORK_DISABLE_PLUGINS blocks"):
        losses.get("wgan_gp")


def test_an_unknown_name_without_a_reason_gets_no_note():
    losses = collect_registries(make_plugin_manager(entry_points=False))["losses"]
    with pytest.raises(PluginError) as exc:
        losses.get("wgan_gpp")
    assert "note:" not in str(exc.value) and "did you mean 'wgan_gp'" in str(exc.value)
