"""``python -m framework report EXPERIMENT``: quality against energy across the runs of one experiment.

Reads the experiment's training runs from MLflow (sweep parents and reports are left out) and writes:

* ``report.md`` / ``report.csv``: run name and id, status, whether the run is on the Pareto front, the params
  that differ between runs, the final quality metric and the other final ``eval/*`` metrics, wall time,
  steps, energy (kWh, labelled measured or estimated), CO2e (kg), J per generated sample;
* ``pareto.png``: the quality metric against energy with the Pareto front marked (Douwes et al. 2021: a model
  is judged by quality and energy together; a run is on the front when no other run is at least as good in
  both and strictly better in one). Only FINISHED runs can be on the front; FAILED, KILLED or still RUNNING
  runs are drawn as crosses labelled with their status. Only where no run logged any energy, measured or
  estimated, does the x axis fall back to wall time, and the plot and table say so;
* ``curves.png``: the learning curve of the quality metric per run.

Everything is keyed by run id, never by name: runs of one spec may share a name (older runs, or names cut
short), and a label adds the short id wherever names collide. The quality metric is ``--metric`` (an error
lists the metrics the runs have, with a close match) or, by default, the quality figures the metric plugins of
the runs' specs declare (:attr:`framework.protocols.Metric.higher_is_better`, in the order of the specs'
``metrics:`` lists): the first declared distance (lower is better) that a run has, else the first declared
score, else the runs' first ``eval/*`` metric in alphabetical order. Its direction is ``--better``, else the
declared one, else lower is better (the report says which). Wall time is the run's ``perf/run_s`` (seconds
actually spent running, summed over resumed sessions; see :mod:`framework.runner`); runs logged before that
metric existed fall back to end minus start time, which counts any downtime before a resume, and the table marks
them.

The outputs are logged as artifacts of a run in the separate experiment ``<EXPERIMENT>/reports`` (one run
per call, named ``report:<metric>``), so reports never mix with the training runs in MLflow's run list,
charts and comparisons, and earlier reports stay available.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path

import mlflow

from framework import artifacts
from framework.energy import kind_label, kwh_parts
from framework.errors import FrameworkError, PluginError, did_you_mean
from framework.plugin_manager import collect_registries
from framework.tracking import Tracker, metric_history, require_store, tracking_uri

SKIP_KINDS = ("sweep", "report")  # reports made before they got their own experiment lived among the runs
ACTIVE_TIME = "perf/run_s"


@dataclass
class RunRow:
    run_id: str
    name: str
    status: str
    params: dict[str, str]
    metrics: dict[str, float]
    wall_s: float | None
    wall_from: str  # ACTIVE_TIME, or "end-start" for runs that did not log it
    quality: float | None = None
    energy_kwh: float | None = None
    co2e_kg: float | None = None
    j_per_sample: float | None = None
    differing: dict[str, str] = field(default_factory=dict)
    front: str = "n/a"  # "yes", "no", or why the run is not a candidate

    @property
    def short_id(self) -> str:
        return self.run_id[:8]


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


def _energy(metrics: dict[str, float]) -> float | None:
    parts = kwh_parts(metrics)
    return sum(parts.values()) if parts else None


def _energy_kind(rows: list[RunRow]) -> str:
    """'measured', 'estimated' or 'partly estimated (...)' over the energy parts of all rows."""
    return kind_label({k for r in rows for k in kwh_parts(r.metrics)})


def _row(r) -> RunRow:
    m = dict(r.data.metrics)
    wall, wall_from = m.get(ACTIVE_TIME), ACTIVE_TIME
    if wall is None:
        wall_from = "end-start"
        wall = (r.info.end_time - r.info.start_time) / 1000 if r.info.end_time and r.info.start_time else None
    gen_j, n_gen = m.get("energy/generation_gpu_j"), m.get("perf/generated_items")  # runs before per-item energy
    per_item = m.get("energy/generation_j_per_item", gen_j / n_gen if gen_j is not None and n_gen else None)
    return RunRow(run_id=r.info.run_id, name=r.info.run_name or r.info.run_id[:8], status=r.info.status,
                  params=dict(r.data.params), metrics=m, wall_s=wall, wall_from=wall_from, energy_kwh=_energy(m),
                  co2e_kg=m.get("energy/co2e_kg"), j_per_sample=per_item)


def collect(experiment: str, uri: str | None = None) -> list[RunRow]:
    """The experiment's training runs, sorted by name then id, with the params that differ between them."""
    client = mlflow.MlflowClient(require_store(uri))  # a report is a read: it never creates an empty store
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        names = ", ".join(e.name for e in client.search_experiments()) or "(none)"
        raise FrameworkError(f"no MLflow experiment '{experiment}' in {tracking_uri(uri)}; experiments: {names}")
    rows = [_row(r) for r in client.search_runs([exp.experiment_id], max_results=5000)
            if r.data.tags.get("framework.kind") not in SKIP_KINDS]
    diff = differing_params(rows)
    for row in rows:
        row.differing = {k: row.params.get(k, "-") for k in diff}
    return sorted(rows, key=lambda r: (r.name, r.run_id))


def declared_metrics(rows: list[RunRow], registries) -> dict[str, bool]:
    """``eval/<name>`` -> higher is better, for the quality figures that the metric plugins of the runs' specs
    declare (``Metric.higher_is_better``), in the order of the specs' ``metrics:`` lists (run params
    ``metrics.<i>.name``). A plugin that is not installed here declares nothing."""
    out: dict[str, bool] = {}
    for r in rows:
        i = 0
        while (name := r.params.get(f"metrics.{i}.name")) is not None:
            i += 1
            try:
                cls = registries["metrics"].get(name).cls
            except PluginError:
                continue
            for key, higher in getattr(cls, "higher_is_better", {}).items():
                out.setdefault(f"eval/{key}", bool(higher))
    return out


def choose_metric(rows: list[RunRow], requested: str | None, experiment: str,
                  declared: dict[str, bool]) -> tuple[str, str]:
    """The quality metric and how it was chosen; FrameworkError naming the metrics the runs do have."""
    have = sorted({k for r in rows for k in r.metrics})
    evals = [k for k in have if k.startswith("eval/")]
    if requested is not None:
        if requested in have:
            return requested, "--metric"
        listed = ", ".join(evals or have[:30]) or "(none)"
        raise FrameworkError(
            f"report {experiment}: --metric {requested}: no run of the experiment logged it"
            f"{did_you_mean(requested, have)}; its runs have {'eval metrics' if evals else 'metrics'}: {listed}")
    for want, what in ((False, "distance"), (True, "score")):
        for key, higher in declared.items():
            if higher == want and key in have:
                return key, f"the first {what} that the metric plugins of the runs' specs declare"
    if evals:
        return evals[0], "the runs' first eval/* metric in alphabetical order (no metric plugin declares one)"
    raise FrameworkError(f"report {experiment}: no run of the experiment has an eval/* metric (runs that ended "
                         f"before their first evaluation?); pass --metric with one of: {', '.join(have[:30])}")


def mark_front(rows: list[RunRow], cost_of, higher_is_better: bool) -> None:
    """Set ``row.front``: only FINISHED runs with a quality and a cost are candidates."""
    sign = -1 if higher_is_better else 1
    candidates = []
    for r in rows:
        if r.status != "FINISHED":
            r.front = f"n/a: {r.status}"
        elif r.quality is None or cost_of(r) is None:
            r.front = "n/a: not measured"
        else:
            candidates.append(r)
    flags = pareto_front([(cost_of(r), sign * r.quality) for r in candidates])
    for r, on in zip(candidates, flags):
        r.front = "yes" if on else "no"


def labels(rows: list[RunRow]) -> dict[str, str]:
    """run id -> the run's name, with its short id added wherever names collide."""
    counts: dict[str, int] = {}
    for r in rows:
        counts[r.name] = counts.get(r.name, 0) + 1
    return {r.run_id: r.name if counts[r.name] == 1 else f"{r.name} [{r.short_id}]" for r in rows}


def _fmt(v) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def write_tables(rows: list[RunRow], metric: str, how: str, out: Path, energy_measured: bool) -> tuple[Path, Path]:
    diff = sorted({k for r in rows for k in r.differing})
    evals = sorted({k for r in rows for k in r.metrics if k.startswith("eval/") and k != metric})
    kind = f" ({_energy_kind(rows)})" if energy_measured else ""
    header = ["run", "run_id", "status", "pareto", *diff, metric, *evals, "wall_s", "steps", f"energy_kwh{kind}",
              "co2e_kg", "j_per_sample"]
    table = [[r.name, r.run_id, r.status, r.front, *(r.differing.get(k, "-") for k in diff), r.quality,
              *(r.metrics.get(k) for k in evals), r.wall_s, r.params.get("train.steps"), r.energy_kwh, r.co2e_kg,
              r.j_per_sample] for r in rows]
    csv_path = out / "report.csv"
    with csv_path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow([*header, "wall_from"])
        w.writerows([["" if v is None else v for v in row] + [r.wall_from] for row, r in zip(table, rows)])
    md = [f"# Report: {metric} against {'energy' if energy_measured else 'wall time'}", "",
          f"Quality metric `{metric}`: {how}.", ""]
    if not energy_measured:
        md += ["**Energy was not measured for these runs** (they logged no energy, measured or estimated); the "
               "comparison below uses wall time instead, which is a proxy, not energy.", ""]
    md += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row, r in zip(table, rows):
        cells = [_fmt(v) for v in row]
        cells[1] = r.short_id
        if r.wall_from != ACTIVE_TIME and r.wall_s is not None:
            cells[header.index("wall_s")] += "*"
        md.append("| " + " | ".join(cells) + " |")
    if any(r.wall_from != ACTIVE_TIME and r.wall_s is not None for r in rows):
        md += ["", f"\\* end minus start time: the run logged no `{ACTIVE_TIME}` (made before it existed), so "
                   "any time it was down before a resume is counted."]
    md_path = out / "report.md"
    md_path.write_text("\n".join(md) + "\n")
    return md_path, csv_path


def pareto_plot(rows: list[RunRow], metric: str, higher_is_better: bool, out: Path, energy_measured: bool) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cost_of = (lambda r: r.energy_kwh) if energy_measured else (lambda r: r.wall_s)
    shown = [r for r in rows if r.quality is not None and cost_of(r) is not None]
    names = labels(rows)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for r in shown:
        done = r.status == "FINISHED"
        ax.scatter(cost_of(r), r.quality, marker="o" if done else "x",
                   c="tab:red" if r.front == "yes" else "tab:gray")
        ax.annotate(names[r.run_id] + ("" if done else f" ({r.status})"), (cost_of(r), r.quality), fontsize=7,
                    xytext=(3, 3), textcoords="offset points")
    pts = sorted((cost_of(r), r.quality) for r in shown if r.front == "yes")
    if pts:
        ax.step(*zip(*pts), where="post", color="tab:red", label="Pareto front (FINISHED runs)")
        ax.legend()
    ax.set_xlabel(f"energy (kWh, {_energy_kind(rows)})" if energy_measured else "wall time (s) — energy not measured")
    ax.set_ylabel(f"{metric} ({'higher' if higher_is_better else 'lower'} is better)")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path = out / "pareto.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def report(experiment: str, metric: str | None, out: Path, higher_is_better: bool | None = None,
           uri: str | None = None) -> dict[str, Path]:
    """Write the report of ``experiment`` to ``out`` and log it to ``<experiment>/reports``; ``metric`` None
    chooses one from the runs (see the module docstring)."""
    rows = collect(experiment, uri)
    if not rows:
        raise FrameworkError(f"experiment '{experiment}' has no training runs to report")
    declared = declared_metrics(rows, collect_registries())
    metric, how = choose_metric(rows, metric, experiment, declared)
    if higher_is_better is None:
        higher_is_better = declared.get(metric, False)
        direction = "as its metric plugin declares" if metric in declared else "not declared: assumed"
    else:
        direction = "--better"
    print(f"metric: {metric} ({how}; {'higher' if higher_is_better else 'lower'} is better, {direction})")
    for r in rows:
        r.quality = r.metrics.get(metric)
    energy_measured = any(r.energy_kwh is not None for r in rows)
    mark_front(rows, (lambda r: r.energy_kwh) if energy_measured else (lambda r: r.wall_s), higher_is_better)
    out.mkdir(parents=True, exist_ok=True)
    md, csv_path = write_tables(rows, metric, how, out, energy_measured)
    paths = {"markdown": md, "csv": csv_path, "pareto": pareto_plot(rows, metric, higher_is_better, out, energy_measured)}
    names = labels(rows)
    curves = {names[r.run_id]: metric_history(r.run_id, metric, uri) for r in rows}
    paths["curves"] = artifacts.line_plot(curves, out / "curves.png", metric, f"{experiment}: {metric}")
    tracker = Tracker(uri)
    tracker.start(f"{experiment}/reports", run_name=f"report:{metric}", system_metrics=False)
    tracker.set_tags({"framework.kind": "report", "report.experiment": experiment, "report.metric": metric,
                      "report.runs": len(rows)})
    for p in paths.values():
        tracker.log_artifact(p, "report")
    tracker.end("FINISHED")
    missing = [names[r.run_id] for r in rows if r.quality is None]
    if missing:
        print(f"note: {len(missing)} run(s) have no '{metric}': {', '.join(missing[:10])}")
    return paths
