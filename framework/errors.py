"""Exceptions of the framework. Every user-facing failure is a FrameworkError whose message says
what failed, where (file and dotted key, when there is one), what is valid, and what to do next;
the CLI prints it without a traceback and exits non-zero."""

from __future__ import annotations

import difflib
from typing import Iterable


class FrameworkError(Exception):
    """Base class: a problem the user can fix (bad spec, unknown plugin, missing data, ...)."""


class SpecError(FrameworkError):
    """The YAML spec is malformed, or a block does not match its plugin's ``Params``."""


class PluginError(FrameworkError):
    """Unknown or duplicate plugin name, or a plugin module that fails to load."""


class DataError(FrameworkError):
    """Missing, corrupt or unsuitable data (files, sample rates, shapes)."""


class NonFiniteLossError(FrameworkError):
    """A training loss became NaN or infinite; the last good checkpoint is kept untouched."""


class CheckpointError(FrameworkError):
    """A checkpoint or run id cannot be found or read, or the runs folder cannot be written."""


class TrackingError(FrameworkError):
    """The MLflow tracking store cannot be reached or written."""


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` for the closest of ``choices``, or an empty string."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""
