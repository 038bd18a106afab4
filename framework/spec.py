"""Experiment specs: YAML loading, ``extends:``, the ``smoke:`` overlay, ``--set`` overrides, and
validation of every block against its plugin's ``Params`` before anything heavy is built.

Resolution order: the ``extends:`` chain (parents first, paths relative to the extending file), the
``smoke:`` overlay when asked for, then ``--set a.b=v`` (v parsed as YAML) last. Merging is recursive
for mappings; a plugin block whose ``name`` changes gets its ``params`` replaced, not merged; lists are
replaced whole. Every key remembers the file (or ``--set``) it came from, so an error names the file
the user must edit.

YAML is read with ``yaml.safe_load`` only: a spec names plugins, never import paths, and cannot run code.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import types
import typing
from pathlib import Path
from typing import Any, Literal, Mapping

import yaml

from framework.energy import EnergyConfig
from framework.errors import SpecError, did_you_mean
from framework.registry import SINGULAR, Registry
from framework.runtime import PRECISIONS

PLUGIN_BLOCKS = {"dataset": "datasets", "representation": "representations", "model": "models",
                 "loss": "losses"}


@dataclasses.dataclass(frozen=True)
class Criterion:
    """One condition of ``train.until``: a logged metric and the bound it must reach (``min``, ``max`` or both)."""

    metric: str  # a key the run logs, e.g. eval/peak_conc_fake (evaluations) or train/d/loss
    min: float | None = None  # holds when the value is >= min
    max: float | None = None  # holds when the value is <= max

    def holds(self, value: float | None) -> bool:
        return value is not None and value == value and (self.min is None or value >= self.min) \
            and (self.max is None or value <= self.max)

    def __str__(self) -> str:
        bounds = [f">= {self.min:g}" if self.min is not None else "", f"<= {self.max:g}" if self.max is not None else ""]
        return f"{self.metric} {' and '.join(b for b in bounds if b)}"


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """The ``train:`` block: what the runner does, independent of the plugins."""

    steps: int  # optimisation steps (model.train_step calls; for a WGAN, critic iterations)
    batch_size: int = 8  # per process
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"  # auto: bf16 autocast on CUDA, fp32 on CPU
    compile: bool = False  # torch.compile the networks (model decides which)
    device: str = "auto"  # auto | cpu | cuda | cuda:N; --device overrides
    num_workers: int = 0  # data-loader worker processes
    log_every: int = 10  # log train/* metrics every k steps (the only host sync of the loop)
    eval_every: int = 0  # run metrics every k steps (0: only after the last step)
    eval_at_start: bool = False  # metrics and samples also before the first step (the untrained model's)
    eval_samples: int = 256  # generated (and real) items fed to the metrics per evaluation
    sample_every: int = 0  # write sample artifacts every k steps (0: only after the last step)
    samples: int = 4  # items per sample artifact
    eval_split: str = "validation"  # the dataset split whose items the metrics compare against
    checkpoint_every: int = 1000  # write the resumable checkpoint every k steps (and at the end)
    # Train until a criterion holds: the run stops at the first evaluation (eval_every) where every condition
    # holds, and logs until/passed, until/examples, until/run_s, until/energy_j (the cost of getting there).
    # steps stays the hard cap; max_examples / max_minutes (0: none) are the budget in examples / active minutes.
    until: tuple[Criterion, ...] = ()
    max_examples: int = 0  # stop once this many examples (all processes) have been trained on
    max_minutes: float = 0.0  # stop once the run has been active this long (perf/run_s)


@dataclasses.dataclass(frozen=True)
class TrackingConfig:
    system_metrics: bool = True  # MLflow system metrics (CPU, memory, GPU) sampled in the background
    log_checkpoint: bool = True  # log the final checkpoint as an artifact


TOP_LEVEL = {"experiment", "description", "seed", "train", "dataset", "representation", "model", "loss",
             "metrics", "tracking", "energy", "smoke", "extends", "grid",  # grid: sweeps (framework/sweep.py)
             "bench"}  # bench: the variants `python -m framework bench SPEC` times (framework/bench.py)
NOT_RUN = ("grid", "bench")  # top-level blocks that are instructions to a command, not part of the run
REQUIRED = ("experiment", "train", "dataset", "representation", "model", "loss")


@dataclasses.dataclass(frozen=True)
class PluginBlock:
    name: str
    params: Any  # the plugin's Params instance
    cls: type
    weights: dict[str, float] | None = None  # losses only


@dataclasses.dataclass(frozen=True)
class Spec:
    """A validated spec: typed configs and built Params, plus the resolved mapping that runs and is logged."""

    path: str
    experiment: str
    seed: int
    train: TrainConfig
    tracking: TrackingConfig
    energy: EnergyConfig
    dataset: PluginBlock
    representation: PluginBlock
    model: PluginBlock
    loss: PluginBlock
    metrics: tuple[PluginBlock, ...]
    resolved: dict  # the fully resolved spec (no extends/smoke/grid/bench keys), every default filled in
    smoke: bool = False
    grid: bool = False  # the spec has a grid: block (python -m framework run sweeps it)
    # bench: variant name -> its --set items, e.g. {"fp32": ("train.precision=fp32",)} (python -m framework bench)
    bench: Mapping[str, tuple[str, ...]] = dataclasses.field(default_factory=dict)
    sets: tuple[str, ...] = ()  # the --set items applied to the file (run names show what they change)

    @property
    def sha256(self) -> str:
        return spec_hash(self.resolved)


def spec_hash(resolved: Mapping) -> str:
    return hashlib.sha256(json.dumps(resolved, sort_keys=True, default=str).encode()).hexdigest()


# ----------------------------------------------------------------------------------------------- loading

def load_yaml(path: Path) -> dict:
    """Read one YAML mapping; malformed YAML is reported with the file and line, a file that is not UTF-8 text
    with the offset of its first bad byte."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SpecError(f"{path}: spec file not found") from None
    except OSError as exc:
        raise SpecError(f"{path}: cannot read spec ({exc})") from None
    except UnicodeDecodeError as exc:
        raise SpecError(f"{path}: not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at offset {exc.start}); a spec "
                        f"is a YAML text file") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f":{mark.line + 1}:{mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise SpecError(f"{path}{where}: malformed YAML: {problem}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise SpecError(f"{path}: a spec must be a YAML mapping (key: value), got {type(data).__name__}")
    return data


Origins = dict  # dotted key path -> the file or "--set" it came from


def _record(origins: Origins, data: Any, prefix: str, source: str) -> None:
    if prefix:
        origins[prefix] = source
    if isinstance(data, dict):
        for k, v in data.items():
            _record(origins, v, f"{prefix}.{k}" if prefix else str(k), source)


def merge(base: dict, over: Mapping, origins: Origins, source: str, prefix: str = "") -> dict:
    """Recursive merge of ``over`` onto a copy of ``base`` (see the module docstring for the rules)."""
    out = dict(base)
    for key, value in over.items():
        path = f"{prefix}.{key}" if prefix else str(key)
        old = out.get(key)
        renamed = (isinstance(old, dict) and isinstance(value, dict) and "name" in value
                   and old.get("name") != value["name"])
        if isinstance(old, dict) and isinstance(value, dict) and not renamed:
            out[key] = merge(old, value, origins, source, path)
        else:
            out[key] = copy.deepcopy(value)
            for k in [k for k in origins if k == path or k.startswith(path + ".")]:
                del origins[k]
            _record(origins, value, path, source)
    return out


def _load_chain(path: Path, origins: Origins, seen: tuple[Path, ...]) -> dict:
    path = path.resolve()
    if path in seen:
        chain = " -> ".join(str(p) for p in seen + (path,))
        raise SpecError(f"{path}: extends cycle: {chain}")
    data = load_yaml(path)
    parent = data.pop("extends", None)
    if parent is None:
        _record(origins, data, "", str(path))
        return data
    if not isinstance(parent, str):
        raise SpecError(f"{path}: extends: must be a relative path string, got {parent!r}")
    base = _load_chain(path.parent / parent, origins, seen + (path,))
    return merge(base, data, origins, str(path))


def parse_set(item: str) -> tuple[list[str], Any]:
    """``a.b=v`` -> (["a", "b"], yaml.safe_load(v))."""
    if "=" not in item:
        raise SpecError(f"--set {item!r}: expected key.path=value, e.g. --set train.batch_size=8")
    key, _, raw = item.partition("=")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise SpecError(f"--set {item!r}: value is not valid YAML ({exc})") from None
    parts = key.strip().split(".")
    if not all(parts):
        raise SpecError(f"--set {item!r}: empty key in path")
    return parts, value


def apply_set(data: dict, parts: list[str], value: Any, origins: Origins) -> None:
    node: Any = data
    for i, part in enumerate(parts[:-1]):
        if isinstance(node, list):
            node = node[_list_index(node, part, parts[:i + 1])]
        else:
            node = node.setdefault(part, {})
            if not isinstance(node, (dict, list)):
                raise SpecError(f"--set {'.'.join(parts)}: '{'.'.join(parts[:i + 1])}' is not a mapping")
    last = parts[-1]
    if isinstance(node, list):
        node[_list_index(node, last, parts)] = value
    elif last == "name" and len(parts) > 1 and node.get("name") not in (None, value):
        # a plugin block renamed by --set starts afresh, as with extends: the old params/weights don't apply
        node.clear()
        node["name"] = value
    else:
        node[last] = value
    _record(origins, value, ".".join(parts), "--set")


def _list_index(node: list, part: str, parts: list[str]) -> int:
    if not part.isdigit() or int(part) >= len(node):
        raise SpecError(f"--set {'.'.join(parts)}: '{part}' is not an index of a list of {len(node)} items")
    return int(part)


def resolve(path: str | Path, sets: list[str] = (), smoke: bool = False) -> tuple[dict, Origins]:
    """The fully resolved spec mapping and the origin of each key."""
    origins: Origins = {}
    data = _load_chain(Path(path), origins, ())
    overlay = data.pop("smoke", None)
    if smoke:
        if overlay is None:
            raise SpecError(f"{path}: --smoke given but the spec has no smoke: overlay")
        if not isinstance(overlay, dict):
            raise SpecError(f"{origins.get('smoke', path)}: smoke: must be a mapping")
        data = merge(data, overlay, origins, f"{origins.get('smoke', path)} (smoke:)")
    for item in sets:
        parts, value = parse_set(item)
        apply_set(data, parts, value, origins)
    return data, origins


# ---------------------------------------------------------------------------------------- validation

class _Checker:
    def __init__(self, path: str, origins: Origins):
        self.path, self.origins = path, origins

    def where(self, key: str) -> str:
        parts = key.split(".")
        for i in range(len(parts), 0, -1):
            src = self.origins.get(".".join(parts[:i]))
            if src:
                return src
        return self.path

    def fail(self, key: str, message: str) -> typing.NoReturn:
        raise SpecError(f"{self.where(key)}: {key}: {message}")

    def coerce(self, value: Any, tp: Any, key: str) -> Any:
        """Check ``value`` against the annotation ``tp``; return it converted (lists -> tuples etc.)."""
        origin, args = typing.get_origin(tp), typing.get_args(tp)
        if tp is Any or tp is typing.Any:
            return value
        if origin is Literal:
            if value not in args:
                self.fail(key, f"must be one of {', '.join(map(repr, args))}, got {value!r}"
                               f"{did_you_mean(str(value), [str(a) for a in args])}")
            return value
        if origin in (typing.Union, types.UnionType):
            if value is None and type(None) in args:
                return None
            errors = []
            for arg in (a for a in args if a is not type(None)):
                try:
                    return self.coerce(value, arg, key)
                except SpecError as exc:
                    errors.append(str(exc).rsplit(": ", 1)[-1])
            self.fail(key, f"expected {_type_name(tp)}, got {value!r}")
        if origin in (tuple, list):
            if not isinstance(value, (list, tuple)):
                self.fail(key, f"expected a list ({_type_name(tp)}), got {value!r}")
            if origin is tuple and args and args[-1] is not Ellipsis and len(args) != len(value):
                self.fail(key, f"expected {len(args)} items ({_type_name(tp)}), got {len(value)}")
            if not args:
                item_types = [Any] * len(value)
            elif origin is list or args[-1] is Ellipsis:
                item_types = [args[0]] * len(value)
            else:
                item_types = list(args)
            items = [self.coerce(v, t, f"{key}.{i}") for i, (v, t) in enumerate(zip(value, item_types))]
            return tuple(items) if origin is tuple else items
        if origin is dict or tp is dict:
            if not isinstance(value, dict):
                self.fail(key, f"expected a mapping, got {value!r}")
            vt = args[1] if len(args) == 2 else Any
            return {str(k): self.coerce(v, vt, f"{key}.{k}") for k, v in value.items()}
        if tp is bool:
            if not isinstance(value, bool):
                self.fail(key, f"expected true/false, got {value!r}")
            return value
        if tp is int:
            if isinstance(value, bool) or not isinstance(value, int):
                self.fail(key, f"expected an integer, got {value!r}")
            return value
        if tp is float:
            if isinstance(value, bool):
                self.fail(key, f"expected a number, got {value!r}")
            if isinstance(value, (int, float)):
                return float(value)
            if isinstance(value, str):  # PyYAML reads 1e-4 (no dot) as a string
                try:
                    return float(value)
                except ValueError:
                    pass
            self.fail(key, f"expected a number, got {value!r}")
        if tp is str:
            if not isinstance(value, str):
                self.fail(key, f"expected a string, got {value!r}")
            return value
        if dataclasses.is_dataclass(tp):
            return self.dataclass(tp, value, key, what=f"'{key}'")
        if isinstance(tp, type) and isinstance(value, tp):
            return value
        self.fail(key, f"expected {_type_name(tp)}, got {value!r}")

    def dataclass(self, cls: type, data: Any, key: str, what: str) -> Any:
        if data is None:
            data = {}
        if not isinstance(data, dict):
            self.fail(key, f"must be a mapping of parameters, got {data!r}")
        hints = typing.get_type_hints(cls)
        fields = {f.name: f for f in dataclasses.fields(cls)}
        for name in data:
            if name not in fields:
                valid = ", ".join(fields) or "(none)"
                self.fail(f"{key}.{name}" if key else str(name),
                          f"unknown parameter for {what}; valid: {valid}{did_you_mean(str(name), fields)}")
        missing = [n for n, f in fields.items() if n not in data and f.default is dataclasses.MISSING
                   and f.default_factory is dataclasses.MISSING]
        if missing:
            self.fail(key or missing[0], f"missing required parameter(s) for {what}: {', '.join(missing)}")
        kwargs = {n: self.coerce(v, hints[n], f"{key}.{n}" if key else n) for n, v in data.items()}
        try:
            return cls(**kwargs)
        except (TypeError, ValueError) as exc:
            self.fail(key, f"invalid parameters for {what}: {exc}")

    def plugin(self, block: Any, key: str, registry: Registry, with_weights: bool = False) -> PluginBlock:
        if not isinstance(block, dict):
            self.fail(key, f"must be a mapping with 'name' and optional 'params', got {block!r}")
        allowed = {"name", "params"} | ({"weights"} if with_weights else set())
        for k in block:
            if k not in allowed:
                self.fail(f"{key}.{k}", f"unknown key; valid: {', '.join(sorted(allowed))}"
                                        f"{did_you_mean(str(k), allowed)}")
        name = block.get("name")
        if not isinstance(name, str):
            self.fail(f"{key}.name", f"missing the {SINGULAR[registry.kind]} name; registered: "
                                     f"{', '.join(registry.names())}")
        if name not in registry:
            self.fail(f"{key}.name", registry.unknown_message(name))
        cls = registry.get(name).cls
        params = self.dataclass(cls.Params, block.get("params"), f"{key}.params",
                                what=f"{SINGULAR[registry.kind]} '{name}'")
        weights = None
        if with_weights:
            weights = self.coerce(block.get("weights") or {}, dict[str, float], f"{key}.weights")
            known = dict(getattr(cls, "default_weights", {}))
            for term in weights:
                if term not in known:
                    self.fail(f"{key}.weights.{term}", f"loss '{name}' has no term '{term}'; terms: "
                                                       f"{', '.join(known)}{did_you_mean(term, known)}")
        return PluginBlock(name=name, params=params, cls=cls, weights=weights)


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def validate(data: dict, registries: Mapping[str, Registry], path: str, origins: Origins | None = None,
             smoke: bool = False) -> Spec:
    """Check the whole resolved mapping; return a :class:`Spec` or raise the first :class:`SpecError`."""
    chk = _Checker(str(path), origins or {})
    for key in data:
        if key not in TOP_LEVEL:
            chk.fail(str(key), f"unknown top-level key; valid: {', '.join(sorted(TOP_LEVEL - {'extends'}))}"
                               f"{did_you_mean(str(key), TOP_LEVEL)}")
    for key in REQUIRED:
        if key not in data:
            raise SpecError(f"{path}: missing required top-level key '{key}'")
    if not isinstance(data["experiment"], str) or not data["experiment"]:
        chk.fail("experiment", "must be a non-empty string (the MLflow experiment name)")
    seed = chk.coerce(data.get("seed", 0), int, "seed")
    train = chk.dataclass(TrainConfig, data["train"], "train", what="train")
    _check_train(chk, train)
    metrics = data.get("metrics") or []
    if not isinstance(metrics, list):
        chk.fail("metrics", f"must be a list of {{name, params}} blocks, got {metrics!r}")
    configs = {"seed": seed, "train": train,
               "tracking": chk.dataclass(TrackingConfig, data.get("tracking"), "tracking", what="tracking"),
               "energy": chk.dataclass(EnergyConfig, data.get("energy"), "energy", what="energy")}
    blocks = {"dataset": chk.plugin(data["dataset"], "dataset", registries["datasets"]),
              "representation": chk.plugin(data["representation"], "representation",
                                           registries["representations"]),
              "model": chk.plugin(data["model"], "model", registries["models"]),
              "loss": chk.plugin(data["loss"], "loss", registries["losses"], with_weights=True),
              "metrics": tuple(chk.plugin(m, f"metrics.{i}", registries["metrics"]) for i, m in enumerate(metrics))}
    return Spec(path=str(path), experiment=data["experiment"], **configs, **blocks,
                resolved=_resolved(data, configs, blocks), smoke=smoke, grid=bool(data.get("grid")),
                bench=_bench_variants(chk, data.get("bench")))


def _bench_variants(chk: _Checker, bench: Any) -> dict[str, tuple[str, ...]]:
    """``bench:`` as {variant: (set items)}. In the spec a list (so that ``extends:`` replaces it whole) of
    ``{name: NAME, set: [key=value, ...]}``, each ``set`` item as ``--set`` takes it."""
    if bench is None:
        return {}
    if not isinstance(bench, list):
        chk.fail("bench", f"must be a list of {{name, set}} variants, got {bench!r}")
    out = {}
    for i, v in enumerate(bench):
        if not isinstance(v, dict) or set(v) - {"name", "set"} or not isinstance(v.get("name"), str):
            chk.fail(f"bench.{i}", f"must be {{name: NAME, set: [key=value, ...]}}, got {v!r}")
        sets = v.get("set") or []
        if not isinstance(sets, list) or not all(isinstance(x, str) and "=" in x for x in sets):
            chk.fail(f"bench.{i}.set", f"must be a list of key=value strings (as --set takes), got {sets!r}")
        if v["name"] in out:
            chk.fail(f"bench.{i}.name", f"variant '{v['name']}' appears twice")
        out[v["name"]] = tuple(sets)
    return out


def _plain(value: Any) -> Any:
    """A Params / config value as YAML / JSON data: dataclasses to mappings, tuples to lists."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def _block(block: PluginBlock) -> dict:
    out = {"name": block.name, "params": _plain(block.params)}
    if block.weights is not None:  # a loss: every term's weight, its defaults updated by the spec
        out["weights"] = {**block.cls.default_weights, **block.weights}
    return out


def _resolved(data: dict, configs: dict, blocks: dict) -> dict:
    """The spec as it runs: every default a config or plugin supplies filled in (``Params`` fields, a loss's
    ``default_weights``), so params, ``spec.yaml`` and ``spec.sha256`` record the values actually used.
    Idempotent: validating this mapping again gives it back unchanged."""
    filled = {k: _plain(v) for k, v in configs.items()}
    filled.update({k: _block(b) for k, b in blocks.items() if k != "metrics"})
    filled["metrics"] = [_block(m) for m in blocks["metrics"]]
    out = {k: copy.deepcopy(v) for k, v in data.items() if k not in NOT_RUN}
    out.update(filled)
    return out


def _check_train(chk: _Checker, train: TrainConfig) -> None:
    if train.steps < 1:
        chk.fail("train.steps", f"must be >= 1, got {train.steps}")
    if train.batch_size < 1:
        chk.fail("train.batch_size", f"must be >= 1, got {train.batch_size}")
    for name in ("log_every", "eval_every", "sample_every", "checkpoint_every", "num_workers", "eval_samples"):
        if getattr(train, name) < 0:
            chk.fail(f"train.{name}", f"must be >= 0, got {getattr(train, name)}")
    if train.precision not in PRECISIONS:
        chk.fail("train.precision", f"must be one of {', '.join(PRECISIONS)}")
    for name in ("max_examples", "max_minutes"):
        if getattr(train, name) < 0:
            chk.fail(f"train.{name}", f"must be >= 0 (0: no budget), got {getattr(train, name)}")
    for i, c in enumerate(train.until):
        if c.min is None and c.max is None:
            chk.fail(f"train.until.{i}", f"condition on {c.metric!r} has neither min nor max; give the bound it must "
                                         f"reach, e.g. {{metric: {c.metric}, min: 0.8}}")
        if not c.metric.startswith(("eval/", "train/")):
            chk.fail(f"train.until.{i}.metric", f"{c.metric!r} is not a logged key; until: is checked at evaluations, "
                                                f"on eval/<name> keys (or train/<name>)")
    if train.until and not train.eval_every:
        chk.fail("train.until", "is checked at evaluations, but train.eval_every is 0 (only after the last step); "
                                "set train.eval_every")


def load_spec(path: str | Path, registries: Mapping[str, Registry], sets: list[str] = (),
              smoke: bool = False) -> Spec:
    """Resolve and validate a spec file in one call."""
    data, origins = resolve(path, sets, smoke)
    return dataclasses.replace(validate(data, registries, str(path), origins, smoke), sets=tuple(sets))


def flatten(data: Any, prefix: str = "") -> dict[str, str]:
    """The resolved spec as dotted keys -> string values (MLflow params)."""
    out: dict[str, str] = {}
    if isinstance(data, dict):
        for k, v in data.items():
            out.update(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
    elif isinstance(data, list):
        if not data:
            out[prefix] = "[]"
        for i, v in enumerate(data):
            out.update(flatten(v, f"{prefix}.{i}"))
    else:
        out[prefix] = str(data)
    return out
