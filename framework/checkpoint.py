"""Atomic, code-free checkpoints: everything needed to resume a run exactly.

A checkpoint is a ``torch.save`` of plain containers and tensors: the step, the number of data positions
consumed, the resolved spec, the model's module and optimiser states, and the python / numpy / torch RNG
states. It is written to a temporary file in the same folder, flushed and renamed, so a crash or kill
never leaves a half-written file in place of the last good one; a failed write (a full disk above all)
raises :class:`WriteError`, which says why in words, and removes the temporary file. Loading uses
``weights_only=True``: nothing in a checkpoint can execute code.
"""

from __future__ import annotations

import errno
import os
import random
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from framework.errors import CheckpointError

FORMAT = 1
FILENAME = "checkpoint.pt"


def rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]],  # plain types for weights_only loading
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state: dict[str, Any]) -> None:
    version, key, *rest = state["python"]
    random.setstate((version, tuple(key), *rest))
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), *rest))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"][:torch.cuda.device_count()])


class WriteError(CheckpointError):
    """Writing a checkpoint failed; ``reason`` says why in words (e.g. "no space left on /data (12 MiB free)")."""

    def __init__(self, path: Path, reason: str):
        super().__init__(f"{reason} while writing {path}")
        self.path, self.reason = path, reason


# PyTorch's zip writer reports a short write (ENOSPC underneath) as a RuntimeError with one of these texts
_SHORT_WRITE = ("unexpected pos", "file write failed")


def _mount_point(path: Path) -> Path:
    """The mount point of the filesystem that holds ``path`` (an existing folder)."""
    path = path.resolve()
    while path.parent != path and os.stat(path.parent).st_dev == os.stat(path).st_dev:
        path = path.parent
    return path


def _reason(exc: Exception, folder: Path) -> str:
    """Why writing into ``folder`` failed, in words."""
    full = (isinstance(exc, OSError) and exc.errno == errno.ENOSPC) or \
        (isinstance(exc, RuntimeError) and any(t in str(exc) for t in _SHORT_WRITE))
    if not full:
        return f"{type(exc).__name__}: {str(exc)[:300]}"
    free = shutil.disk_usage(folder).free / 2**20
    return f"no space left on {_mount_point(folder)} ({free:.0f} MiB free; the filesystem that holds {folder})"


def save(path: str | Path, state: dict[str, Any]) -> Path:
    """Write ``state`` to ``path`` atomically (temporary file in the same folder, fsync, rename).

    A failed write leaves the previous file at ``path`` untouched and raises :class:`WriteError`.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save({"format": FORMAT, **state}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except (OSError, RuntimeError) as exc:
        Path(tmp).unlink(missing_ok=True)
        raise WriteError(path, _reason(exc, path.parent)) from exc
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no checkpoint there; pass --run RUN_ID of a run that saved one, "
                              f"or the path of a checkpoint.pt")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"{path}: not a readable framework checkpoint ({exc})") from exc
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a framework checkpoint (format {FORMAT} expected)")
    return state
