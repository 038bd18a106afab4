"""Sweeps (validated up front, failures recorded, finished variants skipped on re-run) and the
quality-vs-energy report on a hand-made MLflow store (Pareto front with ties and missing metrics,
exactly the differing params, missing energy reported as missing)."""

import csv

import mlflow
import pytest

from framework import artifacts
from framework.errors import FrameworkError, SpecError
from framework.plugin_manager import collect_registries
from framework.report import (RunRow, choose_metric, collect, declared_metrics, differing_params, mark_front,
                              pareto_front, report)
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
    assert sorted(r.info.run_name for r in children) == ["toy_synthetic smoke model.n_critic=0",
                                                          "toy_synthetic smoke model.n_critic=1"]
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

    def add(name, params, metrics, status="FINISHED", steps=(10,)):
        r = client.create_run(exp, run_name=name)
        for k, v in params.items():
            client.log_param(r.info.run_id, k, v)
        for step in steps:
            for k, v in metrics.items():
                client.log_metric(r.info.run_id, k, v, step=step)
        client.set_terminated(r.info.run_id, status=status)
        return r.info.run_id

    return uri, add


def test_report_lists_exactly_the_differing_params_and_marks_missing(fake_store, tmp_path):
    uri, add = fake_store
    add("a", {"lr": "1e-4", "loss": "wgan_gp", "seed": "0"}, {"eval/fid": 5.0})
    add("b", {"lr": "2e-4", "loss": "wgan_gp", "seed": "0"}, {"eval/fid": 4.0})
    c = add("c", {"lr": "2e-4", "loss": "hinge", "seed": "0"}, {})
    rows = collect("fake", uri)
    assert differing_params(rows) == ["loss", "lr"]
    assert [r.differing for r in rows] == [{"loss": "wgan_gp", "lr": "1e-4"}, {"loss": "wgan_gp", "lr": "2e-4"},
                                           {"loss": "hinge", "lr": "2e-4"}]
    paths = report("fake", "eval/fid", tmp_path / "out", uri=uri)
    md = paths["markdown"].read_text()
    assert "Energy was not measured" in md and f"| c | {c[:8]} | FINISHED | n/a: not measured | hinge | 2e-4 | n/a |" in md
    assert "seed" not in next(line for line in md.splitlines() if line.startswith("| run"))
    assert all(p.is_file() for p in paths.values())


def test_report_uses_energy_when_measured(fake_store, tmp_path):
    uri, add = fake_store
    add("cheap", {"w": "1"}, {"eval/fid": 6.0, "energy/gpu_kwh": 0.5, "energy/generation_gpu_j": 20.0,
                              "perf/generated_items": 4.0})
    add("good", {"w": "2"}, {"eval/fid": 3.0, "energy/gpu_kwh": 2.0, "energy/cpu_estimated_kwh": 0.25})
    rows = {r.name: r for r in collect("fake", uri)}
    assert rows["cheap"].energy_kwh == 0.5 and rows["cheap"].j_per_sample == 5.0 and rows["good"].j_per_sample is None
    assert rows["good"].energy_kwh == 2.25  # every energy/*_kwh source counts, estimated ones too
    md = report("fake", "eval/fid", tmp_path / "out", uri=uri)["markdown"].read_text()
    assert "against energy" in md and "not measured" not in md


def test_runs_with_one_name_stay_apart_keyed_by_run_id(fake_store, tmp_path, monkeypatch):
    uri, add = fake_store
    ids = [add("toy_synthetic", {"seed": str(i)}, {"eval/fid": 5.0 - i}, steps=(5, 10)) for i in range(3)]
    drawn = {}
    real_line_plot = artifacts.line_plot

    def spy(series, *args, **kwargs):
        drawn.update(series)
        return real_line_plot(series, *args, **kwargs)

    monkeypatch.setattr(artifacts, "line_plot", spy)
    paths = report("fake", "eval/fid", tmp_path / "out", uri=uri)
    assert sorted(drawn) == sorted(f"toy_synthetic [{i[:8]}]" for i in ids)  # three curves, three legend entries
    assert all(len(points) == 2 for points in drawn.values())
    with paths["csv"].open() as f:
        table = list(csv.DictReader(f))
    assert sorted(r["run_id"] for r in table) == sorted(ids)
    md = paths["markdown"].read_text()
    assert all(f"| toy_synthetic | {i[:8]} |" in md for i in ids)


def test_unknown_metric_fails_with_the_metrics_the_runs_have(fake_store, tmp_path):
    uri, add = fake_store
    add("a", {}, {"eval/frechet_mdct": 5.0, "eval/tonality_real_pct": 3.0, "train/d/loss": 1.0})
    with pytest.raises(FrameworkError, match=r"--metric eval/frechet_mcdt: no run .* logged it \(did you mean "
                                             r"'eval/frechet_mdct'\?\); its runs have eval metrics: "
                                             r"eval/frechet_mdct, eval/tonality_real_pct$"):
        report("fake", "eval/frechet_mcdt", tmp_path / "out", uri=uri)
    assert not (tmp_path / "out").exists()  # nothing written before the check


def test_default_metric_is_what_the_specs_metric_plugins_declare(fake_store, tmp_path, capsys):
    uri, add = fake_store
    specs = {"metrics.0.name": "moments", "metrics.1.name": "frechet_mdct"}  # as runs log their resolved spec
    add("a", specs, {"eval/moments/std_diff": 0.5, "eval/frechet_mdct": 5.0})
    md = report("fake", None, tmp_path / "out", uri=uri)["markdown"].read_text()
    assert md.startswith("# Report: eval/moments/std_diff against wall time")  # the first declared distance
    assert "the first distance that the metric plugins of the runs' specs declare" in md
    assert "lower is better, as its metric plugin declares" in capsys.readouterr().out
    declared = declared_metrics(collect("fake", uri), REGISTRIES)
    assert declared["eval/frechet_mdct"] is False and declared["eval/moments/std_diff"] is False
    rows = collect("fake", uri)
    assert choose_metric(rows, None, "fake", declared)[0] == "eval/moments/std_diff"
    assert choose_metric(rows, None, "fake", {"eval/frechet_mdct": False})[0] == "eval/frechet_mdct"
    # no distance declared: the first declared score, with its direction
    add("s", {"metrics.0.name": "is_mnist", "metrics.1.name": "tonality"}, {"eval/is_mnist": 8.0})
    only_s = [r for r in collect("fake", uri) if r.name == "s"]
    assert choose_metric(only_s, None, "fake", declared_metrics(only_s, REGISTRIES))[0] == "eval/is_mnist"
    assert declared_metrics(only_s, REGISTRIES) == {"eval/is_mnist": True, "eval/tonality_fake_pct": True}
    # nothing declared (a plugin not installed here, or none logged): the first eval/* metric, assumed lower
    add("b", {"metrics.0.name": "not_installed"}, {"eval/zeta": 1.0, "eval/alpha": 2.0})
    only_b = [r for r in collect("fake", uri) if r.name == "b"]
    assert declared_metrics(only_b, REGISTRIES) == {}
    assert choose_metric(only_b, None, "fake", {})[0] == "eval/alpha"
    with pytest.raises(FrameworkError, match="no run of the experiment has an eval/\\* metric"):
        choose_metric([RunRow("x", "x", "FAILED", {}, {"train/d/loss": 1.0}, None, "end-start")], None, "fake", {})


def test_every_registered_metric_declares_its_quality_figures():
    for entry in REGISTRIES["metrics"]:
        declared = entry.cls.higher_is_better
        assert declared, f"metric '{entry.name}' declares no quality figure (Metric.higher_is_better)"
        assert all(isinstance(k, str) and isinstance(v, bool) for k, v in declared.items()), entry.name


def test_failed_runs_are_never_pareto_points(fake_store, tmp_path):
    uri, add = fake_store
    add("ok", {}, {"eval/fid": 5.0, "perf/run_s": 100.0})
    add("broke", {}, {"eval/fid": 1.0, "perf/run_s": 10.0}, status="FAILED")  # would dominate if it counted
    add("stopped", {}, {"eval/fid": 2.0, "perf/run_s": 20.0}, status="KILLED")
    report("fake", "eval/fid", tmp_path / "out", uri=uri)
    rows = collect("fake", uri)
    for r in rows:
        r.quality = r.metrics["eval/fid"]
    mark_front(rows, lambda r: r.wall_s, higher_is_better=False)
    assert {r.name: r.front for r in rows} == {"ok": "yes", "broke": "n/a: FAILED", "stopped": "n/a: KILLED"}
    md = (tmp_path / "out" / "report.md").read_text()
    assert "| broke |" in md and "| FAILED | n/a: FAILED |" in md and "| FINISHED | yes |" in md


def test_wall_time_is_the_active_time_with_end_minus_start_only_for_old_runs(fake_store, tmp_path):
    uri, add = fake_store
    add("new", {}, {"eval/fid": 5.0, "perf/run_s": 12.5})
    add("old", {}, {"eval/fid": 4.0})
    rows = {r.name: r for r in collect("fake", uri)}
    assert rows["new"].wall_s == 12.5 and rows["new"].wall_from == "perf/run_s"
    assert rows["old"].wall_from == "end-start" and rows["old"].wall_s is not None
    md = report("fake", "eval/fid", tmp_path / "out", uri=uri)["markdown"].read_text()
    assert "| 12.5 |" in md and "*" in next(line for line in md.splitlines() if line.startswith("| old"))
    assert "end minus start time" in md


def test_reports_go_to_their_own_experiment_not_among_the_training_runs(fake_store, tmp_path):
    uri, add = fake_store
    add("a", {}, {"eval/fid": 5.0})
    for _ in range(2):
        report("fake", "eval/fid", tmp_path / "out", uri=uri)
    client = mlflow.MlflowClient(uri)
    training = client.search_runs([client.get_experiment_by_name("fake").experiment_id])
    reports = client.search_runs([client.get_experiment_by_name("fake/reports").experiment_id])
    assert [r.info.run_name for r in training] == ["a"]
    assert sorted(r.info.run_name for r in reports) == ["report:eval/fid", "report:eval/fid #2"]
    assert {r.data.tags["report.experiment"] for r in reports} == {"fake"}
    assert "report/report.md" in {a.path for a in client.list_artifacts(reports[0].info.run_id, "report")}


def test_report_on_a_missing_store_names_it_and_creates_none(tmp_path, monkeypatch):
    from framework.errors import TrackingError

    monkeypatch.chdir(tmp_path)
    with pytest.raises(TrackingError, match="does not exist"):
        collect("toy_synthetic", "sqlite:///mlflow.db")
    assert not (tmp_path / "mlflow.db").exists()
