"""Run names: what a person reads in the MLflow run list, chart legends and ``report`` tables.

A run is named after its spec file's stem, ``smoke`` when the smoke overlay was applied, and the keys where
the ``--set`` overrides change the file, e.g.
``toy_synthetic smoke model.latent_dim=64 train.steps=10``. Sweep children are named after the grid values
that make them. A name longer than :data:`MAX_CHARS` abbreviates every override instead of dropping any
(``model.params.latent_dim`` -> ``m.latent_dim``, long values cut with ``…``), so the one that mattered is
always there. Names are labels, not identities: the run id is the identity, and
:meth:`framework.tracking.Tracker.start` appends ``#2``, ``#3`` ... when the experiment already has a run of that
name. This module does not touch MLflow.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from framework.spec import Spec, flatten, resolve

MAX_CHARS = 72
UNNAMED_KEYS = ("experiment", "tracking.")  # already shown elsewhere, or not a change of the experiment


def short_key(key: str) -> str:
    """``model.params.latent_dim`` -> ``model.latent_dim``: the block and the field say what changed."""
    return key.replace(".params.", ".")


def _text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def abbreviate(key: str, value: Any) -> str:
    """``model.params.latent_dim``, 64 -> ``m.latent_dim=64``: the block by its initial, the rest of the key in
    full, a value of more than 12 characters cut with ``…``."""
    block, dot, rest = short_key(key).partition(".")
    text = _text(value)
    return (f"{block[0]}.{rest}" if dot else key) + "=" + (text if len(text) <= 12 else text[:11] + "…")


def compose(stem: str, items: list[tuple[str, Any]]) -> str:
    """``stem k=v k=v``; when that is longer than :data:`MAX_CHARS`, every item abbreviated (:func:`abbreviate`),
    however long the name then is: no override is left out."""
    name = stem + "".join(f" {short_key(k)}={_text(v)}" for k, v in items)
    return name if len(name) <= MAX_CHARS else " ".join([stem] + [abbreviate(k, v) for k, v in items])


def overrides(spec: Spec) -> list[tuple[str, str]]:
    """(dotted key, value) that the run's ``--set`` items change in its file, in the spec's key order.
    Both sides are the file as written (no plugin defaults filled in), so a --set that names a different plugin
    shows as that one key, not as every default of the new plugin."""
    if not spec.sets or not Path(spec.path).is_file():  # a spec from a mapping (a checkpoint's) has no file
        return []
    before = flatten(resolve(spec.path, (), spec.smoke)[0])
    after = flatten(resolve(spec.path, spec.sets, spec.smoke)[0])
    return [(k, v) for k, v in after.items() if before.get(k) != v and not k.startswith(UNNAMED_KEYS)]


def stem(spec: Spec) -> str:
    return Path(spec.path).stem + (" smoke" if spec.smoke else "")


def run_name(spec: Spec) -> str:
    """The name of a single run of ``spec``."""
    return compose(stem(spec), overrides(spec))


def variant_name(spec: Spec, grid_values: dict[str, Any]) -> str:
    """The name of a sweep child: the spec and the grid values that make this variant (always shown, even
    where a value equals the file's)."""
    return compose(stem(spec), list(grid_values.items()))
