"""The energy meter without hardware: injected clocks, CPU-time and power readers, fake RAPL files and a fake
NVML; a real child process burning CPU; metric and tag names; the fallback chain per source; the summary and
`python -m framework energy`; `report` choosing (estimated) energy over wall time."""

import subprocess
import sys
import types

import pytest
import torch

from framework import cli, energy
from framework.energy import (EnergyConfig, EnergyMeter, Source, _Counter, _CpuTime, _PowerIntegral, cpu_source,
                              gpu_source)
from framework.errors import SpecError
from framework.report import collect, report
from framework.spec import load_spec
from tests.framework.test_runner import SPEC
from tests.framework.test_sweep_report import REGISTRIES, fake_store  # noqa: F401 (a fixture)

CPU = torch.device("cpu")


class Clock:
    """A settable clock and a CPU-seconds reader in one: tests advance it by hand."""

    def __init__(self):
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def meter(*sources: Source, seconds_per_item=None, **config) -> EnergyMeter:
    return EnergyMeter(CPU, EnergyConfig(**config), seconds_per_item, list(sources))


def test_cpu_estimate_phases_add_up_and_a_zero_length_phase_is_zero():
    cpu_s = Clock()
    m = meter(Source("cpu", _CpuTime(cpu_s, 5.0), True, "test"))
    m.switch("train")
    cpu_s.t += 2.0
    m.switch("eval")
    m.switch("generation")  # nothing ran in eval
    cpu_s.t += 0.5
    m.switch("train")
    cpu_s.t += 1.0
    m.switch(None)
    cpu_s.t += 9.0  # after the run: no phase, not counted
    m.switch(None)
    out = m.metrics()
    assert out["energy/train_cpu_estimated_j"] == 15.0 and out["energy/eval_cpu_estimated_j"] == 0.0
    assert out["energy/generation_cpu_estimated_j"] == 2.5
    assert out["energy/cpu_estimated_kwh"] * energy.J_PER_KWH == pytest.approx(17.5)
    assert out["energy/total_kwh"] == out["energy/cpu_estimated_kwh"]


def test_cpu_time_that_drops_for_a_moment_is_not_counted_twice():
    cpu_s = Clock()
    est = _CpuTime(cpu_s, 1.0)
    cpu_s.t = 10.0
    assert est.delta() == 10.0
    cpu_s.t = 8.0  # an exited child not yet reaped drops out of the tree
    assert est.delta() == 0.0
    cpu_s.t = 12.0  # ... and comes back in its parent's children times
    assert est.delta() == 2.0


def test_process_tree_counts_live_and_reaped_children():
    burn = "import time\nwhile time.process_time() < 0.4: pass\n"
    before = energy.process_tree_cpu_s()
    subprocess.run([sys.executable, "-c", burn], check=True)  # reaped: in this process's children times
    after_reaped = energy.process_tree_cpu_s()
    wait = "print('burnt', flush=True); import sys; sys.stdin.read()"
    child = subprocess.Popen([sys.executable, "-c", burn + wait], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert child.stdout.readline() == b"burnt\n"
        live = energy.process_tree_cpu_s()  # the child is still running: counted as a descendant
    finally:
        child.communicate(b"")
    assert after_reaped - before >= 0.35  # psutil's clock ticks round the child's 0.4 s
    assert live - after_reaped >= 0.35


def test_counter_that_appears_mid_run_or_wraps():
    values = iter([OSError("not yet"), 100.0, 150.0, OSError("missed"), 180.0, 10.0])

    def read():
        v = next(values)
        if isinstance(v, Exception):
            raise v
        return v

    c = _Counter(read, wrap=200.0)  # unreadable at construction
    assert c.delta() == 0.0  # first good reading: the baseline
    assert c.delta() == 50.0
    assert c.delta() == 0.0  # a missed reading loses nothing ...
    assert c.delta() == 30.0  # ... the next one spans it
    assert c.delta() == 30.0  # 180 -> 200 wraps to 0 -> 10


def test_power_integral_with_an_injected_clock():
    clock, watts = Clock(), {"w": 10.0}
    p = _PowerIntegral(lambda: watts["w"], clock)
    clock.t = 2.0
    p.sample()
    watts["w"] = 20.0
    clock.t = 3.0
    assert p.delta() == pytest.approx(2 * 10.0 + 1 * 15.0)  # trapezoids
    clock.t = 3.0
    assert p.delta() == 0.0


def test_sampler_thread_samples_while_a_phase_runs():
    samples = []
    ram = Source("ram", _PowerIntegral(lambda: samples.append(1) or 1.0), True, "test")
    m = meter(ram, sample_every_s=0.01)
    m.switch("train")
    import time

    time.sleep(0.2)
    m.switch(None)
    n = len(samples)
    time.sleep(0.05)
    assert n > 5 and len(samples) == n  # sampled while training, stopped after


def test_metric_and_tag_names_carry_the_kind():
    gpu_j, cpu_s = Clock(), Clock()
    m = meter(Source("gpu", _Counter(gpu_j), False, "NVML total energy counter, GPU 0 (test)"),
              Source("cpu", _CpuTime(cpu_s, 2.0), True, "CPU time x 2 W"),
              Source("ram", None, True, "test: no reader"), seconds_per_item=95.25, grid_gco2_per_kwh=500.0)
    m.switch("eval")
    gpu_j.t, cpu_s.t = 100.0, 10.0
    m.generated(4)
    m.switch("generation")
    gpu_j.t, cpu_s.t = 300.0, 15.0
    m.generated(2)
    m.switch(None)
    out = m.metrics()
    assert set(out) == {
        "energy/eval_gpu_j", "energy/eval_cpu_estimated_j", "energy/generation_gpu_j",
        "energy/generation_cpu_estimated_j", "energy/gpu_kwh", "energy/cpu_estimated_kwh", "energy/eval_total_j",
        "energy/generation_total_j", "energy/eval_j_per_item", "energy/eval_j_per_audio_s",
        "energy/generation_j_per_item", "energy/generation_j_per_audio_s", "energy/total_kwh", "energy/co2e_kg"}
    assert out["energy/generation_total_j"] == 210.0 and out["energy/generation_j_per_item"] == 105.0
    assert out["energy/generation_j_per_audio_s"] == pytest.approx(105.0 / 95.25)
    assert out["energy/co2e_kg"] == pytest.approx(330.0 / energy.J_PER_KWH * 0.5)
    tags = m.tags()
    assert tags["energy.gpu_source"] == "measured: NVML total energy counter, GPU 0 (test)"
    assert tags["energy.cpu_source"] == "estimated: CPU time x 2 W"
    assert tags["energy.ram_source"].startswith("not measured: ")
    assert tags["energy.total_estimated_parts"] == "cpu"


def _rapl(root, packages: dict[str, str]):
    for name, value in packages.items():
        d = root / name
        d.mkdir(parents=True)
        (d / "energy_uj").write_text(value)
        (d / "max_energy_range_uj").write_text("262143328850")


def test_cpu_fallback_chain(tmp_path):
    config = EnergyConfig()
    _rapl(tmp_path / "ok", {"intel-rapl:0": "1000000", "intel-rapl:1": "5"})
    (tmp_path / "ok" / "intel-rapl:0:0").mkdir()  # a sub-domain (core, dram): not a package, not summed
    src = cpu_source(config, rapl_root=str(tmp_path / "ok"))
    assert not src.estimated and src.tag == "measured: RAPL package counters (2 package(s))"
    (tmp_path / "ok" / "intel-rapl:0" / "energy_uj").write_text("3000000")
    assert src.reader.delta() == pytest.approx(2.0)
    _rapl(tmp_path / "bad", {"intel-rapl:0": "not a number"})  # present but unreadable: estimate instead
    known = cpu_source(config, str(tmp_path / "bad"), "Test CPU 1", table=lambda m: (7.5, f"{m}, test table"))
    assert known.estimated and "x 7.5 W per logical CPU (Test CPU 1, test table)" in known.tag
    unknown = cpu_source(config, str(tmp_path / "bad"), "Test CPU 2", table=lambda m: (None, f"'{m}' not in it"))
    assert unknown.reader.watts == energy.DEFAULT_W_PER_CPU and "codecarbon's default" in unknown.tag
    user = cpu_source(EnergyConfig(cpu_watts_per_core=3.0), str(tmp_path / "bad"), "Test CPU 3",
                      table=lambda m: pytest.fail("the table is not consulted when the user sets the power"))
    assert user.reader.watts == 3.0 and "energy.cpu_watts_per_core" in user.tag

    def denied():
        raise PermissionError("no /proc access")

    none = cpu_source(config, str(tmp_path / "bad"), read_cpu_s=denied)
    assert none.reader is None and none.tag.startswith("not measured: ")


def test_gpu_fallback_chain(monkeypatch):
    assert gpu_source(CPU).tag == "not measured: no GPU in use"

    class NVMLError(Exception):
        pass

    def unsupported(handle):
        raise NVMLError("Not Supported")

    fake = types.SimpleNamespace(nvmlInit=lambda: None, nvmlDeviceGetHandleByIndex=lambda i: i,
                                 nvmlDeviceGetName=lambda h: "Old GPU",
                                 nvmlDeviceGetTotalEnergyConsumption=lambda h: 5e6,  # mJ
                                 nvmlDeviceGetPowerUsage=lambda h: 150_000)  # mW
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    cuda0 = torch.device("cuda", 0)
    assert gpu_source(cuda0).tag == "measured: NVML total energy counter, GPU 0 (Old GPU)"
    fake.nvmlDeviceGetTotalEnergyConsumption = unsupported  # pre-Volta: power readings only
    sampled = gpu_source(cuda0)
    assert sampled.estimated and sampled.key == "gpu_estimated" and "power samples" in sampled.tag
    fake.nvmlDeviceGetPowerUsage = unsupported
    assert gpu_source(cuda0).tag.startswith("not measured: GPU 0 (Old GPU) has neither")


def test_codecarbon_tdp_table_lookup():
    pytest.importorskip("codecarbon")
    import psutil
    from codecarbon.core.util import count_physical_cpus

    watts, how = energy.codecarbon_watts_per_cpu("Intel(R) Core(TM) i7-8650U CPU @ 1.90GHz")
    assert watts == pytest.approx(15.0 * count_physical_cpus() / psutil.cpu_count())
    assert "TDP 15 W" in how and "TDP table of codecarbon" in how
    assert energy.codecarbon_watts_per_cpu("No Such CPU 9000")[0] is None


def test_summary_labels_and_the_command(tmp_path, monkeypatch, capsys):
    gpu_j, cpu_s = Clock(), Clock()
    m = meter(Source("gpu", _Counter(gpu_j), False, "counter"), Source("cpu", _CpuTime(cpu_s, 1.0), True, "model"),
              seconds_per_item=2.0)
    m.switch("train")
    gpu_j.t, cpu_s.t = 3600.0, 3600.0
    m.switch("generation")
    gpu_j.t = 3610.0  # generation: the GPU part only, which is measured
    m.generated(5)
    m.switch(None)
    lines = energy.summary(m.metrics(), m.tags())
    assert "  training:   7200 J = 0.002 kWh, partly estimated (cpu)" in lines
    assert "  generation: 1 J per generated second of audio, partly estimated (cpu)" in lines  # the CPU's 0 J too
    assert energy.kind_label(["gpu"]) == "measured" and energy.kind_label(["cpu_estimated"]) == "estimated"
    assert any(line.startswith("  CO2e:") and line.endswith("partly estimated (cpu)") for line in lines)
    monkeypatch.setenv("FRAMEWORK_RUNS_DIR", str(tmp_path))
    assert cli.main(["energy", "--last"]) == 2 and "no run has an energy record" in capsys.readouterr().err
    m.write(tmp_path / "abc123")
    assert cli.main(["energy", "--last"]) == 0 and "run abc123: energy" in capsys.readouterr().out
    assert cli.main(["energy", "nope"]) == 2 and "nope/energy.json: no energy record" in capsys.readouterr().err


def test_spec_rejects_negative_power():
    with pytest.raises(SpecError, match=r"energy.cpu_watts_per_core must be >= 0, got -1"):
        load_spec(SPEC, REGISTRIES, sets=["energy.cpu_watts_per_core=-1"], smoke=True)


def test_grid_intensity_of_a_country_from_codecarbon_offline(monkeypatch):
    pytest.importorskip("codecarbon")
    m = meter(country_iso_code="fra")
    assert 10 < m.grid < 200 and m.grid != EnergyConfig().grid_gco2_per_kwh  # France's low-carbon mix
    assert m.tags()["energy.grid_source"].startswith("France ")
    bad = r"energy.country_iso_code: unknown country 'FRX'; valid: ISO 3166 alpha-3 .*did you mean"
    with pytest.raises(SpecError, match=bad):
        load_spec(SPEC, REGISTRIES, sets=["energy.country_iso_code=FRX"], smoke=True)
    monkeypatch.setitem(sys.modules, "codecarbon", None)  # as if the `energy` extra were not installed
    with pytest.raises(SpecError, match=r"needs codecarbon's offline energy-mix table: pip install"):
        load_spec(SPEC, REGISTRIES, sets=["energy.country_iso_code=FRA"], smoke=True)


def test_report_uses_estimated_energy_over_wall_time_without_double_counting(fake_store, tmp_path):  # noqa: F811
    uri, add = fake_store
    add("cpu_only", {"w": "1"}, {"eval/fid": 6.0, "energy/cpu_estimated_kwh": 1.0, "energy/ram_estimated_kwh": 0.5,
                                 "energy/total_kwh": 1.5, "energy/generation_j_per_item": 2.0})
    add("gpu", {"w": "2"}, {"eval/fid": 3.0, "energy/gpu_kwh": 2.0, "energy/total_kwh": 2.0})
    rows = {r.name: r for r in collect("fake", uri)}
    assert rows["cpu_only"].energy_kwh == 1.5 and rows["gpu"].energy_kwh == 2.0
    assert rows["cpu_only"].j_per_sample == 2.0
    md = report("fake", "eval/fid", tmp_path / "out", uri=uri)["markdown"].read_text()
    assert "against energy" in md and "not measured" not in md
    assert "energy_kwh (partly estimated (cpu, ram))" in md
