"""The resolved spec records every value a run uses: defaults of the train/tracking/energy configs, of each
plugin's ``Params`` and of a loss's ``default_weights`` appear in it, hence in the run's params, its
``spec.yaml`` and ``spec.sha256`` (which resume checks and sweep skipping compare)."""

import os
from pathlib import Path

import mlflow
import pytest
import yaml

from framework.plugin_manager import collect_registries
from framework.runner import run
from framework.spec import load_spec, validate

ROOT = Path(__file__).resolve().parents[2]
SPEC = ROOT / "experiments" / "toy_synthetic.yaml"
SPECS = sorted((ROOT / "experiments").rglob("*.yaml"))
REGISTRIES = collect_registries()


def test_plugin_defaults_and_loss_default_weights_are_recorded(tmp_path):
    path = tmp_path / "toy.yaml"
    path.write_text(SPEC.read_text().replace("weights: {d/wasserstein: 1.0, d/gp: 10.0, d/drift: 0.001, g/adv: 1.0}",
                                             "weights: {d/gp: 3.0}"))
    resolved = load_spec(path, REGISTRIES, smoke=True).resolved
    assert resolved["loss"]["weights"] == {"d/wasserstein": 1.0, "d/gp": 3.0, "d/drift": 0.001, "g/adv": 1.0}
    assert resolved["loss"]["params"] == {"gp_center": 1.0, "gp_every": 1}  # not in the YAML: Params defaults
    assert resolved["model"]["params"]["betas"] == [0.5, 0.9]
    assert resolved["representation"]["params"] == {"block_size": 0}
    assert resolved["train"]["precision"] == "auto" and resolved["energy"]["grid_gco2_per_kwh"] == 480.0
    assert resolved["energy"]["cpu_watts_per_core"] is None  # recorded as "not set": the TDP table decides


@pytest.mark.parametrize("path", SPECS, ids=lambda p: str(p.relative_to(ROOT / "experiments")))
def test_resolving_a_resolved_spec_changes_nothing(path):
    """Resume and generate rebuild from the stored resolved spec: it must validate to itself, same hash."""
    spec = load_spec(path, REGISTRIES, smoke=True)
    stored = yaml.safe_load(yaml.safe_dump(spec.resolved))  # as spec.yaml / the checkpoint keep it
    again = validate(stored, REGISTRIES, str(path))
    assert again.resolved == spec.resolved and again.sha256 == spec.sha256


def test_writing_a_default_explicitly_gives_the_same_hash():
    """So a sweep skips a variant that only spells out a default, and a resume accepts it."""
    plain = load_spec(SPEC, REGISTRIES, smoke=True)
    explicit = load_spec(SPEC, REGISTRIES, smoke=True, sets=["loss.params.gp_every=1", "train.compile=false"])
    changed = load_spec(SPEC, REGISTRIES, smoke=True, sets=["loss.params.gp_every=2"])
    assert explicit.sha256 == plain.sha256 != changed.sha256


def test_a_run_logs_the_defaults_as_params_and_in_spec_yaml(tmp_path):
    spec = load_spec(SPEC, REGISTRIES, smoke=True, sets=["tracking.system_metrics=false"])
    result = run(spec, REGISTRIES, log=lambda m: None)
    assert result.status == "FINISHED"
    client = mlflow.MlflowClient(os.environ["MLFLOW_TRACKING_URI"])
    params = client.get_run(result.run_id).data.params
    assert params["loss.params.gp_center"] == "1.0" and params["loss.weights.d/drift"] == "0.001"
    assert params["model.params.betas.1"] == "0.9" and params["dataset.params.sample_rate"] == "22016"
    logged = yaml.safe_load(Path(client.download_artifacts(result.run_id, "spec.yaml", str(tmp_path))).read_text())
    assert logged == spec.resolved and logged["loss"]["params"]["gp_every"] == 1
