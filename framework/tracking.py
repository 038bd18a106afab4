"""MLflow tracking: the only module of the project that imports mlflow.

Tracking URI: ``--tracking-uri``, else ``MLFLOW_TRACKING_URI``, else MLflow's embedded sqlite store
``sqlite:///mlflow.db`` in the working directory. An experiment that this module creates in a local sqlite store
keeps its artifacts beside the database, in ``<database file>-artifacts/<experiment>/`` (:func:`artifact_root`),
so two stores never share an artifact folder and a store can be read from any working folder; experiments
created before (MLflow's default, ``./mlruns`` of the folder they were created from) keep their location.

The store is checked before anything is trained (:func:`check_store`; MLflow's HTTP and database retries are
cut, so an unreachable server costs seconds, not a GPU hour; a missing database driver is named with its pip
package), and so is the local folder that a run's artifacts go to (:meth:`Tracker.check_artifacts`). Reads (a
run's checkpoint for ``generate`` or ``--resume``) first check that a local store exists
(:func:`require_store`), so they never create an empty one as a side effect.

Under ``torchrun`` only rank 0 tracks; other ranks get a :class:`Tracker` with ``enabled=False`` whose
methods do nothing.

``serve_ui`` checks the store first (one-line errors for a server URI, an unreachable database or a missing
driver), then runs MLflow's UI server in its own process group, ended with the parent, and prints each
experiment's runs page in the UI's machine-learning view (MLflow 3 otherwise opens on GenAI traces).
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any, Iterator, Mapping

from framework.errors import CheckpointError, TrackingError

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

DEFAULT_URI = "sqlite:///mlflow.db"
PARAM_MAX = 6000  # MLflow's limit on a param value's length


def tracking_uri(explicit: str | None = None) -> str:
    return explicit or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_URI


@contextlib.contextmanager
def _quick_failure() -> Iterator[None]:
    """Fail fast on unreachable HTTP and database servers (MLflow otherwise retries with backoff for minutes:
    HTTP requests, and ten attempts over 1 min 42 s to open a database)."""
    from mlflow.store.db import utils as db_utils

    keys = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "5"}
    saved = {k: os.environ.get(k) for k in keys}
    for k, v in keys.items():
        os.environ.setdefault(k, v)
    retries, db_utils.MAX_RETRY_COUNT = db_utils.MAX_RETRY_COUNT, 1
    try:
        yield
    finally:
        db_utils.MAX_RETRY_COUNT = retries
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)


# the pip package of each database driver that SQLAlchemy's default dialects import
_DRIVERS = {"psycopg": "'psycopg[binary]'", "psycopg2": "psycopg2-binary", "pymysql": "pymysql",
            "MySQLdb": "mysqlclient", "pyodbc": "pyodbc", "oracledb": "oracledb"}


def check_store(uri: str) -> None:
    """TrackingError, in one line with what to do, unless the store ``uri`` answers a query."""
    import mlflow

    try:
        with _quick_failure():
            mlflow.MlflowClient(uri).search_experiments(max_results=1)
    except Exception as exc:
        missing = next((e for e in _chain(exc) if isinstance(e, ModuleNotFoundError)), None)
        if missing is not None and missing.name:
            raise TrackingError(f"the tracking store {uri} needs the database driver '{missing.name}', which is not "
                                f"installed: pip install {_DRIVERS.get(missing.name, missing.name)}") from exc
        raise TrackingError(f"MLflow tracking store {uri} is not reachable ({type(exc).__name__}: "
                            f"{' '.join(str(exc).split())[:300]}); start the server, fix --tracking-uri / "
                            f"MLFLOW_TRACKING_URI, or unset it to use ./mlflow.db") from exc


def _chain(exc: BaseException | None) -> Iterator[BaseException]:
    """``exc`` and the exceptions it was raised from or during."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def unwritable(folder: Path) -> str | None:
    """Why a file cannot be created in ``folder`` (made first if missing), in words; None when one can."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=folder).close()
    except OSError as exc:
        return f"{type(exc).__name__}: {exc.strerror or exc}"
    return None


def artifact_root(uri: str) -> Path | None:
    """The folder beside a local sqlite database where the experiments this module creates keep their artifacts
    (``/data/m.db`` -> ``/data/m.db-artifacts``); None for other stores (a file store keeps them inside itself,
    a server where it is configured to)."""
    path = local_store(uri) if uri.startswith("sqlite:") else None
    return None if path is None else path.resolve().with_name(path.name + "-artifacts")


def _new_artifact_folder(uri: str) -> Path | None:
    """Where a new experiment's artifacts go: beside a sqlite database, inside a file store, ``./mlruns`` for
    another database (MLflow's default); None for a server."""
    from urllib.parse import urlparse

    if urlparse(uri).scheme.split("+")[0] in ("sqlite", "postgresql", "mysql", "mssql", "oracle"):
        return artifact_root(uri) or Path("mlruns").resolve()
    return local_store(uri)


def _local_folder(location: str) -> Path | None:
    """The local folder of an artifact location (a path or file: URI); None for a remote one."""
    from urllib.parse import unquote, urlparse

    parsed = urlparse(location)
    return Path(unquote(parsed.path)) if parsed.scheme in ("", "file") else None


class Tracker:
    """One MLflow run: start or resume, log, end with a status."""

    def __init__(self, uri: str | None = None, enabled: bool = True):
        self.uri = tracking_uri(uri)
        self.enabled = enabled
        self.run_id: str | None = None
        self.artifact_uri: str | None = None  # where the run's artifacts go (set by start)
        if enabled:
            import mlflow

            self._mlflow = mlflow
            mlflow.set_tracking_uri(self.uri)

    def check(self) -> None:
        """Raise TrackingError if the store cannot be reached."""
        if self.enabled:
            check_store(self.uri)

    def check_artifacts(self, experiment: str) -> None:
        """TrackingError unless files can be created in the local folder that ``experiment``'s artifacts go to
        (its artifact location, or where a new experiment's will be); a remote location is not checked."""
        if not self.enabled:
            return
        exp = self._mlflow.MlflowClient(self.uri).get_experiment_by_name(experiment)
        folder = _local_folder(exp.artifact_location) if exp else _new_artifact_folder(self.uri)
        problem = folder and unwritable(folder)
        if problem:
            raise TrackingError(f"the artifact folder {folder} of experiment '{experiment}' in {self.uri} is not "
                                f"writable ({problem}); make it writable, or log to a store in a writable folder "
                                f"with --tracking-uri")

    def _experiment_id(self, name: str) -> str:
        """The id of experiment ``name``, made active; a new one in a local sqlite store gets its artifact folder
        beside the database (:func:`artifact_root`)."""
        root = artifact_root(self.uri)
        client = self._mlflow.MlflowClient(self.uri)
        if root is not None and client.get_experiment_by_name(name) is None:
            client.create_experiment(name, artifact_location=str(root / re.sub(r"[^\w-]+", "_", name)))
        return self._mlflow.set_experiment(name).experiment_id

    def start(self, experiment: str, run_name: str | None = None, run_id: str | None = None,
              system_metrics: bool = True, parent_run_id: str | None = None) -> str:
        """Start a new run in ``experiment`` (a child of ``parent_run_id`` in a sweep) or, with ``run_id``,
        reopen that run (resume)."""
        if not self.enabled:
            return run_id or ""
        mlflow = self._mlflow
        if run_id is None:
            exp_id = self._experiment_id(experiment)
            run_name = self._free_name(exp_id, run_name) if run_name else None
        run = mlflow.start_run(run_id=run_id, run_name=None if run_id else run_name,
                               log_system_metrics=system_metrics, parent_run_id=parent_run_id)
        self.run_id, self.artifact_uri = run.info.run_id, run.info.artifact_uri
        return self.run_id

    def _free_name(self, experiment_id: str, name: str) -> str:
        """``name``, or ``name #N`` with the first N >= 2 that no run of the experiment has: runs of one spec
        stay distinguishable in the UI's lists and legends. (A resumed run keeps its name.)"""
        prefix = re.match(r"[\w .=:-]*", name).group()  # the part safe inside a LIKE pattern; exact test below
        runs = self._mlflow.MlflowClient(self.uri).search_runs(
            [experiment_id], filter_string=f"attributes.run_name LIKE '{prefix}%'", max_results=50000)
        taken = {r.info.run_name for r in runs}
        n = 1
        while (candidate := name if n == 1 else f"{name} #{n}") in taken:
            n += 1
        return candidate

    def open_parent(self, experiment: str, sweep_hash: str, name: str, tags: Mapping[str, Any]) -> str:
        """The sweep's parent run: the earlier one with the same sweep hash (set RUNNING again), or a new one."""
        client = self._mlflow.MlflowClient(self.uri)
        exp_id = self._experiment_id(experiment)
        found = client.search_runs([exp_id], filter_string=f"tags.`sweep.sha256` = '{sweep_hash}'", max_results=1)
        if found:
            client.update_run(found[0].info.run_id, status="RUNNING")
            return found[0].info.run_id
        run = client.create_run(exp_id, run_name=self._free_name(exp_id, name), tags={"framework.kind": "sweep", "sweep.sha256": sweep_hash,
                                                             **{k: str(v) for k, v in tags.items()}})
        return run.info.run_id

    def close_parent(self, run_id: str, status: str, tags: Mapping[str, Any]) -> None:
        client = self._mlflow.MlflowClient(self.uri)
        for k, v in tags.items():
            client.set_tag(run_id, k, str(v))
        client.set_terminated(run_id, status=status)

    def finished_spec_hashes(self, experiment: str) -> set[str]:
        """The resolved-spec hashes of the experiment's FINISHED runs."""
        client = self._mlflow.MlflowClient(self.uri)
        exp = client.get_experiment_by_name(experiment)
        if exp is None:
            return set()
        runs = client.search_runs([exp.experiment_id], filter_string="attributes.status = 'FINISHED'",
                                  max_results=5000)
        return {r.data.tags["spec.sha256"] for r in runs if "spec.sha256" in r.data.tags}

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        if self.enabled:
            self._mlflow.set_tags({k: str(v)[:5000] for k, v in tags.items()})

    def log_params(self, params: Mapping[str, str]) -> None:
        if not self.enabled:
            return
        items = {k: (v if len(v) <= PARAM_MAX else v[:PARAM_MAX - 3] + "...") for k, v in params.items()}
        keys = list(items)
        for i in range(0, len(keys), 100):  # MLflow's batch limit
            self._mlflow.log_params({k: items[k] for k in keys[i:i + 100]})

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        if self.enabled and metrics:
            self._mlflow.log_metrics(dict(metrics), step=step)

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        if self.enabled:
            self._mlflow.log_artifact(str(path), artifact_path)

    def log_text(self, text: str, name: str) -> None:
        if self.enabled:
            self._mlflow.log_text(text, name)

    def end(self, status: str = "FINISHED") -> None:
        if self.enabled and self._mlflow.active_run() is not None:
            self._mlflow.end_run(status=status)


def local_store(uri: str) -> Path | None:
    """The file (sqlite) or folder (file store) that a local tracking URI names; None for a server."""
    from urllib.parse import urlparse

    if uri.startswith("sqlite:///"):
        name = uri[len("sqlite:///"):].split("?", 1)[0]
        return None if name in ("", ":memory:") else Path(name)
    parsed = urlparse(uri)
    if parsed.scheme == "file":
        return Path(parsed.path)
    return Path(uri) if parsed.scheme == "" else None


def require_store(uri: str | None = None) -> str:
    """The tracking URI, once a local store there is known to exist: MLflow creates an empty store on first
    access, and a read (generate, resume) must never leave one behind. TrackingError names the store."""
    uri = tracking_uri(uri)
    path = _missing_store(uri)
    if path is not None:
        raise TrackingError(f"the tracking store {uri} does not exist (no {path.resolve()}); point at the store "
                            f"the run was logged to with --tracking-uri URI or MLFLOW_TRACKING_URI, or run from the "
                            f"folder that holds it")
    return uri


def run_info(run_id: str, uri: str | None = None) -> dict[str, Any]:
    """Experiment name, status, tags and params of a run; CheckpointError if there is no such run."""
    import mlflow

    client = mlflow.MlflowClient(require_store(uri))
    try:
        run = client.get_run(run_id)
    except Exception as exc:
        raise CheckpointError(f"no MLflow run '{run_id}' in {tracking_uri(uri)} ({type(exc).__name__}); "
                              f"list runs with `python -m framework ui` or check --tracking-uri") from None
    exp = client.get_experiment(run.info.experiment_id)
    return {"experiment": exp.name, "status": run.info.status, "tags": dict(run.data.tags),
            "params": dict(run.data.params), "artifact_uri": run.info.artifact_uri, "end_time": run.info.end_time}


def download_artifact(run_id: str, path: str, dst: str | Path, uri: str | None = None) -> Path:
    """Artifact ``path`` of a run, downloaded into ``dst``; TrackingError when the store does not exist,
    CheckpointError when the run or the artifact does not."""
    import mlflow

    uri = require_store(uri)
    try:
        return Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=path, dst_path=str(dst),
                                                        tracking_uri=uri))
    except Exception as exc:
        raise CheckpointError(f"run {run_id} has no artifact '{path}' in the tracking store {uri} "
                              f"({type(exc).__name__})") from None


def metric_history(run_id: str, key: str, uri: str | None = None) -> list[tuple[int, float]]:
    """(step, value) pairs of one metric of one run, in step order (the last value per step)."""
    import mlflow

    hist = mlflow.MlflowClient(tracking_uri(uri)).get_metric_history(run_id, key)
    by_step = {m.step: m.value for m in sorted(hist, key=lambda m: m.timestamp)}
    return sorted(by_step.items())


# MLflow 3's UI opens in its GenAI view (traces). Its sidebar toggle (GenAI | Model training) decides the view,
# and this URL parameter sets it; the experiment tag mlflow.experimentKind does not override the toggle (checked
# in headless Chromium against MLflow 3.17).
ML_VIEW_QUERY = "workflowType=machine_learning"
UI_START_S = 180  # MLflow's server takes ~5 s to answer on an idle machine, ~40 s on a loaded 2-core one


def runs_page_urls(uri: str | None, base: str) -> list[tuple[str, str]]:
    """(experiment name, URL of its runs table in the machine-learning view) for every experiment with runs,
    most recently created first. Reads nothing (and so creates no store) when a local store does not exist."""
    import mlflow

    uri = tracking_uri(uri)
    if _missing_store(uri):
        return []
    client = mlflow.MlflowClient(uri)
    exps = sorted(client.search_experiments(), key=lambda e: e.creation_time or 0, reverse=True)
    return [(e.name, f"{base}/#/experiments/{e.experiment_id}/runs?{ML_VIEW_QUERY}") for e in exps
            if client.search_runs([e.experiment_id], max_results=1)]


def _missing_store(uri: str) -> Path | None:
    """The local store (sqlite file, file-store folder) that ``uri`` names when it does not exist, else None."""
    path = local_store(uri)
    return path if path is not None and not path.exists() else None


def _check_port_free(port: int) -> None:
    """TrackingError if nothing can listen on 127.0.0.1:port (checked before the server starts)."""
    if not 0 < port < 65536:
        raise TrackingError(f"ui --port {port}: must be between 1 and 65535")
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server will: TIME_WAIT is no conflict
        try:
            s.bind(("127.0.0.1", port))
        except OSError as exc:
            raise TrackingError(f"ui: port {port} on 127.0.0.1 is taken ({exc.strerror}); another `python -m "
                                f"framework ui` or MLflow server is probably running there: open it, stop it, "
                                f"or choose another port with --port N") from None


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


def _end_group(proc) -> None:
    """End the server's whole process group (MLflow's server and its uvicorn workers): TERM, then KILL."""
    for sig, grace in ((signal.SIGTERM, 10), (signal.SIGKILL, 5)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            continue


class _Stop(Exception):
    pass


def _raise_stop(signum, frame):
    raise _Stop(signum)


def _announce(uri: str, base: str, log) -> None:
    pages = runs_page_urls(uri, base)
    log(f"MLflow UI for {uri}: {base}  (Ctrl-C to stop)")
    for name, url in pages:
        log(f"  runs of {name}: {url}")
    if not pages:
        log("  no runs in this store yet; run `python -m framework run SPEC` (with the same --tracking-uri)")


def serve_ui(uri: str | None = None, port: int = 5000, log=functools.partial(print, flush=True)) -> int:
    """Serve the MLflow UI for the store on 127.0.0.1 until SIGINT / SIGTERM; print each experiment's runs page.

    The server runs in its own process group, which is ended with this process (SIGINT, SIGTERM, or the server
    dying); only a SIGKILL of this process leaves it running. Exit status: 0 when stopped by a signal, else
    the server's own."""
    uri = tracking_uri(uri)
    _check_port_free(port)
    if uri.startswith(("http:", "https:")):
        raise TrackingError(f"ui serves a store (a sqlite file, a folder, a database); {uri} is an MLflow server "
                            f"already: open it in a browser")
    missing = _missing_store(uri)
    if missing:
        log(f"note: {missing} does not exist yet, so the UI starts empty (MLflow creates the file); pass "
            f"--tracking-uri or start from the folder where you ran `python -m framework run`")
    else:
        check_store(uri)  # a one-line error here, not the server's traceback
    base = f"http://127.0.0.1:{port}"
    # one worker serves one person; MLflow's default of 4 quadruples start-up time and memory on a small machine
    cmd = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri, "--host", "127.0.0.1",
           "--port", str(port), "--workers", "1"]
    previous = signal.signal(signal.SIGTERM, _raise_stop)
    proc = subprocess.Popen(cmd, start_new_session=True)  # its own group, so _end_group reaches every worker
    try:
        log(f"starting the MLflow UI on {base} ...")
        deadline = time.monotonic() + UI_START_S
        while proc.poll() is None and not _answers(f"{base}/health") and time.monotonic() < deadline:
            time.sleep(0.5)
        if proc.poll() is None:
            _announce(uri, base, log)
            proc.wait()
        log(f"the MLflow server exited with status {proc.returncode}; its output is above")
        return proc.returncode or 1
    except (_Stop, KeyboardInterrupt):
        return 0
    finally:
        _end_group(proc)
        signal.signal(signal.SIGTERM, previous)
