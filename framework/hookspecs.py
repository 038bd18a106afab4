"""pluggy hook specifications of the framework (project name and entry-point group: ``framework``).

Every hook receives one ``register(name, cls)`` callable and calls it once per plugin class it
provides. A plugin module ends with its ``@hookimpl`` functions, built-in or third-party alike::

    from framework import hookimpl

    @hookimpl
    def register_models(register):
        register("my_gan", MyGan)

``register_commands`` is the one hook that is not a plugin kind: it lets a plugin package add a
``python -m framework <command>`` subcommand (the audio front end adds ``analyze`` this way, so the
core never imports audio code).
"""

from __future__ import annotations

from typing import Callable

import pluggy

PROJECT = "framework"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)

Register = Callable[[str, type], None]


@hookspec
def register_datasets(register: Register) -> None:
    """Register dataset classes: ``register("mnist", Mnist)`` (see :class:`framework.protocols.Dataset`)."""


@hookspec
def register_representations(register: Register) -> None:
    """Register representation classes (see :class:`framework.protocols.Representation`)."""


@hookspec
def register_models(register: Register) -> None:
    """Register model classes (see :class:`framework.protocols.Model`)."""


@hookspec
def register_losses(register: Register) -> None:
    """Register loss classes (see :class:`framework.protocols.Loss`)."""


@hookspec
def register_metrics(register: Register) -> None:
    """Register metric classes (see :class:`framework.protocols.Metric`)."""


@hookspec
def register_commands(register: Callable[..., None]) -> None:
    """Register CLI subcommands: ``register(name, run, add_arguments, help)``.

    ``add_arguments(parser)`` adds the subcommand's argparse arguments; ``run(args) -> int`` executes it
    and returns the exit status. Names must not clash with the core's commands.
    """


KINDS = ("datasets", "representations", "models", "losses", "metrics")
