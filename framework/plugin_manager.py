"""The pluggy plugin manager: built-in plugin modules (loaded by module name, like any plugin) plus
third-party packages registered through the ``framework`` entry-point group.

``FRAMEWORK_DISABLE_PLUGINS`` (comma-separated module or entry-point names) blocks plugins, e.g. to
resolve a name clash between two installed packages. ``check_pending`` makes a misspelt hook name
fail at start-up instead of being silently ignored. A plugin that fails to load is named by entry point and
distribution; an unknown plugin name explains itself when a blocked plugin provides it or a loaded module
registered nothing (forgotten ``@hookimpl``), see :func:`explain_unknown`.
"""

from __future__ import annotations

import functools
import importlib
import importlib.metadata
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
    "plugins.datasets.piano_notes",
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
    "plugins.metrics.notes",
    "plugins.metrics.transcriber_train",
    "plugins.metrics.ladder",
    "plugins.metrics.envelope",
    "plugins.commands.gpu_check",
)


def disabled_plugins() -> set[str]:
    return {p.strip() for p in os.environ.get("FRAMEWORK_DISABLE_PLUGINS", "").split(",") if p.strip()}


class PluginManager(pluggy.PluginManager):
    """pluggy's manager plus what error messages need: the distribution of each entry-point module, and the
    plugins that ``FRAMEWORK_DISABLE_PLUGINS`` kept out (module -> where it came from)."""

    def __init__(self):
        super().__init__(hookspecs.PROJECT)
        self.add_hookspecs(hookspecs)
        self.distributions: dict[str, str] = {}  # module -> "dist version", for entry-point plugins
        self.blocked: dict[str, str] = {}  # module -> "built-in module" or "entry point 'x = m' of dist v"


def _import_builtin(name: str):
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        raise PluginError(f"built-in plugin module {name} failed to import: {exc}; "
                          f"install the project's dependencies (make test) or block it with "
                          f"FRAMEWORK_DISABLE_PLUGINS={name}") from exc


def _dist_label(ep: importlib.metadata.EntryPoint) -> str:
    dist = getattr(ep, "dist", None)
    return f"{dist.metadata['name']} {dist.version}" if dist is not None else "an unknown distribution"


def _load_entry_points(pm: PluginManager, blocked: set[str]) -> None:
    """Load the ``framework`` entry points; a failure names the entry point and its distribution."""
    for ep in importlib.metadata.entry_points(group=hookspecs.PROJECT):
        dist = _dist_label(ep)
        where = f"entry point '{ep.name} = {ep.value}' of {dist}"
        if ep.name in blocked or ep.module in blocked:
            pm.blocked[ep.module] = where
            continue
        if pm.has_plugin(ep.name):
            raise PluginError(f"two plugins use the entry-point name '{ep.name}': {where} and one from "
                              f"{pm.distributions.get(pm.get_plugin(ep.name).__name__, '?')}; uninstall one, or "
                              f"block one by module name with FRAMEWORK_DISABLE_PLUGINS={ep.module}")
        try:
            plugin = ep.load()
        except Exception as exc:  # a broken third-party package must say which one
            package = ep.dist.metadata["name"] if getattr(ep, "dist", None) else "the package that declares it"
            raise PluginError(f"plugin {where} failed to load: {type(exc).__name__}: {exc}; fix or uninstall "
                              f"{package}, or block it with FRAMEWORK_DISABLE_PLUGINS={ep.name}") from exc
        pm.register(plugin, name=ep.name)
        pm.distributions[getattr(plugin, "__name__", ep.module)] = dist


def make_plugin_manager(builtins: tuple[str, ...] = BUILTIN_MODULES, entry_points: bool = True) -> PluginManager:
    pm = PluginManager()
    blocked = disabled_plugins()
    for name in builtins:
        if name in blocked:
            pm.blocked[name] = "built-in module"
            continue
        pm.register(_import_builtin(name), name=name)
    if entry_points:
        _load_entry_points(pm, blocked)
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        raise PluginError(f"{exc}; valid hooks: {', '.join('register_' + k for k in hookspecs.KINDS)}, "
                          f"register_commands") from exc
    return pm


def _would_register(module, kind: str) -> set[str]:
    """The names ``module.register_<kind>`` registers when called (whether or not it has @hookimpl)."""
    names: set[str] = set()
    fn = getattr(module, f"register_{kind}", None)
    if callable(fn):
        try:
            fn(register=lambda name, *args, **kwargs: names.add(name))
        except Exception:  # only consulted to explain an unknown name; a failure just means no hint
            pass
    return names


def explain_unknown(pm: PluginManager, kind: str, name: str) -> str:
    """Why ``name`` is not registered, when a blocked plugin or a loaded module without @hookimpl explains it:
    a sentence to append to the "unknown <kind> 'name'" error, or an empty string."""
    notes = []
    for module, where in pm.blocked.items():
        try:
            hit = name in _would_register(importlib.import_module(module), kind)
        except Exception:  # a module blocked because it fails to import cannot be asked
            hit = False
        if hit:
            notes.append(f"'{name}' comes from {module} ({where}), which FRAMEWORK_DISABLE_PLUGINS blocks")
    for plugin in pm.get_plugins():
        if not pm.get_hookcallers(plugin):
            module = getattr(plugin, "__name__", pm.get_name(plugin))
            defined = sorted(n for n in dir(plugin) if n.startswith("register_") and callable(getattr(plugin, n)))
            what = f"defines {', '.join(defined)} without @hookimpl" if defined else "has no @hookimpl function"
            dist = f" ({pm.distributions[module]})" if module in pm.distributions else ""
            notes.append(f"plugin module {module}{dist} registered nothing: it {what} "
                         f"(from framework import hookimpl)")
    return "".join(f"; note: {n}" for n in notes)


def _call_register_hook(pm: pluggy.PluginManager, hook_name: str, add: Callable) -> None:
    """Call one register_* hook implementation at a time, so each registration knows its module."""
    for impl in getattr(pm.hook, hook_name).get_hookimpls():
        module = getattr(impl.plugin, "__name__", None) or pm.get_name(impl.plugin) or "?"
        impl.function(register=functools.partial(add, module=module))


def collect_registries(pm: PluginManager | None = None) -> dict[str, Registry]:
    """kind -> Registry of every registered plugin class."""
    pm = pm or make_plugin_manager()
    registries = {}
    for kind in hookspecs.KINDS:
        reg = Registry(kind, explain=functools.partial(explain_unknown, pm, kind))
        _call_register_hook(pm, f"register_{kind}", lambda name, cls, module, reg=reg:
                            reg.add(name, cls, module, pm.distributions.get(module)))
        registries[kind] = reg
    return registries


def collect_commands(pm: PluginManager | None = None) -> dict[str, tuple[Callable, Callable, str, str]]:
    """command name -> (run, add_arguments, help, module) registered through ``register_commands``."""
    pm = pm or make_plugin_manager()
    commands: dict[str, tuple[Callable, Callable, str, str]] = {}

    def add(name, run, add_arguments, help="", module="?"):
        if name in commands:
            raise PluginError(f"command '{name}' is registered twice: by {commands[name][3]} and by {module}")
        commands[name] = (run, add_arguments, help, module)

    _call_register_hook(pm, "register_commands", add)
    return commands
