"""Name -> class registries, one per plugin kind, filled by the pluggy hooks.

A :class:`Registry` records for every name the class, the module that registered it and the
distribution that ships that module, so errors and ``python -m framework plugins`` can say where a
plugin comes from. Unknown names give the valid ones and a close match; a name registered twice is an
error naming both modules.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.metadata
from typing import Callable, Iterator

from framework.errors import PluginError, did_you_mean
from framework.hookspecs import KINDS

SINGULAR = {"datasets": "dataset", "representations": "representation", "models": "model",
            "losses": "loss", "metrics": "metric"}


@dataclasses.dataclass(frozen=True)
class Entry:
    name: str
    cls: type
    module: str  # the module that registered it (the hookimpl's module)
    distribution: str  # the installed distribution providing that module, or "-" when unknown


@functools.lru_cache(maxsize=1)
def _packages_distributions() -> dict:
    return importlib.metadata.packages_distributions()  # scans every installed package: seconds, so once


def distribution_of(module: str) -> str:
    """The installed distribution (``name version``) that ships ``module``'s top-level package."""
    top = module.split(".")[0]
    dists = _packages_distributions().get(top, [])
    if not dists:
        return "-"
    name = dists[0]
    try:
        return f"{name} {importlib.metadata.version(name)}"
    except importlib.metadata.PackageNotFoundError:
        return name


class Registry:
    """The plugins of one kind (``models``, ``losses``, ...)."""

    def __init__(self, kind: str, explain: Callable[[str], str] | None = None):
        if kind not in KINDS:
            raise ValueError(f"unknown plugin kind {kind!r}; kinds: {', '.join(KINDS)}")
        self.kind = kind
        self._entries: dict[str, Entry] = {}
        self._explain = explain  # name -> why it is missing (blocked, no @hookimpl), from the plugin manager

    def add(self, name: str, cls: type, module: str, distribution: str | None = None) -> None:
        if not isinstance(name, str) or not name:
            raise PluginError(f"{module}: register_{self.kind}: name must be a non-empty string, got {name!r}")
        if not isinstance(cls, type):
            raise PluginError(f"{module}: register_{self.kind}({name!r}, ...): expected a class, got {cls!r}")
        if name in self._entries:
            other = self._entries[name].module
            raise PluginError(f"{SINGULAR[self.kind]} '{name}' is registered twice: by {other} and by {module}; "
                              f"rename one, or block a plugin with FRAMEWORK_DISABLE_PLUGINS")
        params = getattr(cls, "Params", None)
        if params is None or not dataclasses.is_dataclass(params):
            raise PluginError(f"{module}: {SINGULAR[self.kind]} '{name}' ({cls.__name__}) needs a nested "
                              f"dataclass `Params` (the schema of its YAML params)")
        self._entries[name] = Entry(name, cls, module, distribution or distribution_of(module))

    def get(self, name: str) -> Entry:
        try:
            return self._entries[name]
        except KeyError:
            raise PluginError(self.unknown_message(name)) from None

    def unknown_message(self, name: str) -> str:
        """"unknown model 'x'; registered: ..." with a close match and, when known, why it is missing."""
        valid = ", ".join(sorted(self._entries)) or "(none registered)"
        why = self._explain(str(name)) if self._explain else ""
        close = did_you_mean(str(name), self._entries)
        return f"unknown {SINGULAR[self.kind]} '{name}'; registered: {valid}{close}{why}"

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[Entry]:
        return iter(self._entries[n] for n in self.names())
