"""Run names: spec stem + what the run changed, short, distinct within an experiment, kept on resume; and the
active time (``perf/run_s``) that leaves out the downtime of a resumed run."""

import time

import mlflow
import pytest

from framework import checkpoint, naming
from framework.plugin_manager import collect_registries
from framework.runner import run
from framework.spec import load_spec
from framework.tracking import metric_history
from tests.framework.test_runner import SPEC

REGISTRIES = collect_registries()
QUIET = {"log": lambda m: None}


def _spec(*sets, smoke=True):
    return load_spec(SPEC, REGISTRIES, sets=list(sets), smoke=smoke)


def test_name_is_stem_plus_the_overrides_that_change_something():
    assert naming.run_name(_spec(smoke=False)) == "toy_synthetic"
    assert naming.run_name(_spec()) == "toy_synthetic smoke"
    # experiment and tracking keys say nothing about the variant; a --set equal to the file's value changes nothing
    name = naming.run_name(_spec("experiment=x", "tracking.system_metrics=false", "seed=0",
                                 "model.params.latent_dim=64", "loss.name=hinge"))
    assert name == "toy_synthetic smoke model.latent_dim=64 loss.name=hinge"


def test_long_names_abbreviate_every_override_instead_of_dropping_any():
    sets = [f"train.{k}={v}" for k, v in (("steps", 120), ("log_every", 1), ("checkpoint_every", 20),
                                          ("eval_every", 0), ("sample_every", 0), ("samples", 0))]
    name = naming.run_name(_spec(*sets, "dataset.params.size=64", "model.params.betas=[0.5, 0.999999]"))
    assert name == ("toy_synthetic smoke t.steps=120 t.log_every=1 t.eval_every=0 t.sample_every=0 t.samples=0 "
                    "t.checkpoint_every=20 d.size=64 m.betas.0=0.5 m.betas.1=0.999999")
    assert naming.run_name(_spec("train.steps=120")) == "toy_synthetic smoke train.steps=120"  # short: in full
    assert naming.abbreviate("dataset.params.source", "/data/audio/piano") == "d.source=/data/audio…"


def test_variant_names_show_the_grid_values_even_where_they_equal_the_file():
    spec = _spec("model.params.n_critic=2")
    assert naming.variant_name(spec, {"model.params.n_critic": 2, "loss.name": "wgan_gp"}) == \
        "toy_synthetic smoke model.n_critic=2 loss.name=wgan_gp"


def _client():
    return mlflow.MlflowClient()


def test_runs_of_one_spec_get_distinct_names_and_a_resumed_run_keeps_its_name():
    sets = ("experiment=naming_test", "tracking.system_metrics=false", "train.samples=0")
    first, second = (run(_spec(*sets), REGISTRIES, **QUIET) for _ in range(2))
    names = [_client().get_run(r.run_id).info.run_name for r in (first, second)]
    assert names == ["toy_synthetic smoke train.samples=0", "toy_synthetic smoke train.samples=0 #2"]
    resumed = run(_spec(*sets, "train.steps=9"), REGISTRIES, resume_run_id=first.run_id, **QUIET)
    assert resumed.run_id == first.run_id and resumed.step == 9
    assert _client().get_run(first.run_id).info.run_name == names[0]


def test_run_s_counts_the_time_spent_running_not_the_downtime_before_a_resume():
    sets = ("experiment=run_s_test", "tracking.system_metrics=false", "train.samples=0")
    first = run(_spec(*sets), REGISTRIES, **QUIET)
    session1 = checkpoint.load(first.run_dir / checkpoint.FILENAME)["run_s"]
    assert 0 < session1 == pytest.approx(first.metrics["perf/run_s"], abs=0.5)
    downtime = 3.0
    time.sleep(downtime)
    resumed = run(_spec(*sets, "train.steps=9"), REGISTRIES, resume_run_id=first.run_id, **QUIET)
    info = _client().get_run(first.run_id).info
    total = resumed.metrics["perf/run_s"]
    assert total > session1 and _client().get_run(first.run_id).data.metrics["perf/run_s"] == total
    assert total < (info.end_time - info.start_time) / 1000 - downtime  # end - start counts the sleep; run_s not
    steps = [s for s, _ in metric_history(first.run_id, "perf/run_s")]
    assert steps[-1] == 9 and 6 in steps
