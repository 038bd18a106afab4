"""Sweeps (validated up front, failures recorded, finished variants skipped on re-run) and the
quality-vs-energy report on a hand-made MLflow store (Pareto front with ties and missing metrics,
exactly the differing params, missing energy reported as missing)."""

import mlflow
import pytest

from framework.errors import SpecError
from framework.plugin_manager import collect_registries
from framework.report import collect, differing_params, pareto_front, report
from framework.sweep import expand, parse_grid, run_sweep
from tests.framework.test_runner import SPEC

REGISTRIES = collect_registries()


def test_pareto_front_with_ties_and_domination():
    pts = [(1.0, 5.0), (2.0, 3.0), (2.0, 3.0), (3.0, 3.0), (4.0, 1.0), (5.0, 6.0)]
    assert pareto_front(pts) == [True, True, True, False, True, False]
    assert pareto_front([]) == [] and pareto_front([(1.0, 1.0)]) == [True]


def test_parse_grid_and_validate_every_variant_first():
    assert parse_grid(["a.b=1,2", "c=[x, 3]"]) == {"a.b": [1, 2], "c": ["x", 3]}
    with pytest.raises(SpecError, match="expected key.path=v1,v2"):
        parse_grid(["a.b"])
    with pytest.raises(SpecError, match=r"sweep variant model.params.hidden=oops: .*expected an integer"):
        expand(str(SPEC), REGISTRIES, [], ["model.params.hidden=16,oops"], smoke=True)


def test_sweep_records_failures_goes_on_and_skips_finished_on_rerun():
    sets = ["tracking.system_metrics=false", "experiment=sweep_test"]
    grid = ["model.params.n_critic=1,0"]  # 0 passes the type check but the model rejects it when built
    first = run_sweep(str(SPEC), REGISTRIES, sets=sets, grid_items=grid, smoke=True, tracking_uri=None,
                      device=None, log=lambda m: None)
    assert first == {"model.params.n_critic=1": "FINISHED", "model.params.n_critic=0": "FAILED"}
    client = mlflow.MlflowClient()
    exp = client.get_experiment_by_name("sweep_test")
    runs = client.search_runs([exp.experiment_id])
    parent = [r for r in runs if r.data.tags.get("framework.kind") == "sweep"]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent[0].info.run_id]
    assert len(parent) == 1 and sorted(r.info.status for r in children) == ["FAILED", "FINISHED"]
    second = run_sweep(str(SPEC), REGISTRIES, sets=sets, grid_items=grid, smoke=True, tracking_uri=None,
                       device=None, log=lambda m: None)
    assert second == {"model.params.n_critic=1": "SKIPPED", "model.params.n_critic=0": "FAILED"}
    assert len([r for r in client.search_runs([exp.experiment_id])
                if r.data.tags.get("framework.kind") == "sweep"]) == 1  # the parent is reused


@pytest.fixture()
def fake_store(tmp_path):
    uri = f"sqlite:///{tmp_path}/fake.db"
    client = mlflow.MlflowClient(uri)
    exp = client.create_experiment("fake", artifact_location=str(tmp_path / "art"))

    def add(name, params, metrics):
        r = client.create_run(exp, run_name=name)
        for k, v in params.items():
            client.log_param(r.info.run_id, k, v)
        for k, v in metrics.items():
            client.log_metric(r.info.run_id, k, v, step=10)
        client.set_terminated(r.info.run_id)

    return uri, add


def test_report_lists_exactly_the_differing_params_and_marks_missing(fake_store, tmp_path):
    uri, add = fake_store
    add("a", {"lr": "1e-4", "loss": "wgan_gp", "seed": "0"}, {"eval/fid": 5.0})
    add("b", {"lr": "2e-4", "loss": "wgan_gp", "seed": "0"}, {"eval/fid": 4.0})
    add("c", {"lr": "2e-4", "loss": "hinge", "seed": "0"}, {})
    rows = collect("fake", "eval/fid", uri)
    assert differing_params(rows) == ["loss", "lr"]
    assert [r.differing for r in rows] == [{"loss": "wgan_gp", "lr": "1e-4"}, {"loss": "wgan_gp", "lr": "2e-4"},
                                           {"loss": "hinge", "lr": "2e-4"}]
    paths = report("fake", "eval/fid", tmp_path / "out", uri=uri)
    md = paths["markdown"].read_text()
    assert "Energy was not measured" in md and "| c | FINISHED | hinge | 2e-4 | n/a |" in md
    assert "seed" not in md.split("\n")[4]  # equal params are left out of the table header
    assert all(p.is_file() for p in paths.values())


def test_report_uses_energy_when_measured(fake_store, tmp_path):
    uri, add = fake_store
    add("cheap", {"w": "1"}, {"eval/fid": 6.0, "energy/gpu_kwh": 0.5, "energy/generation_gpu_j": 20.0,
                              "perf/generated_items": 4.0})
    add("good", {"w": "2"}, {"eval/fid": 3.0, "energy/gpu_kwh": 2.0})
    rows = {r.name: r for r in collect("fake", "eval/fid", uri)}
    assert rows["cheap"].energy_kwh == 0.5 and rows["cheap"].j_per_sample == 5.0 and rows["good"].j_per_sample is None
    md = report("fake", "eval/fid", tmp_path / "out", uri=uri)["markdown"].read_text()
    assert "against energy" in md and "not measured" not in md
