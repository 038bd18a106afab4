"""The training loop: the one owner of devices, seeds, the step loop, cadence, checkpoints and signals.

One call of :func:`run` = one MLflow run. Per step: draw this rank's batch ``(B, *data.shape)``, move it
to the device, encode it without gradients to ``(B, *representation.shape)``, and call
``model.train_step``. Every ``log_every`` steps the losses are checked for NaN/inf and logged (the only
host-device synchronisation of the loop); metrics, samples and checkpoints follow their own cadence.

Failure handling: the runs folder and the artifact folder are checked writable before anything is built. A
non-finite loss stops the run before the next checkpoint (the last good one stays); SIGINT/SIGTERM checkpoint
and end the run KILLED; any other exception ends it FAILED with the traceback logged as an artifact. The
run's last records (energy metrics and ``energy.json``, the checkpoint artifact, the traceback) are each
attempted whatever failed before, and the run is recorded FINISHED only when training finished and every one
of them was written; the first error is raised, with the later ones as notes. Log lines go through
:func:`say`, so a closed stdout (``run ... | head``) silences the run instead of failing it.

``resume_run_id`` reopens the same MLflow run from its last checkpoint with the same RNG streams, data
positions and partial log window (the losses summed since the last logged step), so the curve that follows
equals an uninterrupted run's at every logged step; :func:`resume_spec` gives the spec such a run continues
(the one stored in its checkpoint).

Time: ``perf/run_s`` is the seconds actually spent running (summed over the sessions of a resumed run via the
checkpoint, without the downtime between them); ``report`` uses it as the run's wall time.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import os
import platform
import shlex
import signal
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
import yaml

from framework import artifacts, checkpoint, naming
from framework.build import Components, build, build_dataset, ensure_prepared
from framework.data import Labelled, eval_loader, train_loader
from framework.energy import SUMMARY_FILE as ENERGY_FILE, EnergyMeter, seconds_per_item, summary
from framework.errors import CheckpointError, FrameworkError, NonFiniteLossError, SpecError, TrackingError
from framework.runtime import Runtime, choose_device, resolve_precision, runs_dir, seed_everything
from framework.spec import Spec, apply_set, flatten, parse_set, validate
from framework.tracking import DEFAULT_URI, Tracker, download_artifact, require_store, run_info, unwritable
from framework.tracking import tracking_uri as resolve_uri


class Quiet:
    """A text stream whose reader may go away (``run ... 2>&1 | head``): from the first write that finds the pipe
    closed on, the stream's file descriptor points at /dev/null, so the run goes on and nothing fails at exit."""

    def __init__(self, stream):
        self.stream = stream

    def write(self, text: str) -> None:
        self._try(self.stream.write, text)

    def flush(self) -> None:
        self._try(self.stream.flush)

    def _try(self, fn, *args) -> None:
        try:
            fn(*args)
        except BrokenPipeError:
            os.dup2(os.open(os.devnull, os.O_WRONLY), self.stream.fileno())

    def __getattr__(self, name: str):
        return getattr(self.stream, name)


def say(msg: str) -> None:
    """``print(msg)``, flushed, through :class:`Quiet`: the runner's and ``run``'s log lines."""
    out = Quiet(sys.stdout)
    out.write(msg + "\n")
    out.flush()


@dataclasses.dataclass
class RunResult:
    run_id: str
    status: str
    step: int
    run_dir: Path
    metrics: dict[str, float]


def make_runtime(spec: Spec, device: str | None = None) -> Runtime:
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    dev = choose_device(device or spec.train.device)
    if dev.type == "cuda" and world > 1:
        dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    if dev.type == "cuda":
        if dev.index is None:  # torch < 2.12's set_device needs an index ("cuda" alone is a ValueError there)
            dev = torch.device("cuda", torch.cuda.current_device())
        torch.cuda.set_device(dev)
        torch.backends.cudnn.benchmark = True
    return Runtime(device=dev, precision=resolve_precision(spec.train.precision, dev), compile=spec.train.compile,
                   rank=rank, world_size=world)


def _git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                              cwd=Path(__file__).parent).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def run_tags(spec: Spec, comps: Components, runtime: Runtime, registries) -> dict[str, str]:
    tags = {"spec.path": spec.path, "spec.sha256": spec.sha256, "spec.smoke": str(spec.smoke),
            "git.commit": _git_commit(), "device": str(runtime.device), "precision": runtime.precision,
            "world_size": str(runtime.world_size), "torch.version": torch.__version__,
            "python.version": platform.python_version()}
    if runtime.device.type == "cuda":
        tags["device.name"] = torch.cuda.get_device_name(runtime.device)
    for block, kind in ((spec.dataset, "datasets"), (spec.representation, "representations"),
                        (spec.model, "models"), (spec.loss, "losses")) + tuple((m, "metrics") for m in spec.metrics):
        entry = registries[kind].get(block.name)
        tags[f"plugin.{kind}.{block.name}"] = f"{entry.module} ({entry.distribution})"
    tags.update({str(k): str(v) for k, v in comps.dataset.info.tags.items()})
    for m in comps.metrics:  # tags() is optional for metrics that do not subclass Metric
        tags.update({str(k): str(v) for k, v in (m.tags() if hasattr(m, "tags") else {}).items()})
    return tags


class _Stop:
    """SIGINT/SIGTERM set a flag that the loop checks between steps (a second SIGINT aborts at once)."""

    def __init__(self):
        self.signal: str | None = None
        self._old: dict[int, Any] = {}

    def _handler(self, signum, frame):
        if self.signal is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signal = signal.Signals(signum).name

    @contextlib.contextmanager
    def installed(self) -> Iterator["_Stop"]:
        import threading

        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._old[sig] = signal.signal(sig, self._handler)
        try:
            yield self
        finally:
            for sig, old in self._old.items():
                signal.signal(sig, old)


class Trainer:
    """State of one run in progress; :func:`run` drives it."""

    def __init__(self, spec: Spec, comps: Components, runtime: Runtime, tracker: Tracker, run_dir: Path,
                 log: Callable[[str], None], resume_hint: str = ""):
        self.spec, self.c, self.rt, self.tracker, self.run_dir, self.log = spec, comps, runtime, tracker, run_dir, log
        self.resume_hint = resume_hint  # the command that continues this run (printed when a signal stops it)
        self.step = 0  # completed steps
        self.consumed = 0  # global data positions consumed (all ranks)
        self.energy = EnergyMeter(runtime.device, spec.energy, seconds_per_item(comps.dataset.info))
        self.last_metrics: dict[str, float] = {}
        # active time: seconds inside this process since the components were built, plus the earlier sessions'
        # from the checkpoint; None when resuming a checkpoint that predates it (the total is then unknown)
        self.run_s_before: float | None = 0.0
        self._session_start = time.monotonic()
        self.saved_step: int | None = None  # the step that the checkpoint file holds (None: no file yet)
        self._eval_dataset = None
        self.passed_at: dict[str, float] | None = None  # until/* of the evaluation where train.until first held
        # the log window: each loss summed over the steps since the last logged one (carried by the checkpoint)
        self.window: dict[str, torch.Tensor] = {}
        self.window_steps = 0

    # ---------------------------------------------------------------------------------- checkpoints
    @property
    def run_s(self) -> float | None:
        """Seconds actually spent running so far, over every session of the run (not the downtime between)."""
        return None if self.run_s_before is None else self.run_s_before + time.monotonic() - self._session_start

    @property
    def checkpoint_path(self) -> Path:
        return self.run_dir / checkpoint.FILENAME

    def save_checkpoint(self) -> None:
        if not self.rt.is_main:
            return
        self.energy.switch(self.energy.phase)  # the energy so far is attributed, so the checkpoint holds it
        sums = dict(zip(self.window, torch.stack(list(self.window.values())).tolist())) if self.window else {}
        try:
            checkpoint.save(self.checkpoint_path, {
                "step": self.step, "consumed": self.consumed, "spec": self.spec.resolved, "run_s": self.run_s,
                "energy": self.energy.state_dict(), "window": {"sums": sums, "steps": self.window_steps},
                "run_id": self.tracker.run_id, "model": self.c.model.checkpoint_state(),
                "rng": checkpoint.rng_state(),
                "data_info": {**dataclasses.asdict(self.c.dataset.info), "tags": dict(self.c.dataset.info.tags)}})
        except checkpoint.WriteError as exc:
            raise CheckpointError(f"{exc.reason} while writing the checkpoint of step {self.step}; "
                                  f"{self.kept_checkpoint()}") from exc
        self.saved_step = self.step

    def kept_checkpoint(self) -> str:
        """What a failed run leaves to resume from, in words (for the error that ends it)."""
        if self.saved_step is None:
            return (f"no checkpoint was written before (train.checkpoint_every={self.spec.train.checkpoint_every}), "
                    f"so there is none to resume from")
        return f"the checkpoint of step {self.saved_step} ({self.checkpoint_path}) is intact"

    def restore(self, state: dict[str, Any]) -> None:
        self.c.model.load_checkpoint_state(state["model"])
        self.step, self.consumed = int(state["step"]), int(state["consumed"])
        # a kill -9'd session's time after its last checkpoint is not counted: those steps run again, and count then
        self.run_s_before = state.get("run_s")
        if "energy" in state:  # checkpoints before this have none: the run is then metered from its resume on
            self.energy.load_state_dict(state["energy"])  # with the generated items
        window = state.get("window", {"sums": {}, "steps": 0})
        self.window = {k: torch.tensor(v, device=self.rt.device) for k, v in window["sums"].items()}
        self.window_steps = window["steps"]
        self.saved_step = self.step

    # ------------------------------------------------------------------------------------- phases
    def _data(self, dataset):
        """The dataset as the loaders should read it: with its labels for a class-conditional model."""
        return Labelled(dataset) if self.c.model.num_classes else dataset

    def _unpack(self, batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """A loader batch -> items ``(B, *data.shape)`` on the device and the model's extra keyword arguments
        (``labels`` ``(B,)`` for a class-conditional model, else none)."""
        if not self.c.model.num_classes:
            return batch.to(self.rt.device, non_blocking=True), {}
        x, y = batch
        return x.to(self.rt.device, non_blocking=True), {"labels": y.to(self.rt.device, non_blocking=True)}

    def open_eval_data(self) -> None:
        """Build the split the metrics compare against now, so that a missing or empty one fails before step 0,
        not at the first evaluation (which may come after all of training)."""
        if self.c.metrics and self.rt.is_main:
            self._eval_dataset = build_dataset(self.spec, self.spec.train.eval_split, "train.eval_split, for the "
                                               "metrics")

    def evaluate(self) -> dict[str, float]:
        """Feed ``eval_samples`` real items and as many generated ones to every metric."""
        if not self.c.metrics or not self.rt.is_main:
            return {}
        tr = self.spec.train
        self.energy.switch("eval")
        for m in self.c.metrics:
            m.reset()
        with torch.random.fork_rng(devices=[self.rt.device] if self.rt.device.type == "cuda" else []), \
                torch.no_grad():
            for batch in eval_loader(self._data(self._eval_dataset), tr.batch_size, tr.eval_samples):
                real, kw = self._unpack(batch)  # a conditional model draws for the reals' classes
                fake = self.c.representation.decode(self.c.model.sample(real.shape[0], **kw).float())
                self.energy.generated(fake.shape[0])
                for m in self.c.metrics:
                    m.update(real, fake)
        out = {}
        for m in self.c.metrics:
            out.update({f"eval/{k}": float(v) for k, v in m.compute().items()})
        self.energy.switch("train")
        return out

    def write_samples(self) -> list[Path]:
        """Generate ``train.samples`` items; with a critic, keep best/median/worst of 4x as many."""
        if not self.rt.is_main or self.spec.train.samples < 1:
            return []
        self.energy.switch("generation")
        n = self.spec.train.samples
        with torch.random.fork_rng(devices=[self.rt.device] if self.rt.device.type == "cuda" else []), \
                torch.no_grad():
            torch.manual_seed(self.spec.seed)  # the same latents at every sampling step: progress is comparable
            k, columns, kw = self.c.model.num_classes, None, {}
            if k and self.c.dataset.info.kind == "image":  # a conditional model's grid: column j is class j
                columns, kw = k, {"labels": torch.arange(n, device=self.rt.device) % k}
            z = self.c.model.sample(n if self.c.dataset.info.kind == "image" else max(n, 3) * 4, **kw)
            labels = None
            scores = self.c.model.score(z)
            if scores is not None and self.c.dataset.info.kind == "audio":
                order = torch.argsort(scores.float(), descending=True)
                pick = {"best": order[0], "median": order[len(order) // 2], "worst": order[-1]}
                z, labels = z[torch.stack(list(pick.values()))], list(pick)
            x = self.c.representation.decode(z.float())
            self.energy.generated(z.shape[0])
        paths = artifacts.save_samples(x, self.c.dataset.info, self.run_dir / "samples", f"step{self.step:07d}", labels,
                                       columns)
        for p in paths:
            self.tracker.log_artifact(p, "samples")
        self.energy.switch("train")
        return paths

    # --------------------------------------------------------------------------------------- loop
    def train(self, stop: _Stop) -> str:
        tr, rt, model, rep = self.spec.train, self.rt, self.c.model, self.c.representation
        loader = train_loader(self._data(self.c.dataset), tr.batch_size, seed=self.spec.seed, start=self.consumed,
                              rank=rt.rank, world_size=rt.world_size, num_workers=tr.num_workers,
                              pin_memory=rt.device.type == "cuda")
        batches = iter(loader)
        timed, t0, first = 0, time.perf_counter(), self.step  # steps since t0 (for perf/steps_per_s)
        if tr.eval_at_start and self.step == 0:  # the untrained model: where every curve and sample starts
            self._log_eval()
            self.write_samples()
        bar = _progress(tr.steps, self.step, enabled=rt.is_main)
        self.energy.switch("train")
        evaluated = False  # whether the last evaluation was of the current step (then the final one is skipped)
        try:
            while self.step < tr.steps:
                x, kw = self._unpack(next(batches))
                with torch.no_grad():
                    z = rep.encode(x)  # (B, *data.shape) -> (B, *representation.shape)
                out = model.train_step(z, self.step, **kw)
                self.step += 1
                self.consumed += tr.batch_size * rt.world_size
                for k, v in out.items():
                    w = self.window
                    w[k] = w[k] + v.detach().float() if k in w else v.detach().float()
                self.window_steps += 1
                timed += 1
                bar.update(1)
                last = self.step == tr.steps or self._budget_spent()
                ckpt_now = bool(tr.checkpoint_every) and self.step % tr.checkpoint_every == 0
                # losses are checked for NaN/inf whenever they are logged, and always before a checkpoint
                if self.step % max(tr.log_every, 1) == 0 or last or ckpt_now:
                    logged = self._log_train(timed, t0)
                    bar.set_postfix({k.split("/", 1)[-1]: f"{v:.3g}" for k, v in list(logged.items())[:4]})
                    timed, t0 = 0, time.perf_counter()
                if stop.signal:
                    self._window_means()  # checked, not logged: the window goes into the checkpoint whole
                    self.save_checkpoint()
                    self.log(f"{stop.signal}: checkpoint saved at step {self.step}; run ends KILLED "
                             f"(continue it with: {self.resume_hint})")
                    return "KILLED"
                evaluated = False
                if tr.eval_every and self.step % tr.eval_every == 0 and (not last or tr.until):
                    self._log_eval()
                    evaluated = True
                    if self.passed_at is not None:
                        break
                if last:
                    break
                if tr.sample_every and self.step % tr.sample_every == 0:
                    self.write_samples()
                if ckpt_now:
                    self.save_checkpoint()
        finally:
            bar.close()
        if not evaluated:
            self._log_eval()
        self._log_until()
        self.write_samples()
        self.save_checkpoint()
        self.energy.switch(None)
        self.log(f"trained {self.step - first} steps")
        return "FINISHED"

    # ------------------------------------------------------------------------ until: a criterion and a budget
    def _budget_spent(self) -> bool:
        """Whether train.max_examples or train.max_minutes is spent. Minutes are checked at log steps only, and
        rank 0's clock decides for every process (ranks must stop at the same step)."""
        tr = self.spec.train
        if tr.max_examples and self.consumed >= tr.max_examples:
            return True
        if not tr.max_minutes or self.step % max(tr.log_every, 1):
            return False
        return self._agree(self.run_s is not None and self.run_s >= 60 * tr.max_minutes)

    def _agree(self, flag: bool) -> bool:
        """Rank 0's ``flag`` on every rank (a broadcast when training runs in several processes)."""
        if self.rt.world_size == 1:
            return flag
        t = torch.tensor([float(flag)], device=self.rt.device)
        torch.distributed.broadcast(t, 0)
        return bool(t.item())

    def _check_until(self, metrics: dict[str, float]) -> None:
        """After an evaluation: record the first step where every ``train.until`` condition holds (with the
        examples, active seconds and joules it took). Only rank 0 evaluates; its verdict is shared."""
        until = self.spec.train.until
        if not until or self.passed_at is not None or self.step == 0:
            return
        holds = False
        if self.rt.is_main:
            values = {**self.last_metrics, **metrics}
            missing = [c.metric for c in until if c.metric not in values]
            if missing:
                raise SpecError(f"{self.spec.path}: train.until: the run logs no {', '.join(missing)}; its "
                                f"evaluation logs {', '.join(sorted(metrics)) or 'nothing (no metrics: in the spec)'}")
            holds = all(c.holds(values[c.metric]) for c in until)
        if self._agree(holds):
            self.energy.switch(self.energy.phase)  # attribute the energy so far
            self.passed_at = {"until/step": float(self.step), "until/examples": float(self.consumed),
                              "until/run_s": float("nan") if self.run_s is None else float(self.run_s),
                              "until/energy_j": float(sum(self.energy.joules.values()))}
            self.log(f"until: {' and '.join(map(str, until))} holds at step {self.step} "
                     f"({self.consumed} examples); training stops")

    def _log_until(self) -> None:
        """Log whether the criterion was met: until/passed 1 with the cost of passing, else 0 (budget spent)."""
        if not self.spec.train.until:
            return
        out = {"until/passed": float(self.passed_at is not None), **(self.passed_at or {})}
        self.tracker.log_metrics(out, self.step)
        self.last_metrics.update(out)
        self.tracker.set_tags({"until.result": f"passed at step {self.step} ({self.consumed} examples)"
                               if self.passed_at else f"not passed: budget spent at step {self.step} "
                                                       f"({self.consumed} examples)"})

    def _window_means(self) -> dict[str, float]:
        """``train/<loss>``: each loss's mean over the log window (the loop's one host sync); NonFiniteLossError
        when one is NaN or infinite."""
        if not self.window:
            return {}
        names = list(self.window)
        values = (torch.stack([self.window[k] for k in names]) / self.window_steps).tolist()
        logged = {f"train/{k}": v for k, v in zip(names, values)}
        bad = [k for k, v in logged.items() if not np.isfinite(v)]
        if bad:
            raise NonFiniteLossError(
                f"non-finite loss at step {self.step}: {', '.join(f'{k}={logged[k]}' for k in bad)}; the run stops "
                f"and {self.kept_checkpoint()}. Lower the learning rate, check the data for NaN, or try "
                f"precision: fp32")
        return logged

    def _log_train(self, timed: int, t0: float) -> dict[str, float]:
        """Log the window's means (and the speed over the ``timed`` steps since ``t0``), then start a new window."""
        logged = self._window_means()
        if not logged:
            return {}
        self.window, self.window_steps = {}, 0
        elapsed = time.perf_counter() - t0
        logged["perf/steps_per_s"] = timed / elapsed if elapsed > 0 else float("nan")
        if self.run_s is not None:
            logged["perf/run_s"] = self.run_s
        self.tracker.log_metrics(logged, self.step)
        self.last_metrics.update(logged)
        return logged

    def log_energy(self) -> None:
        """Log the run's energy and active time so far and print its energy summary (the run's end)."""
        self.energy.switch(None)
        metrics = self.energy.metrics() | {"perf/generated_items": float(self.energy.generated_items)}
        if self.run_s is not None:
            metrics["perf/run_s"] = self.run_s
        self.last_metrics.update(metrics)
        self.tracker.log_metrics(metrics, self.step)
        for line in summary(metrics, self.energy.tags()):
            self.log(line)

    def _log_eval(self) -> None:
        metrics = self.evaluate()
        if metrics:
            self.tracker.log_metrics(metrics, self.step)
            self.last_metrics.update(metrics)
            self.log("eval: " + ", ".join(f"{k}={v:.4g}" for k, v in metrics.items()))
        self._check_until(metrics)


def _progress(total: int, initial: int, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, disable=not enabled, unit="step", dynamic_ncols=True,
                desc="train", file=Quiet(sys.stderr))


def _init_distributed(runtime: Runtime) -> None:
    if runtime.world_size > 1 and not torch.distributed.is_initialized():
        backend = "nccl" if runtime.device.type == "cuda" else "gloo"
        torch.distributed.init_process_group(backend=backend)


def find_checkpoint(run_id: str, tracker_uri: str | None, download_to: Path | None = None) -> Path:
    """The local checkpoint of ``run_id`` (in the runs folder), else the one logged as an artifact of that run,
    downloaded into ``download_to`` (default: the run's folder, where a resumed run goes on) unless a copy there
    was downloaded after the run last ended. Read from an existing store only: a missing one is named, never
    created."""
    local = runs_dir() / run_id / checkpoint.FILENAME
    if local.is_file():
        return local

    folder = download_to or local.parent
    copy = folder / checkpoint.FILENAME
    try:
        ended = run_info(run_id, tracker_uri)["end_time"] or 0  # ms; a resumed run that ended again is newer
        if copy.is_file() and copy.stat().st_mtime * 1000 > ended:
            return copy
        folder.mkdir(parents=True, exist_ok=True)
        path = download_artifact(run_id, f"checkpoints/{checkpoint.FILENAME}", folder, tracker_uri)
        os.utime(path)  # the time of the download (MLflow copies the logged file's)
        return path
    except TrackingError as exc:
        raise CheckpointError(f"run {run_id}: no checkpoint at {local}, and {exc} (FRAMEWORK_RUNS_DIR moves "
                              f"runs/)") from None
    except CheckpointError:
        raise CheckpointError(f"run {run_id}: no checkpoint at {local} and none logged to the run in the tracking "
                              f"store {resolve_uri(tracker_uri)}; check the run id (python -m framework ui), "
                              f"--tracking-uri / MLFLOW_TRACKING_URI and FRAMEWORK_RUNS_DIR") from None


def _spec_changes(new: dict, stored: dict) -> list[str]:
    """``key: stored -> new`` for every key but train.steps whose value differs between two resolved specs."""
    a, b = flatten(new), flatten(stored)
    keys = sorted(k for k in set(a) | set(b) if k != "train.steps" and a.get(k) != b.get(k))
    return [f"{k}: {b.get(k, '(unset)')} -> {a.get(k, '(unset)')}" for k in keys]


def _check_resume_spec(spec: Spec, stored: dict, registries) -> None:
    """A resumed run continues the stored spec; only train.steps may change (to train longer). The stored spec
    is validated again first, so a checkpoint written before defaults were recorded compares with them filled in."""
    changes = _spec_changes(spec.resolved, validate(copy.deepcopy(stored), registries, spec.path).resolved)
    if changes:
        raise SpecError(f"{spec.path}: --resume: the spec differs from the one the run was started with at "
                        f"{'; '.join(changes[:8])}; resume with the run's stored spec (`python -m framework run "
                        f"--resume RUN_ID`; only train.steps may change)")


def resume_spec(run_id: str, registries, sets: list[str] = (), tracking_uri: str | None = None) -> Spec:
    """The spec that ``run --resume RUN_ID`` continues: the resolved spec stored in the run's checkpoint, with
    ``sets`` applied. Only ``train.steps`` may change (to train longer); a --set that repeats a stored value
    is accepted, any other is a SpecError naming the keys and both values."""
    path = find_checkpoint(run_id, tracking_uri)
    stored = checkpoint.load(path)["spec"]
    data, origins = copy.deepcopy(stored), {}
    for item in sets:
        apply_set(data, *parse_set(item), origins)
    changes = _spec_changes(data, stored)
    if changes:
        raise SpecError(f"--resume {run_id}: a resumed run keeps the spec it was started with, but the --set "
                        f"options change {'; '.join(changes[:8])}; only train.steps may change (e.g. --set "
                        f"train.steps=N to train longer); start a new run to change anything else")
    return validate(data, registries, f"run {run_id}'s stored spec ({path})", origins)


def resume_command(run_id: str, uri: str, device: str | None) -> str:
    """The shell command that continues ``run_id`` where it stopped, as it was started (the SIGTERM hint)."""
    env = f"FRAMEWORK_RUNS_DIR={shlex.quote(os.environ['FRAMEWORK_RUNS_DIR'])} " \
        if "FRAMEWORK_RUNS_DIR" in os.environ else ""
    return (f"{env}python -m framework run --resume {run_id}"
            + ("" if uri == DEFAULT_URI else f" --tracking-uri {shlex.quote(uri)}")
            + (f" --device {shlex.quote(device)}" if device else ""))


def _setup(spec: Spec, registries, runtime: Runtime, tracker: Tracker, run_dir: Path, state: dict | None,
           log: Callable[[str], None], resume_hint: str) -> Trainer:
    """Prepare data, build the components, and log the run's description (or restore a checkpoint)."""
    if runtime.is_main:
        ensure_prepared(spec.dataset, log)
    if runtime.world_size > 1:
        torch.distributed.barrier()
    seed_everything(spec.seed)  # identical initial weights on every rank
    comps = build(spec, runtime)
    seed_everything(spec.seed + runtime.rank)  # then a distinct random stream per rank
    trainer = Trainer(spec, comps, runtime, tracker, run_dir, log, resume_hint)
    trainer.open_eval_data()
    if state is None:
        tracker.set_tags(run_tags(spec, comps, runtime, registries) | trainer.energy.tags())
        tracker.log_params(flatten(spec.resolved))
        tracker.log_text(yaml.safe_dump(spec.resolved, sort_keys=False), "spec.yaml")
    else:
        trainer.restore(state)
        checkpoint.set_rng_state(state["rng"])
        tracker.set_tags({"resumed_from_step": state["step"]})
        log(f"resuming run {tracker.run_id or run_dir.name} from step {trainer.step}")
    log(f"MLflow run {run_dir.name} (experiment '{spec.experiment}', store {tracker.uri}, artifacts "
        f"{tracker.artifact_uri}); device {runtime.device}, precision {runtime.precision}")
    return trainer


def run(spec: Spec, registries, *, tracking_uri: str | None = None, device: str | None = None,
        resume_run_id: str | None = None, parent_run_id: str | None = None, run_name: str | None = None,
        log: Callable[[str], None] = say) -> RunResult:
    """Train ``spec`` end to end (or resume ``resume_run_id``) and return where everything went."""
    runtime = make_runtime(spec, device)
    _init_distributed(runtime)
    log = log if runtime.is_main else (lambda msg: None)
    if resume_run_id:
        require_store(tracking_uri)  # the run's store must exist; checking a new one would create it
    tracker = Tracker(tracking_uri, enabled=runtime.is_main)
    tracker.check()
    if runtime.is_main:  # checked before anything is built, as the store is
        problem = unwritable(runs_dir())
        if problem:
            raise CheckpointError(f"the runs folder {runs_dir().resolve()} is not writable ({problem}); make it "
                                  f"writable, or set FRAMEWORK_RUNS_DIR to a folder that is")
        tracker.check_artifacts(spec.experiment)
    state = None
    if resume_run_id:
        state = checkpoint.load(find_checkpoint(resume_run_id, tracker.uri))
        _check_resume_spec(spec, state["spec"], registries)
    run_id = tracker.start(spec.experiment, run_name=run_name or naming.run_name(spec), run_id=resume_run_id,
                           system_metrics=spec.tracking.system_metrics, parent_run_id=parent_run_id)
    if runtime.world_size > 1:  # every rank files its checkpoint under rank 0's run id
        ids = [run_id]
        torch.distributed.broadcast_object_list(ids, src=0)
        run_id = ids[0]
    run_dir = runs_dir() / run_id
    status, trainer, errors = "FAILED", None, []
    try:
        trainer = _setup(spec, registries, runtime, tracker, run_dir, state, log,
                         resume_command(run_id, tracker.uri, device))
        with _Stop().installed() as stop:
            status = trainer.train(stop)
    except BaseException as exc:  # raised below, once the run's records are written and its status recorded
        status = "KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED"
        errors.append(exc)
    status = _close(trainer, tracker, status, errors, run_dir, log)
    if errors:
        raise errors[0]
    return RunResult(run_id, status, trainer.step, run_dir, trainer.last_metrics)


def _close(trainer: Trainer | None, tracker: Tracker, status: str, errors: list[BaseException], run_dir: Path,
           log: Callable[[str], None]) -> str:
    """Write the run's last records and end its MLflow run; returns the status recorded. Each record is attempted
    whatever failed before; a failure is appended to ``errors`` and makes a finished run FAILED. The errors after
    the first are noted on it (and all are in ``traceback.txt``), never raised in its place."""

    def attempt(what: str, fn: Callable, *args) -> None:
        try:
            fn(*args)
        except OSError as exc:  # a full disk, a folder made read-only: the environment, said in one line
            wrapped = FrameworkError(f"{what} failed ({type(exc).__name__}: {exc})")
            wrapped.__cause__ = exc
            errors.append(wrapped)
        except BaseException as exc:  # a Ctrl-C here too: the run is still ended, KILLED
            errors.append(exc)

    if trainer is not None:
        attempt("logging the energy metrics", trainer.log_energy)
        if tracker.enabled:
            attempt(f"writing {run_dir / ENERGY_FILE}", trainer.energy.write, run_dir)
        if status == "FINISHED" and not errors and trainer.spec.tracking.log_checkpoint:
            attempt("logging the checkpoint to MLflow", tracker.log_artifact, trainer.checkpoint_path, "checkpoints")
    if errors:
        status = "KILLED" if status == "KILLED" or any(isinstance(e, KeyboardInterrupt) for e in errors) else "FAILED"
        if tracker.enabled:
            text = "\n--- then, while ending the run:\n".join("".join(traceback.format_exception(e)) for e in errors)
            attempt(f"writing {run_dir / 'traceback.txt'}", _log_traceback, tracker, run_dir, text)
    attempt(f"ending the MLflow run {status}", tracker.end, status)
    for exc in errors[1:]:
        errors[0].__notes__ = [*getattr(errors[0], "__notes__", []),
                               f"then, while ending the run: {type(exc).__name__}: {exc}"]
    return status


def _log_traceback(tracker: Tracker, run_dir: Path, text: str) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "traceback.txt").write_text(text)
    tracker.log_artifact(run_dir / "traceback.txt")
