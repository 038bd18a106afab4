"""The pluggy plugin manager: built-in plugin modules (loaded by module name, like any plugin) plus
third-party packages registered through the ``framework`` entry-point group.

``FRAMEWORK_DISABLE_PLUGINS`` (comma-separated module or entry-point names) blocks plugins, e.g. to
resolve a name clash between two installed packages. ``check_pending`` makes a misspelt hook name
fail at start-up instead of being silently ignored.
"""

from __future__ import annotations

import functools
import importlib
import os
from typing import Callable

import pluggy

from framework import hookspecs
from framework.errors import PluginError
from framework.registry import Registry

# Built-in plugin modules. framework/ never imports plugins/ directly: these are loaded by name.
BUILTIN_MODULES = (
    "plugins.datasets.synthetic",
    "plugins.datasets.mnist",
    "plugins.datasets.piano",
    "plugins.datasets.audio_folder",
    "plugins.datasets.maestro",
    "plugins.representations.raw",
    "plugins.representations.mdct",
    "plugins.representations.psychoacoustic",
    "plugins.representations.analyze",
    "plugins.models.toy_gan",
    "plugins.models.dcgan",
    "plugins.models.mp3net",
    "plugins.losses.gan",
    "plugins.metrics.basic",
    "plugins.metrics.mnist_classifier",
    "plugins.metrics.audio",
)


def disabled_plugins() -> set[str]:
    return {p.strip() for p in os.environ.get("FRAMEWORK_DISABLE_PLUGINS", "").split(",") if p.strip()}


def _import_builtin(name: str):
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        raise PluginError(f"built-in plugin module {name} failed to import: {exc}; "
                          f"install the project's dependencies (make test) or block it with "
                          f"FRAMEWORK_DISABLE_PLUGINS={name}") from exc


def make_plugin_manager(builtins: tuple[str, ...] = BUILTIN_MODULES, entry_points: bool = True
                        ) -> pluggy.PluginManager:
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    blocked = disabled_plugins()
    for name in builtins:
        if name in blocked:
            continue
        pm.register(_import_builtin(name), name=name)
    for name in blocked:
        pm.set_blocked(name)
    if entry_points:
        try:
            pm.load_setuptools_entrypoints(hookspecs.PROJECT)
        except Exception as exc:  # a broken third-party package must say which one
            raise PluginError(f"a plugin registered under entry-point group '{hookspecs.PROJECT}' failed to "
                              f"load: {exc!r}; uninstall it or block it with FRAMEWORK_DISABLE_PLUGINS") from exc
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        raise PluginError(f"{exc}; valid hooks: {', '.join('register_' + k for k in hookspecs.KINDS)}, "
                          f"register_commands") from exc
    return pm


def _call_register_hook(pm: pluggy.PluginManager, hook_name: str, add: Callable) -> None:
    """Call one register_* hook implementation at a time, so each registration knows its module."""
    for impl in getattr(pm.hook, hook_name).get_hookimpls():
        module = getattr(impl.plugin, "__name__", None) or pm.get_name(impl.plugin) or "?"
        impl.function(register=functools.partial(add, module=module))


def _distributions(pm: pluggy.PluginManager) -> dict[str, str]:
    """module name -> "dist version" for plugins loaded from entry points."""
    return {getattr(plugin, "__name__", "?"): f"{dist.metadata['name']} {dist.version}"
            for plugin, dist in pm.list_plugin_distinfo()}


def collect_registries(pm: pluggy.PluginManager | None = None) -> dict[str, Registry]:
    """kind -> Registry of every registered plugin class."""
    pm = pm or make_plugin_manager()
    registries = {}
    for kind in hookspecs.KINDS:
        reg = Registry(kind)
        dists = _distributions(pm)
        _call_register_hook(pm, f"register_{kind}", lambda name, cls, module, reg=reg:
                            reg.add(name, cls, module, dists.get(module)))
        registries[kind] = reg
    return registries


def collect_commands(pm: pluggy.PluginManager | None = None) -> dict[str, tuple[Callable, Callable, str, str]]:
    """command name -> (run, add_arguments, help, module) registered through ``register_commands``."""
    pm = pm or make_plugin_manager()
    commands: dict[str, tuple[Callable, Callable, str, str]] = {}

    def add(name, run, add_arguments, help="", module="?"):
        if name in commands:
            raise PluginError(f"command '{name}' is registered twice: by {commands[name][3]} and by {module}")
        commands[name] = (run, add_arguments, help, module)

    _call_register_hook(pm, "register_commands", add)
    return commands
