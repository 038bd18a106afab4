"""Run records tell the truth under faults (issue 26): a closed stdout, an unwritable runs or artifact folder, a
failing checkpoint, energy record or traceback write; a resume after SIGTERM logs the uninterrupted curve;
artifacts live beside their sqlite store; ``generate`` keeps downloads in its cache; the inputs that used to give
tracebacks (a spec that is not UTF-8, an unknown device, a store ``ui`` cannot open, an unreachable database)
give one line."""

import os
import re
import signal
import socket
import subprocess
import sys
import time
import types
from pathlib import Path

import mlflow
import pytest

from framework import checkpoint, hookimpl, runner
from framework.cli import main
from framework.energy import EnergyMeter
from framework.errors import FrameworkError, TrackingError
from framework.plugin_manager import collect_registries, make_plugin_manager
from framework.runner import run, runs_dir
from framework.spec import load_spec
from framework.tracking import artifact_root, check_store, metric_history
from plugins.models.toy_gan import ToyGan

ROOT = Path(__file__).resolve().parents[2]
SPEC = ROOT / "experiments" / "toy_synthetic.yaml"
QUIET = {"log": lambda m: None}


class SigtermGan(ToyGan):
    """toy_gan that sends its own process SIGTERM during step ``kill_at`` (None: never)."""

    kill_at: int | None = None

    def train_step(self, batch, step):
        if step == self.kill_at:
            os.kill(os.getpid(), signal.SIGTERM)
        return super().train_step(batch, step)


@pytest.fixture(scope="module")
def registries():
    mod = types.ModuleType("fault_plugins")
    mod.register_models = hookimpl(lambda register: register("sigterm_gan", SigtermGan))
    pm = make_plugin_manager()
    pm.register(mod, name="fault_plugins")
    return collect_registries(pm)


def client():
    return mlflow.MlflowClient(os.environ["MLFLOW_TRACKING_URI"])


def _spec(registries, experiment, *sets):
    return load_spec(SPEC, registries, smoke=True, sets=[f"experiment={experiment}", "tracking.system_metrics=false",
                                                         *sets])


def _new_run_dir(before):
    (run_dir,) = set(runs_dir().glob("*")) - before
    return run_dir


def _artifacts(run_id):
    return {a.path for a in client().list_artifacts(run_id)}


def test_a_closed_stdout_and_stderr_do_not_stop_training():
    """`run ... 2>&1 | head -1`: the run goes on silently and ends FINISHED with its checkpoint."""
    proc = subprocess.Popen([sys.executable, "-m", "framework", "run", str(SPEC), "--smoke", "--set",
                             "tracking.system_metrics=false"], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    for line in proc.stdout:
        if found := re.match(r"MLflow run (\w+) ", line):
            break
    proc.stdout.close()  # the reader goes away, as `head -1` does
    assert proc.wait(timeout=300) == 0
    assert client().get_run(found.group(1)).info.status == "FINISHED"
    assert "checkpoints" in _artifacts(found.group(1))


@pytest.mark.parametrize("kind", ["under a file", "read-only"])
def test_an_unwritable_runs_folder_is_one_line_before_anything_is_built(tmp_path, monkeypatch, capsys, kind):
    if kind == "read-only":
        if os.geteuid() == 0:
            pytest.skip("root writes into read-only folders")
        (tmp_path / "ro").mkdir(mode=0o500)
        folder, why = tmp_path / "ro" / "runs", "PermissionError"
    else:
        (tmp_path / "file").write_text("")
        folder, why = tmp_path / "file" / "runs", "NotADirectoryError"
    monkeypatch.setenv("FRAMEWORK_RUNS_DIR", str(folder))
    assert main(["run", str(SPEC), "--smoke", "--set", "experiment=faults_runs_folder"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: the runs folder {folder} is not writable ({why}: ") and err.count("\n") == 1
    assert err.endswith("make it writable, or set FRAMEWORK_RUNS_DIR to a folder that is\n")
    assert client().get_experiment_by_name("faults_runs_folder") is None  # no run, not even its experiment


def test_an_unwritable_artifact_folder_is_one_line_before_anything_is_built(tmp_path, capsys):
    (tmp_path / "file").write_text("")
    exp = client().create_experiment("faults_artifacts", artifact_location=str(tmp_path / "file" / "art"))
    assert main(["run", str(SPEC), "--smoke", "--set", "experiment=faults_artifacts"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: the artifact folder {tmp_path}/file/art of experiment 'faults_artifacts' in "
                          f"{os.environ['MLFLOW_TRACKING_URI']} is not writable (NotADirectoryError: ")
    assert err.count("\n") == 1 and client().search_runs([exp]) == []


def test_a_failing_energy_record_ends_the_run_failed_not_finished(registries, monkeypatch):
    def write(self, folder):
        raise PermissionError(13, "Permission denied", str(folder / "energy.json"))

    monkeypatch.setattr(EnergyMeter, "write", write)
    before = set(runs_dir().glob("*"))
    with pytest.raises(FrameworkError, match=r"writing .*/energy.json failed \(PermissionError: \[Errno 13\] "
                                             r"Permission denied"):
        run(_spec(registries, "faults_energy"), registries, **QUIET)
    run_dir = _new_run_dir(before)
    r = client().get_run(run_dir.name)
    assert r.info.status == "FAILED" and any(k.startswith("energy/") for k in r.data.metrics)  # logged first
    assert _artifacts(run_dir.name) >= {"traceback.txt"} and "checkpoints" not in _artifacts(run_dir.name)
    assert "PermissionError" in (run_dir / "traceback.txt").read_text()


def test_the_first_error_is_shown_and_later_ones_noted_and_the_run_still_ends_failed(registries, monkeypatch,
                                                                                     capsys):
    """The issue's read-only runs folder after training started: the final checkpoint, the energy record and the
    traceback all fail. The checkpoint's error is the one shown, the others are notes under it."""
    real_save = checkpoint.save

    def save(path, state):
        if state["step"] == 6:
            raise checkpoint.WriteError(path, "PermissionError: [Errno 13] Permission denied")
        return real_save(path, state)

    def fail(*args):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(checkpoint, "save", save)
    monkeypatch.setattr(EnergyMeter, "write", fail)
    monkeypatch.setattr(runner, "_log_traceback", fail)
    before = set(runs_dir().glob("*"))
    assert main(["run", str(SPEC), "--smoke", "--set", "experiment=faults_three", "--set",
                 "tracking.system_metrics=false"]) == 2
    run_dir = _new_run_dir(before)
    err = capsys.readouterr().err
    lines = err[err.index("error: "):].splitlines()  # (MLflow's own log lines go to stderr too)
    assert lines[0] == (f"error: PermissionError: [Errno 13] Permission denied while writing the checkpoint of step "
                        f"6; the checkpoint of step 3 ({run_dir / 'checkpoint.pt'}) is intact")
    assert lines[1].startswith(f"  then, while ending the run: FrameworkError: writing {run_dir}/energy.json failed")
    assert lines[2].startswith(f"  then, while ending the run: FrameworkError: writing {run_dir}/traceback.txt "
                               f"failed (PermissionError") and len(lines) == 3
    assert client().get_run(run_dir.name).info.status == "FAILED"


def test_a_resume_after_sigterm_logs_the_curve_of_the_uninterrupted_run(registries, monkeypatch):
    """SIGTERM between two log steps: no extra point where it stopped, and the window that spans the stop is
    averaged over all of its steps (the log window travels in the checkpoint)."""
    spec = _spec(registries, "faults_resume_curve", "model.name=sigterm_gan", "train.steps=12", "train.log_every=4",
                 "train.checkpoint_every=0", "train.eval_every=0", "train.samples=0")
    monkeypatch.setattr(SigtermGan, "kill_at", 5)  # stops after step 6 (0-based step 5 is the 6th)
    first = run(spec, registries, **QUIET)
    assert first.status == "KILLED" and checkpoint.load(first.run_dir / "checkpoint.pt")["step"] == 6
    assert run(spec, registries, resume_run_id=first.run_id, **QUIET).status == "FINISHED"
    monkeypatch.setattr(SigtermGan, "kill_at", None)
    reference = run(spec, registries, **QUIET)
    keys = [k for k in client().get_run(reference.run_id).data.metrics if k.startswith("train/")]
    assert keys
    for key in keys:
        expected = metric_history(reference.run_id, key)
        assert [s for s, _ in expected] == [4, 8, 12]
        assert metric_history(first.run_id, key) == expected, key


def test_new_experiments_keep_artifacts_beside_the_sqlite_store_and_existing_ones_keep_theirs(registries, tmp_path,
                                                                                              monkeypatch):
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    db = Path(os.environ["MLFLOW_TRACKING_URI"].removeprefix("sqlite:///"))
    new = run(_spec(registries, "faults/new location"), registries, **QUIET)
    assert client().get_run(new.run_id).info.artifact_uri == \
        f"{db}-artifacts/faults_new_location/{new.run_id}/artifacts"
    assert "checkpoints" in _artifacts(new.run_id)
    client().create_experiment("faults_old_location", artifact_location=str(tmp_path / "mlruns"))  # as MLflow did
    old = run(_spec(registries, "faults_old_location"), registries, **QUIET)
    assert client().get_run(old.run_id).info.artifact_uri.startswith(f"{tmp_path}/mlruns/")
    assert list((tmp_path / "elsewhere").iterdir()) == []  # nothing in the working folder
    assert artifact_root("sqlite:////data/m.db") == Path("/data/m.db-artifacts") != artifact_root(
        "sqlite:////data/n.db")


def test_generate_from_another_folder_uses_the_cache_says_what_it_used_and_follows_a_resumed_run(
        registries, tmp_path, monkeypatch, capsys):
    from framework.generate import cache_dir, generate

    first = run(_spec(registries, "faults_generate"), registries, **QUIET)
    (tmp_path / "work").mkdir()
    monkeypatch.chdir(tmp_path / "work")
    monkeypatch.setenv("FRAMEWORK_RUNS_DIR", str(tmp_path / "no_runs"))  # no local checkpoint: from the store

    def gen():
        generate(run_id=first.run_id, checkpoint_path=None, n=1, seconds=None, truncation=None, out=Path("out"),
                 device="cpu", batch=1, tracking_uri=None)
        return capsys.readouterr().out

    cached = cache_dir() / "checkpoints" / first.run_id / "checkpoint.pt"
    assert f"run {first.run_id}: checkpoint {cached} (logged to the store {os.environ['MLFLOW_TRACKING_URI']})" \
        in gen()
    stamp = cached.stat().st_mtime_ns
    gen()
    assert cached.stat().st_mtime_ns == stamp  # reused, not downloaded again
    assert sorted(p.name for p in Path().iterdir()) == ["out"] and not (tmp_path / "no_runs").exists()

    monkeypatch.setenv("FRAMEWORK_RUNS_DIR", str(tmp_path / "resumed"))
    run(_spec(registries, "faults_generate", "train.steps=8"), registries, resume_run_id=first.run_id, **QUIET)
    monkeypatch.setenv("FRAMEWORK_RUNS_DIR", str(tmp_path / "no_runs"))
    gen()  # the run ended again after the download: the cached copy is stale
    assert checkpoint.load(cached)["step"] == 8


def test_a_spec_that_is_not_utf8_is_one_line(tmp_path, capsys):
    bad = tmp_path / "latin1.yaml"
    bad.write_bytes("experiment: café\n".encode("latin-1"))
    for command in ("validate", "run"):
        assert main([command, str(bad)]) == 2
        assert capsys.readouterr().err == f"error: {bad}: not UTF-8 text (byte 0xe9 at offset 15); a spec is a " \
                                          f"YAML text file\n"


def test_an_unknown_device_is_one_line(capsys):
    assert main(["run", str(SPEC), "--smoke", "--device", "gpu"]) == 2
    assert capsys.readouterr().err == "error: unknown device 'gpu'; use auto, cpu, cuda or cuda:N\n"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ui_on_a_store_it_cannot_open_is_one_line(capsys):
    port = str(_free_port())
    assert main(["ui", "--tracking-uri", "http://127.0.0.1:1", "--port", port]) == 2
    assert capsys.readouterr().err == "error: ui serves a store (a sqlite file, a folder, a database); " \
                                      "http://127.0.0.1:1 is an MLflow server already: open it in a browser\n"
    assert main(["ui", "--tracking-uri", "postgresql://u:p@127.0.0.1:1/db", "--port", port]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and re.match(
        r"error: the tracking store postgresql://u:p@127.0.0.1:1/db needs the database driver 'psycopg2?', which is "
        r"not installed: pip install |error: MLflow tracking store .* is not reachable", err)


def test_an_unreachable_database_fails_within_seconds(tmp_path, monkeypatch):
    """With the driver installed and nothing listening, MLflow tries ten times over 1 min 42 s; checking a store
    tries once. (A sqlite engine that cannot open its file stands in for the server that does not answer.)"""
    import sqlalchemy
    from mlflow.store.db import utils

    monkeypatch.setattr(utils, "create_sqlalchemy_engine",
                        lambda uri: sqlalchemy.create_engine(f"sqlite:///{tmp_path}/no/such/folder/x.db"))
    start = time.monotonic()
    with pytest.raises(TrackingError, match=r"MLflow tracking store postgresql://u@127.0.0.1:1/db is not reachable "
                                            r"\(OperationalError: .*\); start the server"):
        check_store("postgresql://u@127.0.0.1:1/db")
    assert time.monotonic() - start < 10 and utils.MAX_RETRY_COUNT == 10
