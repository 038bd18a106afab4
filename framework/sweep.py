"""Sweeps: the cross product of ``--grid key=v1,v2`` options (or a spec's ``grid:`` block) as one parent MLflow
run with one child run per variant.

Every variant is resolved and validated before the first one starts. A failed child is recorded FAILED and
the sweep goes on. A variant whose resolved spec (sha256) already has a FINISHED run in the experiment is
skipped, so re-running the same command resumes an interrupted sweep; the parent run is found again by the
sweep's own hash and reused.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
from typing import Any, Callable

import yaml

from framework import naming
from framework.errors import FrameworkError, SpecError
from framework.runner import run
from framework.spec import Spec, load_spec, resolve, spec_hash
from framework.tracking import Tracker


@dataclasses.dataclass
class Variant:
    sets: list[str]  # the --set items that make this variant
    spec: Spec
    label: str  # the grid values, as the sweep's log and results say them
    name: str  # the child run's MLflow name (framework/naming.py)


def parse_grid(items: list[str]) -> dict[str, list[Any]]:
    """``key=v1,v2`` (or ``key=[v1, v2]``) -> {key: [v1, v2]}, values parsed as YAML."""
    grid: dict[str, list[Any]] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip() or not raw.strip():
            raise SpecError(f"--grid {item!r}: expected key.path=v1,v2 (e.g. --grid seed=0,1,2)")
        raw = raw.strip()
        try:
            values = yaml.safe_load(raw) if raw.startswith("[") else [yaml.safe_load(v) for v in raw.split(",")]
        except yaml.YAMLError as exc:
            raise SpecError(f"--grid {item!r}: values are not valid YAML ({exc})") from None
        if not isinstance(values, list) or not values:
            raise SpecError(f"--grid {item!r}: give at least one value")
        grid[key.strip()] = values
    return grid


def _dump(value: Any) -> str:
    return json.dumps(value) if not isinstance(value, str) else value


def expand(path: str, registries, sets: list[str], grid_items: list[str], smoke: bool) -> tuple[list[Variant], str]:
    """All variants, validated, and the sweep's hash (base spec + grid)."""
    base, _ = resolve(path, sets, smoke)
    grid = dict(base.pop("grid", None) or {})
    if not isinstance(grid, dict):
        raise SpecError(f"{path}: grid: must map dotted keys to lists of values")
    grid.update(parse_grid(grid_items))
    for key, values in grid.items():
        if not isinstance(values, list) or not values:
            raise SpecError(f"{path}: grid.{key}: must be a non-empty list of values")
    variants = []
    keys = list(grid)
    for combo in itertools.product(*(grid[k] for k in keys)):
        extra = [f"{k}={_dump(v)}" for k, v in zip(keys, combo)]
        try:
            spec = load_spec(path, registries, sets=list(sets) + extra, smoke=smoke)
        except SpecError as exc:
            raise SpecError(f"sweep variant {', '.join(extra)}: {exc}") from None
        variants.append(Variant(extra, spec, ", ".join(f"{k}={_dump(v)}" for k, v in zip(keys, combo)),
                                naming.variant_name(spec, dict(zip(keys, combo)))))
    return variants, spec_hash({"base": base, "grid": grid})


def run_sweep(path: str, registries, *, sets: list[str], grid_items: list[str], smoke: bool,
              tracking_uri: str | None, device: str | None, log: Callable[[str], None] = print) -> dict[str, str]:
    """Run every variant not already FINISHED; return label -> status (FINISHED, FAILED, SKIPPED)."""
    variants, sweep_hash = expand(path, registries, sets, grid_items, smoke)
    log(f"sweep of {len(variants)} variants, all valid")
    tracker = Tracker(tracking_uri)
    tracker.check()
    experiment = variants[0].spec.experiment
    parent = tracker.open_parent(experiment, sweep_hash, name=f"sweep:{variants[0].spec.path.rsplit('/', 1)[-1]}",
                                 tags={"sweep.variants": len(variants), "spec.path": path})
    finished = tracker.finished_spec_hashes(experiment)
    results: dict[str, str] = {}
    for i, v in enumerate(variants, 1):
        if v.spec.sha256 in finished:
            log(f"[{i}/{len(variants)}] {v.label}: already FINISHED, skipped")
            results[v.label] = "SKIPPED"
            continue
        log(f"[{i}/{len(variants)}] {v.label}")
        try:
            result = run(v.spec, registries, tracking_uri=tracking_uri, device=device, parent_run_id=parent,
                         run_name=v.name, log=log)
            results[v.label] = result.status
        except (FrameworkError, RuntimeError, ValueError) as exc:
            log(f"[{i}/{len(variants)}] {v.label}: FAILED ({exc})")
            results[v.label] = "FAILED"
        if results[v.label] == "KILLED":
            break
    failed = sum(s in ("FAILED", "KILLED") for s in results.values())
    tracker.close_parent(parent, "FAILED" if failed else "FINISHED",
                         {"sweep.failed": failed, "sweep.results": json.dumps(results)[:4000]})
    return results
