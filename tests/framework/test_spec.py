"""Spec loading: extends, smoke, --set, and validation errors that name file, key, valid keys, close match."""

import textwrap

import pytest

from framework.errors import SpecError
from framework.plugin_manager import collect_registries
from framework.spec import flatten, load_spec, resolve

BASE = """
experiment: t
seed: 1
train: {steps: 3, batch_size: 2}
dataset: {name: synthetic_images, params: {size: 4}}
representation: {name: raw}
model: {name: toy_gan, params: {latent_dim: 8, hidden: 16}}
loss: {name: wgan_gp, params: {gp_every: 1}, weights: {d/gp: 3.0}}
metrics: [{name: moments}]
smoke: {train: {steps: 1}}
"""


@pytest.fixture(scope="module")
def registries():
    return collect_registries()


def write(tmp_path, name, text):
    p = tmp_path / name
    p.write_text(textwrap.dedent(text))
    return p


def test_valid_spec_builds_typed_params(tmp_path, registries):
    spec = load_spec(write(tmp_path, "a.yaml", BASE), registries)
    assert spec.model.params.latent_dim == 8 and spec.loss.weights == {"d/gp": 3.0}
    assert spec.train.steps == 3 and spec.metrics[0].name == "moments"
    assert "smoke" not in spec.resolved and len(spec.sha256) == 64


def test_typo_names_file_key_valid_keys_and_close_match(tmp_path, registries):
    p = write(tmp_path, "typo.yaml", BASE.replace("latent_dim: 8", "lattent_dim: 8"))
    with pytest.raises(SpecError) as e:
        load_spec(p, registries)
    msg = str(e.value)
    assert str(p.resolve()) in msg and "model.params.lattent_dim" in msg
    assert "valid: latent_dim, hidden" in msg and "did you mean 'latent_dim'" in msg


def test_unknown_plugin_lists_registered_names(tmp_path, registries):
    p = write(tmp_path, "u.yaml", BASE.replace("name: toy_gan", "name: toy_gann"))
    with pytest.raises(SpecError, match=r"model.name: unknown model 'toy_gann'; registered: .*did you mean 'toy_gan'"):
        load_spec(p, registries)


def test_malformed_yaml_reports_line(tmp_path, registries):
    p = write(tmp_path, "bad.yaml", "experiment: t\ntrain: {steps: 3\nmodel: x\n")
    with pytest.raises(SpecError, match=r"bad.yaml:3:\d+: malformed YAML"):
        load_spec(p, registries)


def test_wrong_types_and_missing_keys(tmp_path, registries):
    with pytest.raises(SpecError, match=r"train.steps: expected an integer, got 'many'"):
        load_spec(write(tmp_path, "t1.yaml", BASE.replace("steps: 3", "steps: many")), registries)
    with pytest.raises(SpecError, match=r"train.precision: must be one of"):
        load_spec(write(tmp_path, "t2.yaml", BASE.replace("batch_size: 2", "batch_size: 2, precision: fp8")),
                  registries)
    with pytest.raises(SpecError, match=r"missing required top-level key 'model'"):
        load_spec(write(tmp_path, "t3.yaml", BASE.replace("model: {name: toy_gan, params: {latent_dim: 8, hidden: 16}}", "")),
                  registries)
    with pytest.raises(SpecError, match=r"loss.weights.d/gpp: loss 'wgan_gp' has no term 'd/gpp'.*did you mean 'd/gp'"):
        load_spec(write(tmp_path, "t4.yaml", BASE.replace("d/gp: 3.0", "d/gpp: 3.0")), registries)


def test_float_written_without_dot_is_accepted(tmp_path, registries):
    spec = load_spec(write(tmp_path, "f.yaml", BASE.replace("hidden: 16", "hidden: 16, lr: 1e-4")), registries)
    assert spec.model.params.lr == 1e-4


def test_extends_merges_and_a_renamed_block_replaces_params(tmp_path, registries):
    write(tmp_path, "base.yaml", BASE)
    (tmp_path / "sub").mkdir()
    child = write(tmp_path, "sub/child.yaml", """
        extends: ../base.yaml
        train: {batch_size: 4}
        loss: {name: hinge}
        """)
    spec = load_spec(child, registries)
    assert spec.train.steps == 3 and spec.train.batch_size == 4  # merged
    assert spec.loss.name == "hinge"  # params/weights replaced: only hinge's own defaults are left
    assert spec.resolved["loss"] == {"name": "hinge", "params": {}, "weights": {"d/real": 1.0, "d/fake": 1.0,
                                                                                "g/adv": 1.0}}


def test_error_in_child_names_the_child_file(tmp_path, registries):
    write(tmp_path, "base.yaml", BASE)
    child = write(tmp_path, "child.yaml", "extends: base.yaml\nmodel: {params: {widht: 3}}\n")
    with pytest.raises(SpecError, match=r"child.yaml: model.params.widht: unknown parameter"):
        load_spec(child, registries)


def test_extends_cycle_is_an_error(tmp_path, registries):
    write(tmp_path, "a.yaml", "extends: b.yaml\n")
    write(tmp_path, "b.yaml", "extends: a.yaml\n")
    with pytest.raises(SpecError, match="extends cycle"):
        load_spec(tmp_path / "a.yaml", registries)


def test_smoke_then_set_applied_last(tmp_path, registries):
    p = write(tmp_path, "s.yaml", BASE)
    spec = load_spec(p, registries, sets=["train.steps=7", "metrics.0.name=moments", "loss.weights.d/drift=1e-3"],
                     smoke=True)
    assert spec.train.steps == 7 and spec.loss.weights == {"d/gp": 3.0, "d/drift": 0.001}
    spec = load_spec(p, registries, smoke=True)
    assert spec.train.steps == 1 and spec.smoke


def test_set_errors(tmp_path, registries):
    p = write(tmp_path, "s.yaml", BASE)
    with pytest.raises(SpecError, match="expected key.path=value"):
        resolve(p, ["train.steps"])
    with pytest.raises(SpecError, match=r"--set: train.batch_size|train.batch_size: expected an integer"):
        load_spec(p, registries, sets=["train.batch_size=[1, 2]"])


def test_flatten():
    assert flatten({"a": {"b": 1, "c": [1, {"d": "x"}]}, "e": []}) == {"a.b": "1", "a.c.0": "1", "a.c.1.d": "x", "e": "[]"}
