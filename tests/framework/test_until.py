"""``train.until``: a run stops at the first evaluation where its criterion holds, logs what it took (examples,
active seconds, joules), and otherwise trains until its budget (steps, examples, minutes) is spent."""

from pathlib import Path

import pytest

from framework.errors import SpecError
from framework.plugin_manager import collect_registries
from framework.runner import run
from framework.spec import Criterion, load_spec
from framework.tracking import metric_history

ROOT = Path(__file__).resolve().parents[2]
SPEC = ROOT / "experiments" / "toy_synthetic.yaml"
REG = collect_registries()
QUIET = dict(log=lambda m: None)


def _spec(*sets):
    return load_spec(SPEC, REG, smoke=True, sets=["tracking.system_metrics=false", "train.steps=12",
                                                    "train.eval_every=2", *sets])


def test_a_criterion_that_holds_stops_at_the_first_evaluation_and_logs_its_cost():
    # moments/std_diff is >= 0 always: "max: 100" holds at the first evaluation after step 0
    result = run(_spec("train.until=[{metric: eval/moments/std_diff, max: 100}]", "train.eval_at_start=true"),
                 REG, **QUIET)
    assert result.status == "FINISHED" and result.step == 2  # not at step 0: the untrained model never passes
    m = result.metrics
    assert m["until/passed"] == 1 and m["until/step"] == 2 and m["until/examples"] == 2 * 16
    assert m["until/run_s"] > 0 and m["until/energy_j"] > 0
    assert [s for s, _ in metric_history(result.run_id, "eval/moments/std_diff")] == [0, 2]  # no second final eval
    assert (result.run_dir / "checkpoint.pt").is_file()


def test_a_criterion_that_never_holds_trains_until_the_example_budget():
    result = run(_spec("train.until=[{metric: eval/moments/std_diff, min: 1.0e+9}]", "train.max_examples=80"),
                 REG, **QUIET)
    assert result.status == "FINISHED" and result.step == 5  # 5 x 16 = 80 examples, before steps=12
    assert result.metrics["until/passed"] == 0 and "until/step" not in result.metrics
    assert [s for s, _ in metric_history(result.run_id, "eval/moments/std_diff")] == [2, 4, 5]  # and a final one


def test_without_until_the_cadence_is_unchanged():
    result = run(_spec(), REG, **QUIET)
    assert result.step == 12 and "until/passed" not in result.metrics
    assert [s for s, _ in metric_history(result.run_id, "eval/moments/std_diff")] == [2, 4, 6, 8, 10, 12]


def test_a_metric_the_run_does_not_log_is_named_with_what_it_does_log():
    with pytest.raises(SpecError, match=r"logs no eval/peak_conc_fake; its evaluation logs eval/moments/mean_diff"):
        run(_spec("train.until=[{metric: eval/peak_conc_fake, min: 0.8}]"), REG, **QUIET)


@pytest.mark.parametrize("item, message", [
    ("train.until=[{metric: eval/x}]", r"train.until.0: condition on 'eval/x' has neither min nor max"),
    ("train.until=[{metric: peak, min: 1}]", r"train.until.0.metric: 'peak' is not a logged key"),
    ("train.until=[{metric: eval/x, mn: 1}]", r"train.until.0.mn: unknown parameter .*did you mean 'min'"),
    ("train.max_examples=-1", r"train.max_examples: must be >= 0"),
])
def test_bad_until_blocks_are_spec_errors(item, message):
    with pytest.raises(SpecError, match=message):
        _spec(item)


def test_until_needs_evaluations():
    with pytest.raises(SpecError, match="train.eval_every is 0"):
        _spec("train.eval_every=0", "train.until=[{metric: eval/x, min: 1}]")


def test_criterion_bounds():
    c = Criterion("eval/x", min=0.5, max=0.9)
    assert c.holds(0.5) and c.holds(0.9) and not c.holds(0.49) and not c.holds(float("nan")) and not c.holds(None)
    assert str(c) == "eval/x >= 0.5 and <= 0.9"


@pytest.mark.gpu
def test_device_cuda_without_an_index_runs_on_the_current_device():
    # torch < 2.12's cuda.set_device rejects torch.device("cuda"): found on the lent H200 (torch 2.11)
    from framework.runner import make_runtime

    assert make_runtime(_spec(), "cuda").device.index is not None
