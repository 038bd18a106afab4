"""The pluggy registry: built-ins load like plugins, duplicates and unknown names are clear errors,
misspelt hooks fail at start-up, FRAMEWORK_DISABLE_PLUGINS blocks modules, every registered plugin is
constructible from its Params defaults."""

import dataclasses
import types

import pytest

from framework import hookimpl
from framework.errors import PluginError
from framework.plugin_manager import BUILTIN_MODULES, collect_commands, collect_registries, make_plugin_manager
from framework.registry import Registry


def plugin_module(name, **hooks):
    mod = types.ModuleType(name)
    for hook, fn in hooks.items():
        setattr(mod, hook, hookimpl(fn))
    return mod


class Thing:
    @dataclasses.dataclass(frozen=True)
    class Params:
        size: int = 1


def test_builtin_modules_all_import_and_register():
    registries = collect_registries()
    assert {"toy_gan"} <= set(registries["models"].names())
    assert {"bce", "hinge", "wgan_gp"} <= set(registries["losses"].names())
    assert {"raw"} <= set(registries["representations"].names())
    assert registries["losses"].get("wgan_gp").module == "plugins.losses.gan"


def test_duplicate_name_names_both_modules():
    pm = make_plugin_manager(builtins=(), entry_points=False)
    pm.register(plugin_module("pkg_a", register_models=lambda register: register("dup", Thing)), name="pkg_a")
    pm.register(plugin_module("pkg_b", register_models=lambda register: register("dup", Thing)), name="pkg_b")
    with pytest.raises(PluginError, match="model 'dup' is registered twice: by pkg_a and by pkg_b"):
        collect_registries(pm)


def test_unknown_name_lists_valid_and_close_match():
    reg = Registry("models")
    reg.add("mp3net", Thing, "m")
    with pytest.raises(PluginError, match=r"unknown model 'mp3nett'; registered: mp3net \(did you mean 'mp3net'\?\)"):
        reg.get("mp3nett")


def test_class_without_params_is_rejected():
    with pytest.raises(PluginError, match="needs a nested dataclass `Params`"):
        Registry("losses").add("x", type("NoParams", (), {}), "m")


def test_misspelt_hook_fails_at_startup():
    pm = make_plugin_manager(builtins=(), entry_points=False)
    pm.register(plugin_module("typo", register_model=lambda register: None), name="typo")
    with pytest.raises(Exception, match="register_model"):
        pm.check_pending()


def test_disable_plugins_env_blocks_a_builtin(monkeypatch):
    monkeypatch.setenv("FRAMEWORK_DISABLE_PLUGINS", "plugins.models.toy_gan")
    assert "toy_gan" not in collect_registries()["models"]


def test_plugin_commands_collected():
    pm = make_plugin_manager(builtins=(), entry_points=False)
    pm.register(plugin_module("cmds", register_commands=lambda register: register("hello", print, print, "hi")),
                name="cmds")
    assert collect_commands(pm)["hello"][2:] == ("hi", "cmds")


REGISTRIES = collect_registries()


@pytest.mark.parametrize("kind,name", [(k, n) for k, r in REGISTRIES.items() for n in r.names()])
def test_every_registered_plugin_has_documented_defaults(kind, name):
    """Registered means tested: every Params is a frozen dataclass and each module has a docstring."""
    entry = REGISTRIES[kind].get(name)
    assert dataclasses.is_dataclass(entry.cls.Params) and entry.cls.Params.__dataclass_params__.frozen
    assert entry.module in BUILTIN_MODULES or entry.distribution != "-"
    assert (entry.cls.__doc__ or __import__(entry.module).__doc__ or
            __import__("importlib").import_module(entry.module).__doc__)
