"""``python -m framework generate``: samples from a trained run or checkpoint, batched, with a progress bar.

The checkpoint carries the resolved spec and the data description, so generation needs neither the
original spec file nor the training data: the representation and model are rebuilt from the stored spec
and loaded with the stored weights. Items are written by :mod:`framework.artifacts` (wav + spectrogram PNG
for audio, an image grid for images). Generation energy is metered like a run's (:mod:`framework.energy`: measured
where a counter exists, else estimated and labelled so) and printed per sample and per second of audio.

``--run ID`` uses the run's checkpoint in the runs folder (``FRAMEWORK_RUNS_DIR``, default ``./runs``) when
there is one, else downloads the checkpoint logged to the run into the checkpoint cache,
``$FRAMEWORK_CACHE_DIR/checkpoints/<run id>/`` (default ``~/.cache/framework``, or ``$XDG_CACHE_HOME/framework``),
where it is reused until the run ends again (a resumed run); it never writes into the working folder. It
prints which checkpoint, and which store, it used.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from tqdm.auto import tqdm

from framework import artifacts, checkpoint
from framework.build import build_model
from framework.energy import EnergyMeter, summary
from framework.errors import CheckpointError, FrameworkError
from framework.protocols import DataInfo
from framework.plugin_manager import collect_registries
from framework.runner import find_checkpoint
from framework.runtime import Runtime, choose_device, resolve_precision, runs_dir, seed_everything
from framework.spec import validate
from framework.tracking import tracking_uri as resolve_uri


def cache_dir() -> Path:
    """Where downloaded checkpoints are kept: ``$FRAMEWORK_CACHE_DIR``, else ``$XDG_CACHE_HOME/framework``, else
    ``~/.cache/framework``."""
    xdg = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(os.environ.get("FRAMEWORK_CACHE_DIR") or Path(xdg) / "framework")


def load_model(state: dict, device: str | None, *, weights: bool = True):
    """(model, representation, data_info, spec, runtime) rebuilt from a loaded checkpoint; ``weights=False``
    keeps the model as initialised from the spec's seed (the run's untrained model)."""
    if "data_info" not in state:
        raise CheckpointError("checkpoint has no data description (written by an older version); re-save it")
    spec = validate(state["spec"], collect_registries(), "checkpoint spec")
    dev = choose_device(device or "auto")
    runtime = Runtime(device=dev, precision=resolve_precision(spec.train.precision, dev))
    info = DataInfo(**state["data_info"])
    if not weights:
        seed_everything(spec.seed)  # as the runner does before it builds the components
    rep, _, model = build_model(spec, runtime, info)
    if weights:
        model.load_checkpoint_state(state["model"])
    model.eval()
    return model, rep, info, spec, runtime


def generate(*, run_id: str | None, checkpoint_path: str | None, n: int, seconds: float | None,
             truncation: float | None, out: Path, device: str | None, batch: int, tracking_uri: str | None,
             seed: int = 0, label: int | None = None) -> list[Path]:
    """``label``: the class every sample is drawn for (class-conditional models only; None: uniform classes)."""
    if n < 1 or batch < 1:
        raise FrameworkError(f"--n and --batch must be >= 1 (got {n}, {batch})")
    if checkpoint_path:
        path = Path(checkpoint_path)
        print(f"checkpoint {path}")
    else:
        path = find_checkpoint(run_id, tracking_uri, cache_dir() / "checkpoints" / run_id)
        local = path == runs_dir() / run_id / checkpoint.FILENAME
        print(f"run {run_id}: checkpoint {path} (" + ("in the runs folder" if local else
                                                      f"logged to the store {resolve_uri(tracking_uri)}") + ")")
    model, rep, info, spec, runtime = load_model(checkpoint.load(path), device)
    if label is not None and not 0 <= label < model.num_classes:
        raise FrameworkError(f"--label {label}: this model is unconditional (model.params.num_classes is 0)"
                             if not model.num_classes else
                             f"--label {label}: this model draws classes 0 .. {model.num_classes - 1}")
    length = None
    if seconds is not None:
        if info.kind != "audio":
            raise FrameworkError("--seconds applies to audio models only")
        length = int(round(seconds * info.sample_rate))
        if length > info.shape[-1]:
            raise FrameworkError(f"--seconds {seconds}: this model generates {info.shape[-1] / info.sample_rate:.2f} s "
                                 f"clips; ask for that or less")
    seed_everything(seed)
    clip_s = (length or info.shape[-1]) / info.sample_rate if info.kind == "audio" else None
    meter = EnergyMeter(runtime.device, spec.energy, clip_s)
    meter.switch("generation")
    paths, done = [], 0
    with torch.no_grad(), tqdm(total=n, unit="sample", desc="generate") as bar:
        while done < n:
            k = min(batch, n - done)
            kw = {} if label is None else {"labels": torch.full((k,), label, device=runtime.device)}
            x = rep.decode(model.sample(k, truncation=truncation, **kw).float())  # (k, *data.shape)
            if length is not None:
                x = x[..., :length]
            labels = [f"{done + i:04d}" for i in range(k)]
            paths += artifacts.save_samples(x, info, out, "sample" if info.kind == "audio" else f"grid{done:04d}", labels)
            done += k
            meter.generated(k)
            bar.update(k)
    meter.switch(None)
    metrics = meter.metrics()
    print("\n".join(summary(metrics, meter.tags())))
    if clip_s and "energy/generation_j_per_item" in metrics:  # per clip of the model's length (MP3net: 95 s)
        print(f"  per sample ({clip_s:.4g} s, {n} generated): {metrics['energy/generation_j_per_item']:.4g} J")
    return paths
