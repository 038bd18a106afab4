"""The runner end to end on CPU: MLflow records, resume after kill -9 with identical losses, SIGTERM,
NaN losses (and the checkpoint they leave), exceptions, a full disk while checkpointing, atomic code-free
checkpoints, resuming with the stored spec."""

import os
import re
import signal
import subprocess
import sys
import time
import types
from pathlib import Path

import mlflow
import pytest
import torch

from framework import checkpoint, hookimpl
from framework.errors import CheckpointError, FrameworkError, NonFiniteLossError, TrackingError
from framework.plugin_manager import collect_registries, make_plugin_manager
from framework.runner import run, runs_dir
from framework.spec import load_spec
from framework.tracking import metric_history
from plugins.models.toy_gan import ToyGan

ROOT = Path(__file__).resolve().parents[2]
SPEC = ROOT / "experiments" / "toy_synthetic.yaml"


class NanGan(ToyGan):
    """toy_gan whose losses turn NaN from step 5 on."""

    def train_step(self, batch, step):
        out = super().train_step(batch, step)
        if step >= 5:
            out["d/loss"] = out["d/loss"] * float("nan")
        return out


class BoomGan(ToyGan):
    def train_step(self, batch, step):
        if step == 2:
            raise RuntimeError("boom at step 2")
        return super().train_step(batch, step)


@pytest.fixture(scope="module")
def registries():
    test_plugins = types.ModuleType("test_plugins")

    def register_models(register):
        register("nan_gan", NanGan)
        register("boom_gan", BoomGan)

    test_plugins.register_models = hookimpl(register_models)
    pm = make_plugin_manager()
    pm.register(test_plugins, name="test_plugins")
    return collect_registries(pm)


def client():
    return mlflow.MlflowClient(os.environ["MLFLOW_TRACKING_URI"])


def test_smoke_run_records_tags_params_metrics_and_spec(registries):
    spec = load_spec(SPEC, registries, smoke=True)
    result = run(spec, registries, log=lambda m: None)
    assert result.status == "FINISHED" and result.step == 6
    r = client().get_run(result.run_id)
    assert r.info.status == "FINISHED"
    assert r.data.tags["spec.sha256"] == spec.sha256 and r.data.tags["device"] == "cpu"
    assert r.data.tags["plugin.models.toy_gan"].startswith("plugins.models.toy_gan")
    assert "not measured" in r.data.tags["energy.gpu_source"]
    assert r.data.params["model.params.latent_dim"] == "32" and r.data.params["train.steps"] == "6"
    # logged every 2 steps, and at the checkpoint of step 3 (losses are checked before every checkpoint)
    assert [s for s, _ in metric_history(result.run_id, "train/d/loss")] == [2, 3, 4, 6]
    assert [s for s, _ in metric_history(result.run_id, "eval/moments/std_diff")] == [3, 6]
    artifacts = {a.path for a in client().list_artifacts(result.run_id)}
    assert {"spec.yaml", "samples", "checkpoints"} <= artifacts
    state = checkpoint.load(result.run_dir / "checkpoint.pt")  # weights_only=True
    assert state["step"] == 6 and state["spec"] == spec.resolved


def test_class_conditional_model_gets_the_labels_of_its_batches(registries, monkeypatch, tmp_path):
    """A model with num_classes gets each training batch's labels and, in evaluation, the real batch's labels;
    `generate --label` draws one class."""
    from framework.data import StepBatchSampler
    from plugins.models.dcgan import Dcgan

    seen = {"train": [], "sample": []}
    train_step, sample = Dcgan.train_step, Dcgan.sample

    def spy_step(self, batch, step, labels=None):
        seen["train"].append(labels.tolist())
        return train_step(self, batch, step, labels=labels)

    def spy_sample(self, n, truncation=None, labels=None):
        seen["sample"].append(None if labels is None else labels.tolist())
        return sample(self, n, truncation, labels)

    monkeypatch.setattr(Dcgan, "train_step", spy_step)
    monkeypatch.setattr(Dcgan, "sample", spy_sample)
    spec = load_spec(ROOT / "experiments" / "mnist_cdcgan.yaml", registries, smoke=True,
                     sets=["train.eval_every=2", "metrics=[{name: moments}]", "tracking.system_metrics=false"])
    result = run(spec, registries, log=lambda m: None)
    assert result.status == "FINISHED"
    tr = spec.resolved["train"]
    order = iter(StepBatchSampler(spec.resolved["dataset"]["params"]["size"], tr["batch_size"], seed=spec.seed))
    assert seen["train"] == [[i % 10 for i in next(order)] for _ in range(tr["steps"])]  # synthetic: i % 10
    # evaluations at steps 2 and 4 draw the eval split's first 8 classes; the 4-item sample grid class j in column j
    assert seen["sample"] == [list(range(8)), list(range(8)), [0, 1, 2, 3]]
    seen["sample"].clear()
    from framework.generate import generate

    generate(run_id=None, checkpoint_path=str(result.run_dir / "checkpoint.pt"), n=3, seconds=None, truncation=None,
             out=tmp_path, device="cpu", batch=2, tracking_uri=None, label=7)
    assert seen["sample"] == [[7, 7], [7]] and len(list(tmp_path.glob("grid*.png"))) == 2
    with pytest.raises(FrameworkError, match="classes 0 .. 9"):
        generate(run_id=None, checkpoint_path=str(result.run_dir / "checkpoint.pt"), n=1, seconds=None,
                 truncation=None, out=tmp_path, device="cpu", batch=1, tracking_uri=None, label=10)


def _popen(*args):
    return subprocess.Popen([sys.executable, "-m", "framework", *args], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)


def _wait_for_checkpoint(before: set, proc, min_step: int, timeout=120) -> Path:
    deadline = time.time() + timeout
    while time.time() < deadline:
        for d in set(runs_dir().glob("*")) - before:
            ck = d / "checkpoint.pt"
            if ck.is_file() and checkpoint.load(ck)["step"] >= min_step:
                return ck
        if proc.poll() is not None:
            raise AssertionError(f"run ended before a checkpoint: {proc.stdout.read()}")
        time.sleep(0.05)
    raise AssertionError("no checkpoint in time")


SETS = ["--set", "train.steps=120", "--set", "train.log_every=1", "--set", "train.checkpoint_every=20",
        "--set", "train.eval_every=0", "--set", "train.sample_every=0", "--set", "train.samples=0",
        "--set", "tracking.system_metrics=false", "--set", "dataset.params.size=64"]


def test_eval_at_start_logs_and_samples_the_untrained_model_at_step_0(registries):
    spec = load_spec(SPEC, registries, sets=["train.eval_at_start=true"], smoke=True)
    result = run(spec, registries, log=lambda m: None)
    history = metric_history(result.run_id, "eval/moments/std_diff")
    assert [s for s, _ in history] == [0, 3, 6]
    assert history[0][1] != history[-1][1]  # a real evaluation of another model, not a copy
    assert sorted(p.name for p in (result.run_dir / "samples").glob("step0000000*"))  # samples of step 0 too


def test_kill9_then_resume_continues_same_run_with_identical_losses(registries):
    runs_dir().mkdir(parents=True, exist_ok=True)
    before = set(runs_dir().glob("*"))
    proc = _popen("run", str(SPEC), *SETS)
    ck = _wait_for_checkpoint(before, proc, min_step=40)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    run_id = ck.parent.name
    resumed_from = checkpoint.load(ck)["step"]
    assert 40 <= resumed_from < 120
    out = subprocess.run([sys.executable, "-m", "framework", "run", str(SPEC), *SETS, "--resume", run_id],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"resuming run {run_id} from step {resumed_from}" in out.stdout

    spec = load_spec(SPEC, registries, sets=[s for s in SETS if s != "--set"])
    reference = run(spec, registries, log=lambda m: None)
    resumed = dict(metric_history(run_id, "train/d/loss"))
    expected = dict(metric_history(reference.run_id, "train/d/loss"))
    assert client().get_run(run_id).info.status == "FINISHED"
    after = [s for s in expected if s > resumed_from]
    assert after and all(resumed[s] == expected[s] for s in after), "resumed losses differ from uninterrupted run"


def test_sigterm_checkpoints_ends_killed_and_prints_a_resume_command_that_works_as_is():
    runs_dir().mkdir(parents=True, exist_ok=True)
    before = set(runs_dir().glob("*"))
    proc = _popen("run", str(SPEC), *SETS, "--set", "train.steps=100000")
    ck = _wait_for_checkpoint(before, proc, min_step=20)
    os.kill(proc.pid, signal.SIGTERM)
    output, _ = proc.communicate(timeout=120)
    assert proc.returncode == 1, output
    assert "SIGTERM: checkpoint saved" in output
    assert client().get_run(ck.parent.name).info.status == "KILLED"
    stopped = checkpoint.load(ck)["step"]
    assert stopped >= 20
    hint = re.search(r"continue it with: (.*)\)$", output, re.M).group(1)
    assert f"python -m framework run --resume {ck.parent.name}" in hint and "--set" not in hint

    # the hint, pasted into a shell in the same folder (no spec, no --set): resumes; stopped again by SIGTERM
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    env.pop("FRAMEWORK_RUNS_DIR")  # the hint carries it
    again = subprocess.Popen(["bash", "-c", hint], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             text=True, start_new_session=True, env=env)
    lines = []
    for line in again.stdout:
        lines.append(line)
        if f"resuming run {ck.parent.name} from step {stopped}" in line:
            break
    time.sleep(0.5)
    os.killpg(again.pid, signal.SIGTERM)
    rest, _ = again.communicate(timeout=120)
    assert again.returncode == 1 and "SIGTERM: checkpoint saved" in rest, "".join(lines) + rest
    assert checkpoint.load(ck)["step"] > stopped
    assert client().get_run(ck.parent.name).info.status == "KILLED"


def test_resume_uses_the_stored_spec_and_allows_only_train_steps(registries, capsys):
    from framework.cli import main
    from framework.errors import SpecError
    from framework.runner import resume_spec

    spec = load_spec(SPEC, registries, smoke=True, sets=["model.params.hidden=16", "tracking.system_metrics=false"])
    first = run(spec, registries, log=lambda m: None)
    resumed = resume_spec(first.run_id, registries, ["train.steps=8", "model.params.hidden=16"])  # a repeated value
    assert resumed.train.steps == 8 and resumed.resolved["model"] == spec.resolved["model"]
    with pytest.raises(SpecError, match=r"--resume .*: a resumed run keeps the spec it was started with, but the "
                                        r"--set options change model.params.lr: 0.0002 -> 0.1; only train.steps"):
        resume_spec(first.run_id, registries, ["model.params.lr=0.1"])
    assert main(["run", "--resume", first.run_id, "--set", "train.steps=8"]) == 0  # no spec, no original --sets
    assert f"run {first.run_id}: FINISHED after 8 steps" in capsys.readouterr().out
    assert checkpoint.load(first.run_dir / "checkpoint.pt")["step"] == 8
    assert main(["run", str(SPEC), "--resume", first.run_id]) == 0  # the spec file without the --sets: accepted
    assert "is not read again" in capsys.readouterr().out


def test_a_checkpoint_from_before_defaults_were_recorded_still_resumes(registries):
    """Checkpoints written before the resolved spec filled in plugin defaults store the spec as written; resuming
    one with the same file must not count every default as a change."""
    from framework.spec import resolve

    spec = load_spec(SPEC, registries, smoke=True, sets=["tracking.system_metrics=false"])
    first = run(spec, registries, log=lambda m: None)
    path = first.run_dir / "checkpoint.pt"
    state = checkpoint.load(path)
    state["spec"], _ = resolve(SPEC, ["tracking.system_metrics=false"], smoke=True)  # no defaults filled in
    assert state["spec"] != spec.resolved
    checkpoint.save(path, state)
    longer = load_spec(SPEC, registries, smoke=True, sets=["tracking.system_metrics=false", "train.steps=8"])
    assert run(longer, registries, resume_run_id=first.run_id, log=lambda m: None).step == 8


def test_nan_loss_stops_run_and_keeps_last_good_checkpoint(registries):
    spec = load_spec(SPEC, registries, smoke=True, sets=[
        "model.name=nan_gan", "train.steps=10", "train.log_every=1", "train.checkpoint_every=4",
        "tracking.system_metrics=false"])
    before = set(runs_dir().glob("*"))
    with pytest.raises(NonFiniteLossError, match="non-finite loss at step 6: train/d/loss=nan") as err:
        run(spec, registries, log=lambda m: None)
    (run_dir,) = set(runs_dir().glob("*")) - before
    assert f"the checkpoint of step 4 ({run_dir / 'checkpoint.pt'}) is intact" in str(err.value)
    state = checkpoint.load(run_dir / "checkpoint.pt")
    assert state["step"] == 4
    assert all(torch.isfinite(v).all() for v in state["model"]["modules"].values())
    assert client().get_run(run_dir.name).info.status == "FAILED"


def test_nan_before_the_first_checkpoint_says_there_is_none(registries):
    spec = load_spec(SPEC, registries, smoke=True, sets=[
        "model.name=nan_gan", "train.steps=10", "train.log_every=1", "train.checkpoint_every=8",
        "tracking.system_metrics=false"])
    before = set(runs_dir().glob("*"))
    with pytest.raises(NonFiniteLossError, match=r"no checkpoint was written before \(train.checkpoint_every=8\), "
                                                 r"so there is none to resume from"):
        run(spec, registries, log=lambda m: None)
    (run_dir,) = set(runs_dir().glob("*")) - before
    assert not (run_dir / "checkpoint.pt").exists()


# the RuntimeError that torch.save raises when the disk fills up under its zip writer
SHORT_WRITE = "[enforce fail at inline_container.cc:672] . unexpected pos 14336 vs 14228"


def _failing_save(monkeypatch, error, fail_from_call):
    """torch.save as the checkpoint module calls it: real for the first calls, then it writes a part of the
    file and raises ``error``, as a full disk does."""
    real, calls = torch.save, []

    def save(obj, f, *args, **kwargs):
        calls.append(1)
        if len(calls) < fail_from_call:
            return real(obj, f, *args, **kwargs)
        f.write(b"PK\x03\x04 partial")
        raise error

    monkeypatch.setattr(checkpoint.torch, "save", save)


@pytest.mark.parametrize("error", [RuntimeError(SHORT_WRITE), OSError(28, "No space left on device")],
                         ids=["zip-writer", "ENOSPC"])
def test_full_disk_during_a_checkpoint_is_a_clear_error_and_keeps_the_previous_one(registries, monkeypatch, error):
    spec = load_spec(SPEC, registries, smoke=True, sets=["train.steps=6", "train.checkpoint_every=2",
                                                         "train.eval_every=0", "tracking.system_metrics=false"])
    _failing_save(monkeypatch, error, fail_from_call=2)  # the checkpoint of step 2 is written, step 4's fails
    before = set(runs_dir().glob("*"))
    with pytest.raises(CheckpointError) as err:
        run(spec, registries, log=lambda m: None)
    (run_dir,) = set(runs_dir().glob("*")) - before
    message = str(err.value)
    assert message.startswith("no space left on /") and "MiB free" in message
    assert message.endswith(f"while writing the checkpoint of step 4; the checkpoint of step 2 "
                            f"({run_dir / 'checkpoint.pt'}) is intact")
    monkeypatch.undo()
    assert checkpoint.load(run_dir / "checkpoint.pt")["step"] == 2
    assert sorted(p.name for p in run_dir.iterdir() if p.name.endswith(".tmp")) == []  # no partial file left
    assert client().get_run(run_dir.name).info.status == "FAILED"


def test_full_disk_at_the_first_checkpoint_says_there_is_none(registries, monkeypatch):
    spec = load_spec(SPEC, registries, smoke=True, sets=["tracking.system_metrics=false"])
    _failing_save(monkeypatch, OSError(28, "No space left on device"), fail_from_call=1)
    with pytest.raises(CheckpointError, match="while writing the checkpoint of step 3; no checkpoint was written "
                                              "before"):
        run(spec, registries, log=lambda m: None)


def test_other_write_failures_name_the_cause(tmp_path, monkeypatch):
    _failing_save(monkeypatch, OSError(13, "Permission denied"), fail_from_call=1)
    with pytest.raises(checkpoint.WriteError, match=r"PermissionError: \[Errno 13\] Permission denied while "
                                                    r"writing "):
        checkpoint.save(tmp_path / "c.pt", {"step": 1})
    assert list(tmp_path.iterdir()) == []


def test_exception_ends_failed_with_traceback_artifact(registries):
    spec = load_spec(SPEC, registries, smoke=True, sets=["model.name=boom_gan", "tracking.system_metrics=false"])
    before = set(runs_dir().glob("*"))
    with pytest.raises(RuntimeError, match="boom at step 2"):
        run(spec, registries, log=lambda m: None)
    (run_dir,) = set(runs_dir().glob("*")) - before
    assert client().get_run(run_dir.name).info.status == "FAILED"
    assert "traceback.txt" in {a.path for a in client().list_artifacts(run_dir.name)}
    assert "boom at step 2" in (run_dir / "traceback.txt").read_text()


def test_an_empty_eval_split_fails_before_step_0(registries, tmp_path):
    """A one-file audio_folder has no validation split: the run stops before training, not after it."""
    import numpy as np
    import soundfile as sf

    (tmp_path / "audio").mkdir()
    sf.write(tmp_path / "audio" / "only.wav", np.full((33024, 2), 0.1), 22016)  # 1.5 s
    spec = load_spec(SPEC, registries, smoke=True, sets=[
        "dataset={name: audio_folder, params: {source: %s, cache: %s, window_samples: 4096, workers: 1}}"
        % (tmp_path / "audio", tmp_path / "cache"), "tracking.system_metrics=false"])
    assert spec.train.eval_split == "validation"
    before = set(runs_dir().glob("*"))
    with pytest.raises(FrameworkError) as err:
        run(spec, registries, log=lambda m: None)
    message = str(err.value)
    assert message.startswith("dataset 'audio_folder' split 'validation' (train.eval_split, for the metrics): ")
    assert f"{tmp_path / 'cache'}: split 'validation' is empty" in message
    assert "set train.eval_split to a split that has data" in message
    (run_dir,) = set(runs_dir().glob("*")) - before
    assert metric_history(run_dir.name, "train/d/loss") == []  # not one step was trained
    assert not (run_dir / "checkpoint.pt").exists()


def test_checkpoint_write_is_atomic_and_loading_runs_no_code(tmp_path):
    path = tmp_path / "c.pt"
    checkpoint.save(path, {"step": 1, "rng": checkpoint.rng_state()})
    with pytest.raises(ZeroDivisionError):
        checkpoint.save(path, {"step": 2, "bad": _Boom()})
    assert checkpoint.load(path)["step"] == 1  # the old file survives a failed write
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]  # no temporary left behind

    evil = tmp_path / "evil.pt"
    torch.save({"format": 1, "x": _Evil()}, evil)
    with pytest.raises(Exception, match="not a readable framework checkpoint"):
        checkpoint.load(evil)


class _Boom:
    def __reduce__(self):
        raise ZeroDivisionError


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_generate_from_run_writes_files(registries, tmp_path):
    spec = load_spec(SPEC, registries, smoke=True, sets=["tracking.system_metrics=false"])
    result = run(spec, registries, log=lambda m: None)
    out = subprocess.run([sys.executable, "-m", "framework", "generate", "--run", result.run_id, "--n", "3",
                          "--batch", "2", "--seconds", "0.02", "--out", str(tmp_path)], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    wavs = sorted(tmp_path.glob("*.wav"))
    assert [w.name for w in wavs] == ["sample_0000.wav", "sample_0001.wav", "sample_0002.wav"]
    import soundfile as sf

    data, rate = sf.read(wavs[0])
    assert rate == 22016 and data.shape == (round(0.02 * 22016), 2)
    bad = subprocess.run([sys.executable, "-m", "framework", "generate", "--run", "nope", "--out", str(tmp_path)],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "no checkpoint" in bad.stderr
    from framework.generate import generate

    with pytest.raises(FrameworkError, match="unconditional"):  # --label of a model without classes
        generate(run_id=None, checkpoint_path=str(result.run_dir / "checkpoint.pt"), n=1, seconds=None,
                 truncation=None, out=tmp_path, device="cpu", batch=1, tracking_uri=None, label=3)


def test_generate_and_resume_from_another_folder_name_the_store_and_create_none(registries, tmp_path, monkeypatch):
    from framework.generate import generate
    from framework.runner import resume_spec

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    monkeypatch.setenv("FRAMEWORK_RUNS_DIR", str(tmp_path / "runs"))
    want = (rf"run 0123abcd: no checkpoint at {tmp_path / 'runs'}/0123abcd/checkpoint.pt, and the tracking store "
            rf"sqlite:///mlflow.db does not exist \(no {tmp_path}/mlflow.db\); point at the store the run was logged "
            rf"to with --tracking-uri URI or MLFLOW_TRACKING_URI, or run from the folder that holds it")
    with pytest.raises(CheckpointError, match=want):
        generate(run_id="0123abcd", checkpoint_path=None, n=1, seconds=None, truncation=None, out=tmp_path / "o",
                 device="cpu", batch=1, tracking_uri=None)
    with pytest.raises(CheckpointError, match=want):
        resume_spec("0123abcd", registries)
    with pytest.raises(CheckpointError, match="the tracking store file:"):
        generate(run_id="0123abcd", checkpoint_path=None, n=1, seconds=None, truncation=None, out=tmp_path / "o",
                 device="cpu", batch=1, tracking_uri=f"file:{tmp_path}/mlruns")
    spec = load_spec(SPEC, registries, smoke=True)
    with pytest.raises(TrackingError, match="the tracking store sqlite:///mlflow.db does not exist"):
        run(spec, registries, resume_run_id="0123abcd", log=lambda m: None)
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no mlflow.db, no mlruns/, no runs/
