"""``python -m framework ladder``: train a folder of specs in order ("rungs"), each until its ``train.until``
criterion holds or its budget is spent, and report per rung: passed or not, examples, steps, active time and
energy to pass (measured or estimated, as the run's energy record says).

A rung is any spec with a ``train.until`` block; the command knows nothing of what the specs train. Rungs are
the folder's ``*.yaml`` files in name order (``01_...``, ``02_...``); ``RUNG`` arguments pick some by file stem
or by the stem's leading number. Each rung x seed is a normal MLflow run. Written to ``--out``:

- ``ladder.json`` and ``ladder.md``: one row per rung and seed (the table ``docs/ladder.md`` quotes);
- ``<rung>_seed<S>/``: the final samples' wav files and ``coefficients.png``, the representation's
  coefficients of real and generated items side by side (log magnitude, first channel): the figure that shows
  what a criterion number means.
"""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
from pathlib import Path

import torch

from framework import checkpoint
from framework.artifacts import pyplot
from framework.build import build_dataset
from framework.energy import SUMMARY_FILE, kind_label
from framework.errors import FrameworkError
from framework.generate import load_model
from framework.runner import run
from framework.spec import Spec, load_spec
from framework.tracking import metric_history

FIGURE_ITEMS = 4  # real and generated items per figure


@dataclasses.dataclass
class RungResult:
    rung: str
    seed: int
    run_id: str
    status: str
    passed: bool
    criterion: str
    steps: int  # steps trained (the pass's step when it passed)
    examples: int  # examples trained on up to the pass (or the whole budget)
    run_s: float  # active seconds up to the pass (or the whole run)
    energy_j: float  # joules up to the pass (all phases), or the run's total
    energy_kind: str  # measured | estimated | partly estimated (...)
    values: dict[str, float]  # the criterion's metrics at the last evaluation
    before: dict[str, float]  # the same at step 0 (the untrained model; train.eval_at_start), when logged
    folder: str = ""


def find_rungs(folder: Path, names: list[str]) -> list[Path]:
    """The folder's specs in name order, or those whose stem (or its leading number) is in ``names``."""
    specs = sorted(folder.glob("*.yaml"))
    if not specs:
        raise FrameworkError(f"ladder: no *.yaml specs in {folder}; give --dir a folder of rung specs")
    if not names:
        return specs
    def number(text: str) -> int | None:
        return int(text) if text.isdigit() else None

    picked = []
    for name in names:
        match = [p for p in specs if name in (p.stem, p.stem.split("_", 1)[-1])
                 or number(name) is not None and number(name) == number(p.stem.split("_", 1)[0])]
        if not match:
            raise FrameworkError(f"ladder: no rung {name!r} in {folder}; rungs: {', '.join(p.stem for p in specs)}")
        picked += [p for p in match if p not in picked]
    return picked


def _energy_kind(run_dir: Path) -> str:
    try:
        metrics = json.loads((run_dir / SUMMARY_FILE).read_text())["metrics"]
    except (OSError, ValueError, KeyError):
        return "unknown"
    return kind_label(k.split("_", 1)[1].removesuffix("_j") for k in metrics
                      if k.startswith("energy/train_") and k.endswith("_j") and not k.endswith("total_j"))


def _at_step0(spec: Spec, run_id: str, uri: str | None) -> dict[str, float]:
    out = {}
    for c in spec.train.until:
        history = metric_history(run_id, c.metric, uri)
        if history and history[0][0] == 0:
            out[c.metric] = history[0][1]
    return out


def coefficients_figure(spec: Spec, run_dir: Path, path: Path, device: str | None = None) -> Path | None:
    """Real (the eval split's first items) and generated items of a finished run in the representation's
    coefficients, log magnitude of the first channel, time across; None when the items are not 2-D per channel."""
    model, rep, info, _, rt = load_model(checkpoint.load(run_dir / checkpoint.FILENAME), device)
    if len(rep.shape) != 3:
        return None
    data = build_dataset(spec, spec.train.eval_split, "the ladder figure")
    with torch.no_grad():
        torch.manual_seed(spec.seed)
        real = torch.stack([data[i] for i in range(min(FIGURE_ITEMS, len(data)))]).to(rt.device)
        pairs = [("real", rep.encode(real)), ("generated", model.sample(FIGURE_ITEMS).float())]
    plt = pyplot()
    fig, axes = plt.subplots(2, FIGURE_ITEMS, figsize=(2.6 * FIGURE_ITEMS, 5.2), squeeze=False)
    vmax = max(float(z.abs().max()) for _, z in pairs) + 1e-12
    for row, (name, z) in enumerate(pairs):
        for i in range(FIGURE_ITEMS):
            ax = axes[row][i]
            ax.set_xticks([]), ax.set_yticks([])
            if i >= z.shape[0]:
                continue
            db = 20 * torch.log10(z[i, 0].abs().clamp_min(vmax * 1e-4) / vmax).T.cpu()  # (K, N): bins up
            ax.imshow(db.numpy(), origin="lower", aspect="auto", vmin=-80, vmax=0, cmap="magma")
            ax.set_title(f"{name} {i}", fontsize=9)
    axes[0][0].set_ylabel("bin"), axes[1][0].set_ylabel("bin")
    fig.suptitle(f"{Path(spec.path).stem} (seed {spec.seed}): |coefficient| dB, channel 0, time ->", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def run_rung(path: Path, registries, seed: int, *, sets: list[str], smoke: bool, tracking_uri: str | None,
             device: str | None, out: Path) -> RungResult:
    spec = load_spec(path, registries, sets=[f"seed={seed}", *sets], smoke=smoke)
    if not spec.train.until:
        raise FrameworkError(f"{path}: a ladder rung needs a train.until criterion (e.g. until: [{{metric: "
                             f"eval/peak_conc_fake, min: 0.8}}]) and a budget (train.max_examples / max_minutes)")
    result = run(spec, registries, tracking_uri=tracking_uri, device=device)
    m = result.metrics
    passed = m.get("until/passed") == 1.0
    energy_total = sum(v for k, v in m.items() if k.startswith("energy/") and k.endswith("_total_j"))
    row = RungResult(
        rung=path.stem, seed=seed, run_id=result.run_id, status=result.status, passed=passed,
        criterion=" and ".join(map(str, spec.train.until)),
        steps=int(m["until/step"]) if passed else result.step,
        examples=int(m["until/examples"]) if passed else result.step * spec.train.batch_size,
        run_s=m["until/run_s"] if passed else m.get("perf/run_s", math.nan),
        energy_j=m["until/energy_j"] if passed else energy_total, energy_kind=_energy_kind(result.run_dir),
        values={c.metric: m.get(c.metric, math.nan) for c in spec.train.until}, before=_at_step0(spec, result.run_id,
                                                                                                  tracking_uri))
    folder = out / f"{path.stem}_seed{seed}"
    folder.mkdir(parents=True, exist_ok=True)
    for f in sorted((result.run_dir / "samples").glob(f"step{result.step:07d}*")):  # the final wavs and PNGs
        shutil.copy2(f, folder / f.name)
    if result.status == "FINISHED":
        coefficients_figure(spec, result.run_dir, folder / "coefficients.png", device)
    row.folder = str(folder)
    return row


def table(rows: list[RungResult]) -> str:
    """The Markdown table of ``ladder.md``."""
    names = sorted({k for r in rows for k in r.values})
    head = ["rung", "seed", "passed", "examples", "steps", "active time", "energy",
            *(f"{k} (step 0 -> end)" for k in names), "criterion", "run"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        mins = f"{r.run_s / 60:.1f} min" if r.run_s == r.run_s else "?"
        energy = f"{r.energy_j / 1000:.2f} kJ ({r.energy_kind})"
        vals = [(f"{r.before[k]:.3g} -> " if k in r.before else "") + f"{r.values[k]:.3g}" if k in r.values else ""
                for k in names]
        lines.append("| " + " | ".join([r.rung, str(r.seed), "**yes**" if r.passed else "no", f"{r.examples:,}",
                                        f"{r.steps:,}", mins, energy, *vals, r.criterion, r.run_id[:8]]) + " |")
    return "\n".join(lines)


def run_ladder(registries, *, folder: Path, rungs: list[str], seeds: list[int], sets: list[str], smoke: bool,
               tracking_uri: str | None, device: str | None, out: Path, keep_going: bool) -> list[RungResult]:
    """Train the rungs in order, every seed of one rung before the next; stop after a rung that no seed passed
    unless ``keep_going`` (the next rung is harder). Writes ladder.json / ladder.md after every rung."""
    rows: list[RungResult] = []
    for path in find_rungs(folder, rungs):
        for seed in seeds:
            print(f"\n=== ladder: {path.stem}, seed {seed} ===")
            rows.append(run_rung(path, registries, seed, sets=sets, smoke=smoke, tracking_uri=tracking_uri,
                                 device=device, out=out))
            out.mkdir(parents=True, exist_ok=True)
            (out / "ladder.json").write_text(json.dumps([dataclasses.asdict(r) for r in rows], indent=1))
            (out / "ladder.md").write_text(table(rows) + "\n")
        if not keep_going and not any(r.passed for r in rows if r.rung == path.stem):
            print(f"ladder: no seed passed {path.stem}; stopping (--keep-going climbs on)")
            break
    return rows
