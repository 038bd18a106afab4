"""Runtime: the device, precision, compilation and process-group facts a model needs.

The runner builds one :class:`Runtime` and injects it into models and metrics. Plugins use it instead of
deciding devices or precision themselves (house habit 8: one owner per side effect). Also here, for every
command that runs models (run, generate, bench): :func:`choose_device`, :func:`seed_everything` and
:func:`runs_dir`, the local folder of per-run files.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import random
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from torch import nn

from framework.errors import SpecError

PRECISIONS = ("auto", "fp32", "bf16", "fp16")


@dataclasses.dataclass
class Runtime:
    """device: where tensors live; precision: ``fp32``, ``bf16`` or ``fp16`` autocast for the networks;
    compile: wrap networks in ``torch.compile``; rank/world_size: the torchrun process group (1 process
    when not distributed)."""

    device: torch.device = dataclasses.field(default_factory=lambda: torch.device("cpu"))
    precision: str = "fp32"
    compile: bool = False
    rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def autocast_dtype(self) -> torch.dtype | None:
        return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.precision)

    def autocast(self) -> contextlib.AbstractContextManager:
        """Autocast context for network forward passes (a no-op in fp32)."""
        dtype = self.autocast_dtype
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=dtype)

    def maybe_compile(self, module: nn.Module) -> nn.Module:
        """``torch.compile(module)`` when the spec asks for it, else the module unchanged."""
        return torch.compile(module) if self.compile else module  # type: ignore[return-value]

    def sync_grads(self, *modules: nn.Module) -> None:
        """Average parameter gradients over the process group (no-op in a single process).

        Explicit all-reduce rather than DistributedDataParallel: GAN steps call several networks per
        step and take gradients of gradients (the gradient penalty), which DDP's reducer hooks do not
        follow. Call it after ``backward`` and before ``optimizer.step``.
        """
        if self.world_size == 1:
            return
        import torch.distributed as dist

        grads = [p.grad for m in modules for p in m.parameters() if p.grad is not None]
        if not grads:
            return
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat)
        flat /= self.world_size
        offset = 0
        for g in grads:
            g.copy_(flat[offset:offset + g.numel()].view_as(g))
            offset += g.numel()

    def generator(self, seed: int) -> torch.Generator:
        """A torch.Generator on this device, seeded (for reproducible sampling outside the global RNG)."""
        g = torch.Generator(device=self.device)
        g.manual_seed(seed)
        return g


def resolve_precision(precision: str, device: torch.device) -> str:
    """``auto`` is bf16 on CUDA and fp32 elsewhere (bf16 autocast on CPU is slower than fp32)."""
    if precision == "auto":
        return "bf16" if device.type == "cuda" else "fp32"
    return precision


@contextlib.contextmanager
def no_autocast() -> Iterator[None]:
    """Leave autocast inside a block that must stay in full precision (e.g. the psychoacoustic model)."""
    device_type = "cuda" if torch.cuda.is_available() else "cpu"
    with torch.autocast(device_type=device_type, enabled=False):
        yield


def describe(runtime: Runtime) -> dict[str, Any]:
    d = dataclasses.asdict(runtime)
    d["device"] = str(runtime.device)
    return d


def runs_dir() -> Path:
    """Local folder of per-run files (checkpoints, samples): ``FRAMEWORK_RUNS_DIR`` or ``./runs``."""
    return Path(os.environ.get("FRAMEWORK_RUNS_DIR", "runs"))


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def choose_device(requested: str) -> torch.device:
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(requested)
    except RuntimeError:
        raise SpecError(f"unknown device '{requested}'; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SpecError(f"device '{requested}' requested but CUDA is not available; use --device cpu")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise SpecError(f"device '{requested}': this machine has {torch.cuda.device_count()} CUDA device(s), "
                        f"cuda:0 .. cuda:{torch.cuda.device_count() - 1}")
    return device
