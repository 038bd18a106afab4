"""Energy per run and per phase in joules, kWh and CO2e: measured where a hardware counter exists, estimated
(and named so) where none does, on every machine.

Sources and their fallback chains (the first that works is used; the run's ``energy.<source>_source`` tag says
which, with the model's constants):

* ``gpu``: NVML's total-energy counter of the run's GPU (mJ since driver load; Volta and newer): measured. A GPU
  without it: NVML power samples integrated over time: estimated. No GPU or no NVML: not measured.
* ``cpu``: RAPL package counters (``/sys/class/powercap/intel-rapl:N/energy_uj``) where readable: measured.
  Else the CPU time of the process tree (this process, its live descendants such as DataLoader workers, and
  the reaped ones) times a power per logical CPU: ``energy.cpu_watts_per_core`` when set, else the CPU
  model's TDP from codecarbon's table (the optional extra ``energy``) shared over the machine's logical CPUs
  as codecarbon's process mode does, else codecarbon's own default for an unknown CPU, 4 W per logical CPU:
  estimated. CPU times unreadable: not measured.
* ``ram``: resident memory of the process tree times ``energy.ram_watts_per_gb``: estimated (no DRAM counter
  is read).

Phases (``train``, ``eval``, ``generation``) are attributed by reading every source at each phase switch: the
energy between two switches belongs to the phase that was active. Power-sampled sources (RAM, a GPU without
an energy counter) are also sampled every ``energy.sample_every_s`` by a background thread while a phase runs.

Metric names carry the kind: ``energy/<phase>_<source>_j`` and ``energy/<source>_kwh`` are measured,
``energy/<phase>_<source>_estimated_j`` and ``energy/<source>_estimated_kwh`` estimated; ``energy/total_kwh``,
``energy/co2e_kg`` (at ``energy.grid_gco2_per_kwh``, or the country's intensity from codecarbon's offline table
when ``energy.country_iso_code`` is set) and ``energy/<phase>_total_j`` sum both, and the tag
``energy.total_estimated_parts`` lists the estimated parts. Phases that generate log J per item and, for audio,
per second of audio.

Each run writes its metrics and tags to ``runs/<run_id>/energy.json``; ``python -m framework energy RUN_ID``
(or ``--last``) prints them as labelled lines (what ``make demo-piano`` ends with).

Deliberately not here: no network (codecarbon's table ships with the package), no power-supply losses or
data-centre PUE, no share of the machine's idle power. A resumed run continues the totals its checkpoint
holds (:meth:`EnergyMeter.state_dict`); what a killed session spent after its last checkpoint is not counted.
"""

from __future__ import annotations

import dataclasses
import glob
import json
import os
import threading
import time
from pathlib import Path
from typing import Callable, Iterable

import torch

from framework.errors import FrameworkError, did_you_mean

J_PER_KWH = 3.6e6
DEFAULT_W_PER_CPU = 4.0  # codecarbon 3.x DEFAULT_POWER_PER_CORE: its W per logical CPU for a CPU not in its table
B_PER_GB = 1024**3  # codecarbon's B_TO_GB
SUMMARY_FILE = "energy.json"  # written into the run's folder: `python -m framework energy` reads it back


# ------------------------------------------------------------------------------------------- readers
class _Counter:
    """A cumulative hardware energy counter in joules (measured). Counts from its first good reading, so a
    counter that is unreadable at first (or for a while) loses no energy once it reads; handles the wrap of
    RAPL's counter at ``wrap`` joules."""

    def __init__(self, read: Callable[[], float], wrap: float | None = None):
        self._read, self._wrap = read, wrap
        self._last = self._try()

    def _try(self) -> float | None:
        try:
            return float(self._read())
        except Exception:  # OSError, ValueError, NVMLError: a reading missed, not a failed run
            return None

    def delta(self) -> float:
        now = self._try()
        if now is None:
            return 0.0
        last, self._last = self._last, now
        if last is None:
            return 0.0
        d = now - last
        if d < 0 and self._wrap:
            d += self._wrap
        return max(d, 0.0)


class _Running:
    """Several counters read as one (the CPU packages of a multi-socket machine)."""

    def __init__(self, counters: list[_Counter]):
        self.counters = counters

    def delta(self) -> float:
        return sum(c.delta() for c in self.counters)


class _CpuTime:
    """CPU seconds of a process tree times a power per logical CPU (estimated). Only a new high of the CPU
    time counts: a child that has exited but is not yet reaped drops out of the tree for a moment and comes
    back in its parent's children times."""

    def __init__(self, read_cpu_s: Callable[[], float], watts_per_cpu: float):
        self._read, self.watts = read_cpu_s, watts_per_cpu
        self._high = read_cpu_s()

    def delta(self) -> float:
        now = self._read()
        d = max(now - self._high, 0.0)
        self._high = max(self._high, now)
        return d * self.watts


class _PowerIntegral:
    """Power samples in watts integrated over time by trapezoids (estimated). ``sample`` is also called from
    the sampler thread; a failed reading is skipped, and the next good one spans the gap."""

    def __init__(self, read_watts: Callable[[], float], clock: Callable[[], float] = time.monotonic):
        self._read, self._clock, self._lock = read_watts, clock, threading.Lock()
        self._t: float | None = None
        self._w = 0.0
        self._joules = 0.0
        self.sample()

    def sample(self) -> None:
        try:
            w = float(self._read())
        except Exception:  # a process that vanished, an NVML hiccup: skip this sample
            return
        with self._lock:
            t = self._clock()
            if self._t is not None:
                self._joules += (t - self._t) * (w + self._w) / 2
            self._t, self._w = t, w

    def delta(self) -> float:
        self.sample()
        with self._lock:
            joules, self._joules = self._joules, 0.0
        return joules


@dataclasses.dataclass
class Source:
    """One energy source: ``reader`` None means not measured, and ``description`` says why."""

    name: str  # gpu, cpu, ram
    reader: _Counter | _CpuTime | _PowerIntegral | None
    estimated: bool
    description: str

    @property
    def key(self) -> str:
        return f"{self.name}_estimated" if self.estimated else self.name

    @property
    def tag(self) -> str:
        kind = "not measured" if self.reader is None else "estimated" if self.estimated else "measured"
        return f"{kind}: {self.description}"


# ------------------------------------------------------------------------------------- process tree
def _tree(proc):
    import psutil

    try:
        return [proc, *proc.children(recursive=True)]
    except psutil.Error:
        return [proc]


def process_tree_cpu_s(proc=None) -> float:
    """User + system CPU seconds of ``proc`` (default: this process) and its descendants, live and reaped."""
    import psutil

    total = 0.0
    for p in _tree(proc or psutil.Process()):
        try:
            t = p.cpu_times()
        except psutil.Error:  # exited between listing and reading: its time reaches its parent when reaped
            continue
        total += t.user + t.system + t.children_user + t.children_system
    return total


def process_tree_rss_gb(proc=None) -> float:
    """Resident memory of ``proc`` and its live descendants in GB (pages shared with forked workers count
    once per process, as in codecarbon)."""
    import psutil

    total = 0
    for p in _tree(proc or psutil.Process()):
        try:
            total += p.memory_info().rss
        except psutil.Error:
            continue
    return total / B_PER_GB


# ------------------------------------------------------------------------------------------ sources
def cpu_model() -> str:
    """The CPU's model name as the OS reports it (Linux: /proc/cpuinfo), else ``platform.processor()``."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or "unknown CPU"


def codecarbon_watts_per_cpu(model: str) -> tuple[float | None, str]:
    """(W per logical CPU, how) from codecarbon's TDP table: the model's TDP times the sockets over the logical
    CPUs, as codecarbon's process tracking shares it; (None, why) when codecarbon is not installed or its
    fuzzy match finds no single entry for the model."""
    try:
        import codecarbon
        from codecarbon.core.cpu import TDP
        from codecarbon.core.util import count_physical_cpus
    except ImportError:
        return None, "codecarbon, whose TDP table is used, is not installed: pip install 'mp3net-framework[energy]'"
    import psutil

    table = f"TDP table of codecarbon {codecarbon.__version__}"
    try:  # the lookup alone, not TDP()'s own detection; a private method, so a codecarbon change must not crash
        tdp = TDP.__new__(TDP)._get_cpu_power_from_registry(model)
    except Exception as exc:
        return None, f"the {table} could not be read ({type(exc).__name__}: {exc})"
    if not tdp:
        return None, f"'{model}' is not in the {table}"
    sockets, cpus = count_physical_cpus(), psutil.cpu_count() or 1
    return tdp * sockets / cpus, f"{model}, TDP {tdp:g} W x {sockets} socket(s) / {cpus} logical CPUs, {table}"


@dataclasses.dataclass(frozen=True)
class EnergyConfig:
    # Grid carbon intensity for CO2e. Default: the 2023 world average of electricity generation, 480 g/kWh
    # (Ember, Global Electricity Review 2024). Set your own grid's value for a real estimate.
    grid_gco2_per_kwh: float = 480.0
    # W per logical CPU for the CPU-time estimate where no RAPL counter is readable. None: the CPU model's TDP
    # from codecarbon's table (extra `energy`), else codecarbon's default, 4 W (framework/energy.py).
    cpu_watts_per_core: float | None = None
    # Power of resident memory: 3 W per 8 GB, codecarbon's RAM model before 3.0 (its 3.x model charges whole
    # DIMMs, at least 10 W, to any process).
    ram_watts_per_gb: float = 0.375
    sample_every_s: float = 1.0  # how often resident memory (and a GPU without an energy counter) is sampled
    # ISO 3166 alpha-3 code (FRA, USA, ...): the country's grid intensity from codecarbon's offline table
    # (extra `energy`) replaces grid_gco2_per_kwh.
    country_iso_code: str | None = None

    def __post_init__(self):
        if self.sample_every_s <= 0:
            raise ValueError(f"energy.sample_every_s must be > 0 seconds, got {self.sample_every_s}")
        for name in ("grid_gco2_per_kwh", "cpu_watts_per_core", "ram_watts_per_gb"):
            if (getattr(self, name) or 0) < 0:
                raise ValueError(f"energy.{name} must be >= 0, got {getattr(self, name)}")
        if self.country_iso_code is not None:
            country_intensity(self.country_iso_code)  # fails now, not at the run's start, on a bad code


def country_intensity(code: str) -> tuple[float, str]:
    """(g CO2e per kWh, where from) of an ISO 3166 alpha-3 country's electricity, from codecarbon's offline
    energy-mix table. ValueError (a spec error) when codecarbon is missing or does not know the code."""
    try:
        import codecarbon
        from codecarbon.input import DataSource
    except ImportError:
        raise ValueError("energy.country_iso_code needs codecarbon's offline energy-mix table: pip install "
                         "'mp3net-framework[energy]', or set energy.grid_gco2_per_kwh instead") from None
    mix = DataSource().get_global_energy_mix_data()
    entry = mix.get(code.upper())
    if entry is None:
        raise ValueError(f"energy.country_iso_code: unknown country '{code}'; valid: ISO 3166 alpha-3 codes such as "
                         f"USA, FRA, DEU ({len(mix)} in codecarbon's table){did_you_mean(code.upper(), mix)}")
    return float(entry["carbon_intensity"]), (f"{entry['country_name']} {entry['year']}, offline energy mix of "
                                              f"codecarbon {codecarbon.__version__} (energy.country_iso_code)")


def grid_intensity(config) -> tuple[float, str]:
    """(g CO2e per kWh, where from): the country's, when ``energy.country_iso_code`` is set, else the spec's."""
    if config.country_iso_code:
        return country_intensity(config.country_iso_code)
    return config.grid_gco2_per_kwh, "energy.grid_gco2_per_kwh"


def _rapl_counters(root: str) -> list[_Counter]:
    counters = []
    for p in sorted(p for p in glob.glob(f"{root}/intel-rapl:*") if Path(p).name.count(":") == 1):
        energy = Path(p, "energy_uj")
        try:
            wrap = float(Path(p, "max_energy_range_uj").read_text()) / 1e6
            float(energy.read_text())
        except (OSError, ValueError):
            continue
        counters.append(_Counter(lambda f=energy: float(f.read_text()) / 1e6, wrap))
    return counters


def cpu_source(config, rapl_root: str = "/sys/class/powercap", model: str | None = None,
               table: Callable[[str], tuple[float | None, str]] = codecarbon_watts_per_cpu,
               read_cpu_s: Callable[[], float] = process_tree_cpu_s) -> Source:
    """RAPL (measured), else CPU time x W per logical CPU (estimated), else not measured."""
    counters = _rapl_counters(rapl_root)
    if counters:
        return Source("cpu", _Running(counters), False, f"RAPL package counters ({len(counters)} package(s))")
    try:
        read_cpu_s()
    except Exception as exc:  # psutil.AccessDenied in a sandbox, an unsupported platform
        return Source("cpu", None, True, f"no RAPL counter and CPU times unreadable ({type(exc).__name__}: {exc})")
    model = model or cpu_model()
    if config.cpu_watts_per_core is not None:
        watts, how = config.cpu_watts_per_core, f"{model}, energy.cpu_watts_per_core"
    else:
        watts, how = table(model)
        if watts is None:
            watts, how = DEFAULT_W_PER_CPU, f"{how}: codecarbon's default for an unknown CPU"
    return Source("cpu", _CpuTime(read_cpu_s, watts), True,
                  f"CPU time of the process tree x {watts:.3g} W per logical CPU ({how})")


def ram_source(config, read_gb: Callable[[], float] = process_tree_rss_gb,
               clock: Callable[[], float] = time.monotonic) -> Source:
    w = config.ram_watts_per_gb
    return Source("ram", _PowerIntegral(lambda: read_gb() * w, clock), True,
                  f"resident memory of the process tree x {w:g} W/GB (energy.ram_watts_per_gb; codecarbon's "
                  f"model before 3.0: 3 W per 8 GB), sampled every {config.sample_every_s:g} s")


def gpu_source(device: torch.device) -> Source:
    """NVML energy counter (measured), else NVML power samples (estimated), else not measured."""
    if device.type != "cuda":
        return Source("gpu", None, False, "no GPU in use")
    try:
        import pynvml

        pynvml.nvmlInit()
        index = device.index if device.index is not None else torch.cuda.current_device()
        handle = pynvml.nvmlDeviceGetHandleByIndex(index)
        name = f"GPU {index} ({pynvml.nvmlDeviceGetName(handle)})"
    except Exception as exc:  # no driver, CUDA_VISIBLE_DEVICES remapping, ...
        return Source("gpu", None, False, f"NVML unavailable ({type(exc).__name__}: {exc})")
    try:
        pynvml.nvmlDeviceGetTotalEnergyConsumption(handle)
        counter = _Counter(lambda: pynvml.nvmlDeviceGetTotalEnergyConsumption(handle) / 1000.0)
        return Source("gpu", counter, False, f"NVML total energy counter, {name}")
    except Exception:  # pre-Volta: no energy counter, maybe a power reading
        pass
    try:
        pynvml.nvmlDeviceGetPowerUsage(handle)
    except Exception as exc:
        return Source("gpu", None, False, f"{name} has neither an NVML energy counter nor a power reading "
                                          f"({type(exc).__name__})")
    return Source("gpu", _PowerIntegral(lambda: pynvml.nvmlDeviceGetPowerUsage(handle) / 1000.0), True,
                  f"NVML power samples integrated over time, {name} (no energy counter)")


def seconds_per_item(info) -> float | None:
    """Seconds of audio in one item of a dataset's ``DataInfo`` (None for images)."""
    return info.shape[-1] / info.sample_rate if info.kind == "audio" and info.sample_rate else None


def default_sources(device: torch.device, config) -> list[Source]:
    return [gpu_source(device), cpu_source(config), ram_source(config)]


# -------------------------------------------------------------------------------------------- meter
class _Sampler:
    """A daemon thread that samples the power-integrating readers every ``every_s`` while a phase runs."""

    def __init__(self, readers: list[_PowerIntegral], every_s: float):
        self.readers, self.every_s = readers, every_s
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    def start(self) -> None:
        if self.readers and self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._loop, name="energy-sampler", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None

    def _loop(self) -> None:
        while not self._stop.wait(self.every_s):
            for r in self.readers:
                r.sample()


class EnergyMeter:
    """Accumulates joules per (phase, source) and the items generated per phase."""

    def __init__(self, device: torch.device, config, seconds_per_item: float | None = None,
                 sources: list[Source] | None = None):
        self.device, self.seconds_per_item = device, seconds_per_item
        self.grid, self.grid_source = grid_intensity(config)
        self.sources = default_sources(device, config) if sources is None else sources
        self.joules: dict[tuple[str, str], float] = {}
        self.items: dict[str, int] = {}
        self.phase: str | None = None
        self._sampler = _Sampler([s.reader for s in self.sources if isinstance(s.reader, _PowerIntegral)],
                                 config.sample_every_s)

    def switch(self, phase: str | None) -> None:
        """Attribute the energy since the last switch to the current phase, then enter ``phase``."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)  # queued kernels belong to the phase that launched them
        readings = {s.key: s.reader.delta() for s in self.sources if s.reader is not None}
        if self.phase is not None:
            for key, joules in readings.items():
                self.joules[(self.phase, key)] = self.joules.get((self.phase, key), 0.0) + joules
        self.phase = phase
        self._sampler.start() if phase is not None else self._sampler.stop()

    def generated(self, n: int) -> None:
        """Count ``n`` items generated in the current phase (J per item and per second of audio)."""
        if self.phase is not None:
            self.items[self.phase] = self.items.get(self.phase, 0) + n

    @property
    def generated_items(self) -> int:
        """Items generated in every phase so far (``perf/generated_items``)."""
        return sum(self.items.values())

    def state_dict(self) -> dict:
        """What a checkpoint keeps, so a resumed run's totals include its earlier sessions (attribute the running
        phase first: :meth:`switch` to the same phase)."""
        return {"joules": [[phase, key, j] for (phase, key), j in self.joules.items()], "items": dict(self.items)}

    def load_state_dict(self, state: dict) -> None:
        """Continue from an earlier session's totals (a kill -9'd session's energy after its last checkpoint is
        not counted: those steps run again, and count then)."""
        self.joules = {(phase, key): float(j) for phase, key, j in state["joules"]}
        self.items = {k: int(v) for k, v in state["items"].items()}

    def tags(self) -> dict[str, str]:
        estimated = sorted(s.name for s in self.sources if s.reader is not None and s.estimated)
        return {**{f"energy.{s.name}_source": s.tag for s in self.sources},
                "energy.total_estimated_parts": ", ".join(estimated) or "none",
                "energy.grid_gco2_per_kwh": str(self.grid), "energy.grid_source": self.grid_source}

    def metrics(self) -> dict[str, float]:
        """Per phase and source J, per source kWh, totals, CO2e, J per item and per second of audio."""
        out: dict[str, float] = {}
        by_source: dict[str, float] = {}
        by_phase: dict[str, float] = {}
        for (phase, key), joules in sorted(self.joules.items()):
            out[f"energy/{phase}_{key}_j"] = joules
            by_source[key] = by_source.get(key, 0.0) + joules
            by_phase[phase] = by_phase.get(phase, 0.0) + joules
        out.update({f"energy/{key}_kwh": j / J_PER_KWH for key, j in by_source.items()})
        for phase, joules in by_phase.items():
            out[f"energy/{phase}_total_j"] = joules
            out.update(self._per_item(phase, joules))
        if by_source:
            total = sum(by_source.values()) / J_PER_KWH
            out["energy/total_kwh"], out["energy/co2e_kg"] = total, total * self.grid / 1000.0
        return out

    def _per_item(self, phase: str, joules: float) -> dict[str, float]:
        n = self.items.get(phase, 0)
        if not n:
            return {}
        out = {f"energy/{phase}_j_per_item": joules / n}
        if self.seconds_per_item:
            out[f"energy/{phase}_j_per_audio_s"] = joules / (n * self.seconds_per_item)
        return out

    def write(self, folder: Path) -> Path:
        """The metrics and tags as ``folder/energy.json`` (what ``python -m framework energy`` prints)."""
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / SUMMARY_FILE
        path.write_text(json.dumps({"metrics": self.metrics(), "tags": self.tags()}, indent=1))
        return path


# ------------------------------------------------------------------------------------------ summary
def kind_label(keys: Iterable[str]) -> str:
    """'measured', 'estimated' or 'partly estimated (cpu, ram)' for source keys such as ``gpu``, ``cpu_estimated``."""
    keys = list(keys)
    est = sorted(k.removesuffix("_estimated") for k in keys if k.endswith("_estimated"))
    if not est:
        return "measured"
    return "estimated" if len(est) == len(keys) else f"partly estimated ({', '.join(est)})"


def kwh_parts(metrics: dict[str, float]) -> dict[str, float]:
    """kWh per source key (``gpu``, ``cpu_estimated``, ...) of a run's metrics; ``energy/total_kwh`` is their
    sum, not a part."""
    return {k.removeprefix("energy/").removesuffix("_kwh"): v for k, v in metrics.items()
            if k.startswith("energy/") and k.endswith("_kwh") and k != "energy/total_kwh"}


def _phase_parts(metrics: dict[str, float], phase: str) -> list[str]:
    """The source keys of ``phase``'s per-source metrics (``energy/train_cpu_estimated_j`` -> ``cpu_estimated``)."""
    prefix = f"energy/{phase}_"
    keys = [k.removeprefix(prefix).removesuffix("_j") for k in metrics if k.startswith(prefix) and k.endswith("_j")]
    return [k for k in keys if k != "total"]


def summary(metrics: dict[str, float], tags: dict[str, str]) -> list[str]:
    """Human lines: training energy, generation J per second of audio (or per item), CO2e, each labelled."""
    lines = ["energy (measured: from a hardware counter; estimated: from a model, see the sources below):"]
    if "energy/train_total_j" in metrics:
        j = metrics["energy/train_total_j"]
        lines.append(f"  training:   {j:.4g} J = {j / J_PER_KWH:.3g} kWh, {kind_label(_phase_parts(metrics, 'train'))}")
    for phase in ("generation", "eval"):
        per, unit = metrics.get(f"energy/{phase}_j_per_audio_s"), "second of audio"
        if per is None:
            per, unit = metrics.get(f"energy/{phase}_j_per_item"), "item"
        if per is not None:
            lines.append(f"  {phase + ':':<11} {per:.4g} J per generated {unit}, "
                         f"{kind_label(_phase_parts(metrics, phase))}")
    if "energy/co2e_kg" in metrics:
        grid, where = tags.get("energy.grid_gco2_per_kwh"), tags.get("energy.grid_source", "energy.grid_gco2_per_kwh")
        lines.append(f"  CO2e:       {metrics['energy/co2e_kg'] * 1000:.4g} g at {grid} g/kWh ({where}), "
                     f"{kind_label(kwh_parts(metrics))}")
    sources = sorted((k.removeprefix("energy.").removesuffix("_source"), v) for k, v in tags.items()
                     if k.startswith("energy.") and k.endswith("_source"))
    return lines + [f"  source {name}: {how}" for name, how in sources]


def summary_path(root: Path, run_id: str | None, last: bool) -> Path:
    if bool(run_id) == last:
        raise FrameworkError("give a run id or --last (python -m framework energy RUN_ID)")
    if run_id:
        path = root / run_id / SUMMARY_FILE
        if not path.is_file():
            raise FrameworkError(f"{path}: no energy record; check the run id and FRAMEWORK_RUNS_DIR "
                                 f"(runs record it when they end)")
        return path
    found = sorted(root.glob(f"*/{SUMMARY_FILE}"), key=os.path.getmtime)
    if not found:
        raise FrameworkError(f"{root}: no run has an energy record yet; run one (python -m framework run SPEC) "
                             f"or set FRAMEWORK_RUNS_DIR")
    return found[-1]

