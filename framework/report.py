"""``python -m framework report EXPERIMENT``: quality against energy across the runs of one experiment.

Reads the experiment's training runs from MLflow (sweep parents and earlier reports are left out) and writes:

* ``report.md`` / ``report.csv``: run name, the params that differ between runs, the final quality metric and
  the other final ``eval/*`` metrics, wall time, steps, energy (kWh, labelled measured or estimated), CO2e (kg),
  J per generated sample;
* ``pareto.png``: the quality metric against energy with the Pareto front marked (Douwes et al. 2021: a model
  is judged by quality and energy together; a run is on the front when no other run is at least as good in
  both and strictly better in one). Only where no run logged any energy, measured or estimated, does the x axis
  fall back to wall time, and the plot and table say so;
* ``curves.png``: the learning curve of the quality metric per run;

and logs them as artifacts of a summary run tagged ``framework.kind=report``.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path

from framework import artifacts
from framework.energy import kind_label
from framework.errors import FrameworkError

SKIP_KINDS = ("sweep", "report")


@dataclass
class RunRow:
    run_id: str
    name: str
    status: str
    params: dict[str, str]
    metrics: dict[str, float]
    wall_s: float | None
    quality: float | None = None
    energy_kwh: float | None = None
    co2e_kg: float | None = None
    j_per_sample: float | None = None
    differing: dict[str, str] = field(default_factory=dict)


def pareto_front(points: list[tuple[float, float]]) -> list[bool]:
    """Which (cost, loss) points (both minimised) no other point dominates. Equal points are all on the front."""
    flags = []
    for i, (c, q) in enumerate(points):
        dominated = any(c2 <= c and q2 <= q and (c2 < c or q2 < q) for j, (c2, q2) in enumerate(points) if j != i)
        flags.append(not dominated)
    return flags


def differing_params(rows: list[RunRow]) -> list[str]:
    """Param keys whose value is not the same in every run (absent counts as a value)."""
    keys = sorted({k for r in rows for k in r.params})
    return [k for k in keys if len({r.params.get(k) for r in rows}) > 1]


def _energy_parts(metrics: dict[str, float]) -> dict[str, float]:
    """kWh per source (``gpu``, ``cpu_estimated``, ...); ``energy/total_kwh`` is their sum, not a part."""
    return {k.removeprefix("energy/").removesuffix("_kwh"): v for k, v in metrics.items()
            if k.startswith("energy/") and k.endswith("_kwh") and k != "energy/total_kwh"}


def _energy(metrics: dict[str, float]) -> float | None:
    parts = _energy_parts(metrics)
    return sum(parts.values()) if parts else None


def _energy_kind(rows: list[RunRow]) -> str:
    """'measured', 'estimated' or 'partly estimated (...)' over the energy parts of all rows."""
    return kind_label({k for r in rows for k in _energy_parts(r.metrics)})


def collect(experiment: str, metric: str, uri: str | None = None) -> list[RunRow]:
    import mlflow

    from framework.tracking import tracking_uri

    client = mlflow.MlflowClient(tracking_uri(uri))
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        names = ", ".join(e.name for e in client.search_experiments()) or "(none)"
        raise FrameworkError(f"no MLflow experiment '{experiment}' in {tracking_uri(uri)}; experiments: {names}")
    rows = []
    for r in client.search_runs([exp.experiment_id], max_results=5000):
        if r.data.tags.get("framework.kind") in SKIP_KINDS:
            continue
        m = dict(r.data.metrics)
        wall = (r.info.end_time - r.info.start_time) / 1000 if r.info.end_time and r.info.start_time else None
        gen_j = m.get("energy/generation_gpu_j")
        n_gen = m.get("perf/generated_items")
        per_item = m.get("energy/generation_j_per_item", gen_j / n_gen if gen_j is not None and n_gen else None)
        rows.append(RunRow(
            run_id=r.info.run_id, name=r.info.run_name or r.info.run_id[:8], status=r.info.status,
            params=dict(r.data.params), metrics=m, wall_s=wall, quality=m.get(metric), energy_kwh=_energy(m),
            co2e_kg=m.get("energy/co2e_kg"), j_per_sample=per_item))
    diff = differing_params(rows)
    for row in rows:
        row.differing = {k: row.params.get(k, "-") for k in diff}
    return sorted(rows, key=lambda r: r.name)


def _fmt(v) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def write_tables(rows: list[RunRow], metric: str, out: Path, energy_measured: bool) -> tuple[Path, Path]:
    diff = sorted({k for r in rows for k in r.differing})
    evals = sorted({k for r in rows for k in r.metrics if k.startswith("eval/") and k != metric})
    kind = f" ({_energy_kind(rows)})" if energy_measured else ""
    header = ["run", "status", *diff, metric, *evals, "wall_s", "steps", f"energy_kwh{kind}", "co2e_kg", "j_per_sample"]
    table = []
    for r in rows:
        steps = r.params.get("train.steps")
        table.append([r.name, r.status, *(r.differing.get(k, "-") for k in diff), r.quality,
                      *(r.metrics.get(k) for k in evals), r.wall_s, steps, r.energy_kwh, r.co2e_kg, r.j_per_sample])
    csv_path = out / "report.csv"
    with csv_path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows([["" if v is None else v for v in row] for row in table])
    md = [f"# Report: {metric} against {'energy' if energy_measured else 'wall time'}", ""]
    if not energy_measured:
        md += ["**Energy was not measured for these runs** (they logged no energy, measured or estimated); the "
               "comparison below uses wall time instead, which is a proxy, not energy.", ""]
    md += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    md += ["| " + " | ".join(_fmt(v) for v in row) + " |" for row in table]
    md_path = out / "report.md"
    md_path.write_text("\n".join(md) + "\n")
    return md_path, csv_path


def pareto_plot(rows: list[RunRow], metric: str, higher_is_better: bool, out: Path, energy_measured: bool) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    usable = [r for r in rows if r.quality is not None and (r.energy_kwh if energy_measured else r.wall_s) is not None]
    cost = [r.energy_kwh if energy_measured else r.wall_s for r in usable]
    sign = -1 if higher_is_better else 1
    front = pareto_front([(c, sign * r.quality) for c, r in zip(cost, usable)])
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.scatter(cost, [r.quality for r in usable], c=["tab:red" if f else "tab:gray" for f in front])
    for c, r in zip(cost, usable):
        ax.annotate(r.name, (c, r.quality), fontsize=7, xytext=(3, 3), textcoords="offset points")
    pts = sorted((c, r.quality) for c, r, f in zip(cost, usable, front) if f)
    if pts:
        ax.step(*zip(*pts), where="post", color="tab:red", label="Pareto front")
        ax.legend()
    ax.set_xlabel(f"energy (kWh, {_energy_kind(rows)})" if energy_measured else "wall time (s) — energy not measured")
    ax.set_ylabel(f"{metric} ({'higher' if higher_is_better else 'lower'} is better)")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path = out / "pareto.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def report(experiment: str, metric: str, out: Path, higher_is_better: bool | None = None,
           uri: str | None = None) -> dict[str, Path]:
    from framework.tracking import Tracker, metric_history

    rows = collect(experiment, metric, uri)
    if not rows:
        raise FrameworkError(f"experiment '{experiment}' has no training runs to report")
    if higher_is_better is None:
        higher_is_better = any(s in metric.lower() for s in ("is_", "inception", "accuracy", "tonality"))
    out.mkdir(parents=True, exist_ok=True)
    energy_measured = any(r.energy_kwh is not None for r in rows)
    md, csv_path = write_tables(rows, metric, out, energy_measured)
    paths = {"markdown": md, "csv": csv_path, "pareto": pareto_plot(rows, metric, higher_is_better, out, energy_measured)}
    curves = {r.name: metric_history(r.run_id, metric, uri) for r in rows}
    paths["curves"] = artifacts.line_plot(curves, out / "curves.png", metric, f"{experiment}: {metric}")
    tracker = Tracker(uri)
    tracker.start(experiment, run_name=f"report:{metric}", system_metrics=False)
    tracker.set_tags({"framework.kind": "report", "report.metric": metric, "report.runs": len(rows)})
    for p in paths.values():
        tracker.log_artifact(p, "report")
    tracker.end("FINISHED")
    missing = [r.name for r in rows if r.quality is None]
    if missing:
        print(f"note: {len(missing)} run(s) have no '{metric}': {', '.join(missing[:10])}")
    return paths
