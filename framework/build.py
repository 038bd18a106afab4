"""From a validated :class:`framework.spec.Spec` to built components.

Explicit builder functions, each constructing one plugin as ``cls(params, **injected)`` with the keyword
arguments documented in :mod:`framework.protocols`. The order matters: the dataset defines the data
shape, the representation is built for it, the model for the representation.
"""

from __future__ import annotations

import dataclasses

from framework.errors import DataError, FrameworkError
from framework.protocols import DataInfo, Dataset, Loss, Metric, Model, Representation
from framework.runtime import Runtime
from framework.spec import PluginBlock, Spec


@dataclasses.dataclass
class Components:
    dataset: Dataset
    representation: Representation
    loss: Loss
    model: Model
    metrics: list[Metric]


def _construct(block: PluginBlock, what: str, **injected):
    try:
        return block.cls(block.params, **injected)
    except FrameworkError:
        raise
    except (ValueError, TypeError) as exc:
        raise FrameworkError(f"{what} '{block.name}': {exc}") from exc


def ensure_prepared(block: PluginBlock, log=print) -> None:
    """Prepare the dataset's data when it is missing or out of date (``Dataset.is_prepared`` is false;
    ``python -m framework prepare`` does it explicitly)."""
    if not block.cls.is_prepared(block.params):
        log(f"dataset '{block.name}': data not prepared yet, or out of date (other params, or changed source "
            f"files); preparing now (the same as `python -m framework prepare SPEC`)")
        log(block.cls.prepare(block.params))


def build_dataset(spec: Spec, split: str, use: str = "training") -> Dataset:
    """The dataset's ``split``; a missing or empty split is a DataError naming the dataset, the split and
    ``use`` (what the run needs it for, e.g. "train.eval_split, for the metrics")."""
    where = f"dataset '{spec.dataset.name}' split '{split}' ({use})"
    hint = "" if split == "train" else (f"; or set train.eval_split to a split that has data (e.g. train), "
                                        f"or metrics: [] to train without evaluation")
    try:
        ds = _construct(spec.dataset, "dataset", split=split)
    except DataError as exc:
        raise DataError(f"{where}: {exc}{hint}") from exc
    if len(ds) == 0:
        raise DataError(f"{where} is empty; check dataset.params{hint}")
    return ds


def build_model(spec: Spec, runtime: Runtime, info: DataInfo) -> tuple[Representation, Loss, Model]:
    """The representation, loss and model for data described by ``info``, on ``runtime.device``: what ``run``,
    ``generate`` (from a checkpoint's stored spec and data description) and ``bench`` build alike."""
    representation = _construct(spec.representation, "representation", data_info=info).to(runtime.device)
    loss = _construct(spec.loss, "loss", weights=spec.loss.weights)
    model = _construct(spec.model, "model", representation=representation, loss=loss, data_info=info,
                       runtime=runtime).to(runtime.device)
    return representation, loss, model


def build(spec: Spec, runtime: Runtime, dataset: Dataset | None = None) -> Components:
    dataset = dataset or build_dataset(spec, "train")
    info = dataset.info
    representation, loss, model = build_model(spec, runtime, info)
    metrics = [_construct(m, "metric", representation=representation, data_info=info, runtime=runtime)
               for m in spec.metrics]
    return Components(dataset, representation, loss, model, metrics)
