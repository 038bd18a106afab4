"""Our energy estimate beside codecarbon's offline tracker on the same run, plus the meter's own overhead.

Usage (from the repository root; needs the `energy` extra, codecarbon, and the demo's piano set)::

    OMP_NUM_THREADS=1 python benchmarks/energy_vs_codecarbon.py --set train.steps=40

One process trains the spec (default: the demo's, ``experiments/mp3net_piano_small.yaml``) inside codecarbon's
``OfflineEmissionsTracker`` in process mode (this process and its children; no network: the country's carbon
intensity comes from codecarbon's bundled table). Printed as JSON: codecarbon's CPU and RAM kWh, ours
(``energy/*_kwh``, which cover the train/eval/generation phases only), the CPU time of the whole ``run()``
(codecarbon's window: set-up and model building included) at our W per logical CPU, J per training step, J per
generated second of audio, and the cost of one meter switch and of one resident-memory sample.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from framework import energy  # noqa: E402
from framework.plugin_manager import collect_registries  # noqa: E402
from framework.runner import run  # noqa: E402
from framework.spec import load_spec  # noqa: E402


def overhead(config, repeats: int) -> dict[str, float]:
    """Seconds per meter switch (every source read) and per resident-memory sample, median of ``repeats``."""
    meter = energy.EnergyMeter(torch.device("cpu"), config)
    ram = next(s.reader for s in meter.sources if s.name == "ram")

    def median_s(fn) -> float:
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
        return sorted(times)[len(times) // 2]

    out = {"switch_s": median_s(lambda: meter.switch("train")), "ram_sample_s": median_s(ram.sample)}
    meter.switch(None)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--spec", default="experiments/mp3net_piano_small.yaml")
    ap.add_argument("--set", action="append", default=[], help="key.path=value, as for `framework run`")
    ap.add_argument("--country", default="USA", help="ISO 3166 alpha-3 code for codecarbon's offline intensity")
    ap.add_argument("--repeats", type=int, default=200, help="timings per overhead figure")
    args = ap.parse_args()
    import codecarbon
    from codecarbon import OfflineEmissionsTracker

    torch.set_num_threads(1)
    registries = collect_registries()
    spec = load_spec(args.spec, registries, sets=["tracking.system_metrics=false", *args.set])
    tracker = OfflineEmissionsTracker(country_iso_code=args.country, tracking_mode="process", save_to_file=False,
                                      log_level="error", measure_power_secs=5)
    cpu0, t0 = energy.process_tree_cpu_s(), time.perf_counter()
    tracker.start()
    result = run(spec, registries, log=lambda msg: None)
    tracker.stop()
    cpu_s, wall_s = energy.process_tree_cpu_s() - cpu0, time.perf_counter() - t0
    cc, m = tracker.final_emissions_data, result.metrics
    watts = energy.cpu_source(spec.energy).reader.watts
    step_s = wall_s / max(result.step, 1)
    cost = overhead(spec.energy, args.repeats)
    print(json.dumps({
        "steps": result.step, "wall_s": wall_s, "torch_threads": torch.get_num_threads(),
        "codecarbon": {"version": codecarbon.__version__,
                       "cpu_kwh": cc.cpu_energy, "ram_kwh": cc.ram_energy, "cpu_w": cc.cpu_power, "ram_w": cc.ram_power,
                       "co2e_kg": cc.emissions, "cpu_model": cc.cpu_model},
        "ours": {k: v for k, v in m.items() if k.startswith("energy/")},
        "ours_whole_run_cpu_kwh": cpu_s * watts / energy.J_PER_KWH,
        "cpu_s_whole_run": cpu_s, "w_per_cpu": watts,
        "j_per_train_step": m["energy/train_total_j"] / result.step,
        "overhead": cost | {"sampling_share_of_wall_time": cost["ram_sample_s"] / spec.energy.sample_every_s,
                            "switch_share_of_a_step": cost["switch_s"] / step_s, "step_s": step_s},
    }, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
