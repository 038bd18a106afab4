"""``python -m framework ui``: a real MLflow server on a free port that answers HTTP, prints each experiment's
runs page in the machine-learning view, and ends with every child on SIGTERM; a taken port is an error before
anything starts."""

import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import mlflow
import pytest

from framework.errors import TrackingError
from framework.tracking import ML_VIEW_QUERY, _check_port_free, runs_page_urls

ROOT = Path(__file__).resolve().parents[2]
START_S = 180  # MLflow's server answers after ~5 s idle, ~40 s on a loaded 2-core machine


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _store_with_a_run(tmp_path) -> str:
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = mlflow.MlflowClient(uri)
    exp = client.create_experiment("toy_ui", artifact_location=str(tmp_path / "artifacts"))
    client.set_terminated(client.create_run(exp).info.run_id)
    client.create_experiment("empty_ui", artifact_location=str(tmp_path / "artifacts2"))
    return uri


def _descendants(pid: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.add(child)
            todo.append(child)
    return found


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_runs_pages_use_the_machine_learning_view_and_skip_empty_experiments(tmp_path):
    uri = _store_with_a_run(tmp_path)
    exp_id = mlflow.MlflowClient(uri).get_experiment_by_name("toy_ui").experiment_id
    assert runs_page_urls(uri, "http://h:1") == [
        ("toy_ui", f"http://h:1/#/experiments/{exp_id}/runs?workflowType=machine_learning")]


def test_runs_pages_of_a_missing_sqlite_store_create_nothing(tmp_path):
    assert runs_page_urls(f"sqlite:///{tmp_path}/none.db", "http://h:1") == []
    assert not (tmp_path / "none.db").exists()


def test_installed_mlflow_ui_still_reads_the_workflow_type_parameter():
    """The printed URLs rely on the UI bundle's `workflowType` URL parameter; an MLflow upgrade that drops it
    fails here instead of silently landing users on GenAI traces again."""
    build = Path(mlflow.__file__).parent / "server" / "js" / "build" / "static" / "js"
    bundles = list(build.glob("main.*.js"))
    if not bundles:
        pytest.skip("this MLflow install has no UI bundle (mlflow-skinny)")
    text = bundles[0].read_text(errors="replace")
    key, value = ML_VIEW_QUERY.split("=")
    assert f'get("{key}")' in text and f'"{value}"' in text


def test_a_taken_port_is_an_error_before_starting(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        with pytest.raises(TrackingError, match=f"port {port} on 127.0.0.1 is taken.*--port N"):
            _check_port_free(port)
        t0 = time.monotonic()
        out = subprocess.run([sys.executable, "-m", "framework", "ui", "--port", str(port), "--tracking-uri",
                              f"sqlite:///{tmp_path}/mlflow.db"], cwd=ROOT, capture_output=True, text=True,
                             timeout=120)
    assert out.returncode == 2 and f"error: ui: port {port} on 127.0.0.1 is taken" in out.stderr
    assert "starting" not in out.stdout and time.monotonic() - t0 < 60


@pytest.mark.slow
def test_ui_answers_prints_runs_pages_and_sigterm_ends_every_child(tmp_path):
    uri, port = _store_with_a_run(tmp_path), _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "framework", "ui", "--port", str(port), "--tracking-uri", uri],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout], daemon=True).start()
    try:
        deadline, page = time.monotonic() + START_S, None
        while page is None and time.monotonic() < deadline and proc.poll() is None:
            try:
                line = lines.get(timeout=1)
            except queue.Empty:
                continue
            page = line.split(": ", 1)[1].strip() if line.startswith("  runs of toy_ui: ") else None
        assert page == f"http://127.0.0.1:{port}/#/experiments/1/runs?{ML_VIEW_QUERY}", "no runs page printed"
        assert urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5).status == 200
        children = _descendants(proc.pid)
        assert children, "the MLflow server is not a child of `framework ui`"
        os.kill(proc.pid, signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
        time.sleep(0.5)
        assert not [pid for pid in children if _alive(pid)], "MLflow processes outlived `framework ui`"
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", port), timeout=2).close()
    finally:
        if proc.poll() is None:  # an assertion failed: leave no server behind
            for pid in _descendants(proc.pid) | {proc.pid}:
                os.kill(pid, signal.SIGKILL)
