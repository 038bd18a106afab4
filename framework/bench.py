"""``python -m framework bench SPEC``: time one training step of several variants of a spec, in one run.

Each variant is the spec with ``--set``-style overrides: ``--variant name:key=v,key=v``, else the spec's own
``bench:`` list (``- {name: NAME, set: [key=v, ...]}``: the variants the docs report), else the spec as it is.
Timing uses synthetic batches of the shape ``Dataset.describe`` gives, so no data is needed:
after ``--warmup`` steps, ``--steps`` calls of ``model.train_step`` are timed with the device synchronised
only around the whole loop. Reported per variant: seconds per step (median of ``--repeats`` loops), peak
device memory, the share of the step spent in the representation (encode + the two ``critic_view`` calls of
a step, timed separately), and generation throughput: generated seconds of audio per wall second, including
``decode`` (inverse MDCT) and conversion to 16-bit PCM on the host, as a multiple of real time. Results are
printed as a table and written as JSON (``--out``). ``--steps 0`` times generation only; ``--smoke`` applies
the spec's smoke overlay (a tiny model: checks the command, says nothing about speed). Absolute times mean
something only on a GPU; on a CPU compare the ratios between variants of the same run.
"""

from __future__ import annotations

import json
import platform
import statistics
import time
from pathlib import Path

import torch

from framework.build import build_model
from framework.errors import FrameworkError
from framework.protocols import DataInfo
from framework.runtime import Runtime, choose_device, resolve_precision, seed_everything
from framework.spec import load_spec

def parse_variant(text: str) -> tuple[str, list[str]]:
    name, sep, sets = text.partition(":")
    if not sep or not name:
        raise FrameworkError(f"--variant {text!r}: expected name:key=value,key=value")
    return name, [s for s in sets.split(",") if s]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench_variant(spec, device: torch.device, batch: int, steps: int, warmup: int, repeats: int,
                  gen_batch: int) -> dict:
    runtime = Runtime(device=device, precision=resolve_precision(spec.train.precision, device),
                      compile=spec.train.compile)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = False  # the naive baseline is plain fp32
        torch.backends.cudnn.allow_tf32 = False
        torch.cuda.reset_peak_memory_stats(device)
    seed_everything(spec.seed)
    info = spec.dataset.cls.describe(spec.dataset.params)  # the data's shape, without reading data
    rep, _, model = build_model(spec, runtime, info)
    result = {"params": sum(p.numel() for p in model.parameters()), "precision": runtime.precision, "batch": batch}
    if steps > 0:  # --steps 0 times generation only (e.g. the paper's model on a CPU, where a step takes minutes)
        x = (torch.rand(batch, *info.shape, device=device) * 2 - 1) * 0.3  # (B, *data.shape)
        result.update(_train_steps(model, rep, x, device, steps, warmup, repeats))
    result.update(_generation(model, rep, info, device, gen_batch, repeats))
    if device.type == "cuda":
        result["peak_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    return result


def _train_steps(model, rep, x, device: torch.device, steps: int, warmup: int, repeats: int) -> dict:
    """Seconds per ``train_step`` (median over ``repeats`` loops of ``steps``) and the representation's share."""
    with torch.no_grad():
        z = rep.encode(x)
    # a class-conditional model trains on labelled batches: random classes (B,), as a labelled loader would give
    kw = {"labels": torch.randint(0, model.num_classes, (x.shape[0],), device=device)} if model.num_classes else {}
    for s in range(warmup):
        model.train_step(z, s, **kw)
    times = []
    for r in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        for s in range(steps):
            out = model.train_step(z, warmup + r * steps + s, **kw)
        _sync(device)
        times.append((time.perf_counter() - t0) / steps)
    finite = all(bool(torch.isfinite(v)) for v in out.values())
    # representation share: encode + critic_view of reals and of fakes, as in one critic step
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        with torch.no_grad():
            zz = rep.encode(x)
        rep.critic_view(zz), rep.critic_view(zz)
    _sync(device)
    t_rep = (time.perf_counter() - t0) / steps
    return {"s_per_step": statistics.median(times), "s_per_step_all": times, "finite": finite,
            "representation_s": t_rep, "representation_share": t_rep / statistics.median(times)}


def _generation(model, rep, info: DataInfo, device, batch: int, repeats: int) -> dict:
    """Seconds of audio generated per wall second (sample + decode + 16-bit PCM on the host)."""
    if info.kind != "audio":
        return {}
    with torch.no_grad():
        model.sample(batch)  # warm-up
        _sync(device)
        t0 = time.perf_counter()
        for _ in range(repeats):
            audio = rep.decode(model.sample(batch).float())  # (B, C, T)
            pcm = (audio.clamp(-1, 1) * 32767).round().to(torch.int16).cpu()
        elapsed = time.perf_counter() - t0
    seconds = repeats * batch * pcm.shape[-1] / info.sample_rate
    return {"generation_x_realtime": seconds / elapsed, "generation_s_per_sample": elapsed / (repeats * batch),
            "generation_batch": batch}


def run_bench(spec_path: str, registries, *, variants: list[str], sets: list[str], batch: int | None, steps: int,
              warmup: int, repeats: int, device: str | None, out: Path | None, gen_batch: int,
              smoke: bool = False) -> dict:
    """Time ``variants`` (``name:key=v,key=v`` texts; none: the spec's ``bench:`` list) of the spec at
    ``spec_path``; print the table, write the JSON to ``out``, return the results."""
    if steps < 0 or warmup < 0 or repeats < 1 or gen_batch < 1:
        raise FrameworkError("bench: --steps and --warmup must be >= 0, --repeats and --gen-batch >= 1")
    listed = load_spec(spec_path, registries, sets=list(sets), smoke=smoke).bench  # also: a missing/bad spec
    todo = [parse_variant(v) for v in variants] or [(k, list(v)) for k, v in listed.items()] or [("default", [])]
    dev = choose_device(device or "auto")
    cpu = f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
    results = {"spec": spec_path, "smoke": smoke,
               "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else cpu,
               "torch": torch.__version__, "steps": steps, "warmup": warmup, "repeats": repeats, "variants": {}}
    tf32 = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    try:
        for name, vsets in todo:
            spec = load_spec(spec_path, registries, sets=list(sets) + vsets, smoke=smoke)
            b = batch or spec.train.batch_size
            what = f"batch {b}" if steps else f"generation only, batch {gen_batch}"
            print(f"bench {name}: {what}, {', '.join(vsets) or 'spec as is'}", flush=True)
            results["variants"][name] = {"sets": vsets,
                                         **bench_variant(spec, dev, b, steps, warmup, repeats, gen_batch)}
    finally:  # bench_variant times plain fp32 without TF32; whatever runs after bench in this process gets its own
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32
    _print_table(results)
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(results, indent=1))
        print(f"wrote {out}")
    return results


def _print_table(results: dict) -> None:
    variants = results["variants"]
    base = next(iter(variants.values())).get("s_per_step", float("nan"))
    print(f"\n{results['device']}, torch {results['torch']}")
    print(f"{'variant':<22}{'s/step':>10}{'speed-up':>10}{'repr share':>12}{'gen x RT':>12}{'peak GiB':>10}")
    nan = float("nan")
    for name, r in variants.items():
        step = r.get("s_per_step", nan)
        print(f"{name:<22}{step:>10.4f}{base / step:>10.2f}{r.get('representation_share', nan):>12.1%}"
              f"{r.get('generation_x_realtime', nan):>12.1f}{r.get('peak_memory_gib', nan):>10.2f}")
