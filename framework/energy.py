"""Energy per run and per phase, from hardware counters only.

GPU: NVML's total-energy counter (``nvmlDeviceGetTotalEnergyConsumption``, millijoules since driver
load; Volta and newer) of the run's GPU. CPU: Intel RAPL package counters
(``/sys/class/powercap/intel-rapl:N/energy_uj``) where the kernel lets us read them. Where a counter is
missing, the meter says so and why; it never estimates a number from nominal power.

Phases (``train``, ``eval``, ``generation``) are attributed by reading the counters at every phase
switch: the energy between two switches belongs to the phase that was active.
"""

from __future__ import annotations

import glob
from pathlib import Path
from typing import Callable

import torch

J_PER_KWH = 3.6e6


class _Counter:
    """A monotonic energy counter in joules (handles RAPL wrap-around)."""

    def __init__(self, read: Callable[[], float], wrap: float | None = None):
        self._read, self._wrap = read, wrap
        self._last = read()

    def delta(self) -> float:
        now = self._read()
        d = now - self._last
        if d < 0 and self._wrap:
            d += self._wrap
        self._last = now
        return max(d, 0.0)


def _gpu_counter(device: torch.device) -> tuple[_Counter | None, str]:
    if device.type != "cuda":
        return None, "not measured: no GPU in use"
    try:
        import pynvml

        pynvml.nvmlInit()
        index = device.index if device.index is not None else torch.cuda.current_device()
        handle = pynvml.nvmlDeviceGetHandleByIndex(index)
        counter = _Counter(lambda: pynvml.nvmlDeviceGetTotalEnergyConsumption(handle) / 1000.0)
        return counter, f"NVML total energy counter, GPU {index} ({pynvml.nvmlDeviceGetName(handle)})"
    except Exception as exc:  # no driver, no counter on this GPU, CUDA_VISIBLE_DEVICES remapping, ...
        return None, f"not measured: NVML energy counter unavailable ({type(exc).__name__}: {exc})"


def _cpu_counters() -> tuple[list[_Counter], str]:
    paths = sorted(p for p in glob.glob("/sys/class/powercap/intel-rapl:*") if p.count(":") == 1)
    counters = []
    for p in paths:
        try:
            wrap = float(Path(p, "max_energy_range_uj").read_text()) / 1e6
            energy = Path(p, "energy_uj")
            counters.append(_Counter(lambda f=energy: float(f.read_text()) / 1e6, wrap))
        except (OSError, ValueError):
            continue
    if counters:
        return counters, f"Intel RAPL package counters ({len(counters)} package(s))"
    return [], "not measured: RAPL counters absent or unreadable (needs Intel/AMD RAPL and read permission)"


class EnergyMeter:
    """Accumulates joules per phase and source (``gpu``, ``cpu``)."""

    def __init__(self, device: torch.device, grid_gco2_per_kwh: float):
        self.device, self.grid = device, grid_gco2_per_kwh
        self.gpu, self.gpu_source = _gpu_counter(device)
        self.cpu, self.cpu_source = _cpu_counters()
        self.joules: dict[tuple[str, str], float] = {}
        self.phase: str | None = None

    def switch(self, phase: str | None) -> None:
        """Attribute the energy since the last switch to the current phase, then enter ``phase``."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)  # queued kernels belong to the phase that launched them
        readings = {"gpu": self.gpu.delta() if self.gpu else None,
                    "cpu": sum(c.delta() for c in self.cpu) if self.cpu else None}
        if self.phase is not None:
            for source, joules in readings.items():
                if joules is not None:
                    key = (self.phase, source)
                    self.joules[key] = self.joules.get(key, 0.0) + joules
        self.phase = phase

    def tags(self) -> dict[str, str]:
        return {"energy.gpu_source": self.gpu_source, "energy.cpu_source": self.cpu_source,
                "energy.grid_gco2_per_kwh": str(self.grid)}

    def metrics(self) -> dict[str, float]:
        """``energy/<phase>_<source>_j`` per phase, ``energy/<source>_kwh`` and ``energy/co2e_kg`` totals.
        Sources without a counter are absent (see :meth:`tags` for why)."""
        out: dict[str, float] = {}
        totals: dict[str, float] = {}
        for (phase, source), joules in sorted(self.joules.items()):
            out[f"energy/{phase}_{source}_j"] = joules
            totals[source] = totals.get(source, 0.0) + joules
        for source, joules in totals.items():
            out[f"energy/{source}_kwh"] = joules / J_PER_KWH
        if totals:
            out["energy/co2e_kg"] = sum(totals.values()) / J_PER_KWH * self.grid / 1000.0
        return out
