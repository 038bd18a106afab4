"""``python -m framework COMMAND``: the core commands (run, validate, report, ui, ...) and the commands that
plugins add (``analyze``); ``--help`` lists them all, core and plugin, from the parser itself.

Every FrameworkError is printed as one ``error: ...`` line (what, where, what to do; errors that followed it
while a run was ended, as indented notes) and exits with status 2; a bug prints its traceback. Every option
has help text. A closed stdout (``... | head``) ends a command without a traceback; ``run`` keeps training.
Plugin packages add subcommands through the ``register_commands`` hook (the audio front end's ``analyze``
comes that way).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

import yaml  # noqa: E402

from framework.bench import run_bench  # noqa: E402
from framework.energy import summary, summary_path  # noqa: E402
from framework.errors import FrameworkError  # noqa: E402
from framework.generate import generate  # noqa: E402
from framework.ladder import run_ladder, table  # noqa: E402
from framework.plugin_manager import collect_commands, collect_registries  # noqa: E402
from framework.report import report  # noqa: E402
from framework.runner import resume_spec, run, say  # noqa: E402
from framework.runtime import runs_dir  # noqa: E402
from framework.spec import load_spec  # noqa: E402
from framework.sweep import run_sweep  # noqa: E402
from framework.tracking import serve_ui, tracking_uri  # noqa: E402


def _registries():
    return collect_registries()


def _load(args, registries):
    return load_spec(args.spec, registries, sets=args.set or [], smoke=getattr(args, "smoke", False))


def cmd_validate(args) -> int:
    spec = _load(args, _registries())
    names = f"dataset={spec.dataset.name} representation={spec.representation.name} model={spec.model.name} " \
            f"loss={spec.loss.name} metrics=[{', '.join(m.name for m in spec.metrics)}]"
    print(f"{args.spec}: valid ({names}; spec sha256 {spec.sha256[:12]})")
    if args.print:
        print(yaml.safe_dump(spec.resolved, sort_keys=False))
    return 0


def _run_spec(args, registries):
    """The spec ``run`` trains: SPEC with --smoke and --set; with --resume, the one stored in the run's checkpoint
    (SPEC, optional then, is not read again; --set may only change train.steps)."""
    if args.resume and args.grid:
        raise FrameworkError("--resume applies to one run; re-run the sweep command to resume a sweep")
    if args.resume:
        spec = resume_spec(args.resume, registries, args.set or [], args.tracking_uri)
        if args.spec:
            print(f"--resume {args.resume}: continuing with the spec stored in the run's checkpoint ({args.spec} "
                  f"is not read again; only --set train.steps=N may change it)")
        return spec
    if not args.spec:
        raise FrameworkError("run: give a SPEC file (an experiment YAML; `ls experiments/`), or --resume RUN_ID to "
                             "continue a run")
    return _load(args, registries)


def cmd_run(args) -> int:
    registries = _registries()
    spec = _run_spec(args, registries)
    if args.grid or spec.grid:
        return cmd_sweep(args, registries)
    result = run(spec, registries, tracking_uri=args.tracking_uri, device=args.device, resume_run_id=args.resume)
    if int(os.environ.get("RANK", 0)) != 0:  # under torchrun, rank 0 reports
        return 0 if result.status == "FINISHED" else 1
    say(f"\nrun {result.run_id}: {result.status} after {result.step} steps")
    say(f"  samples, plots, checkpoint: {result.run_dir}/")
    # the energy summary (per phase, labelled measured/estimated) was printed by the runner: totals only here
    shown = {k: v for k, v in result.metrics.items()
             if k.startswith("eval/") or k in ("energy/total_kwh", "energy/co2e_kg")}
    for k, v in shown.items():
        say(f"  {k} = {v:.6g}")
    uri = tracking_uri(args.tracking_uri)
    say(f"  compare runs in the MLflow UI: python -m framework ui" +
        ("" if uri == "sqlite:///mlflow.db" else f" --tracking-uri {uri}") + "  (then open the runs link it prints)")
    return 0 if result.status == "FINISHED" else 1


def cmd_sweep(args, registries) -> int:
    results = run_sweep(args.spec, registries, sets=args.set or [], grid_items=args.grid or [], smoke=args.smoke,
                        tracking_uri=args.tracking_uri, device=args.device)
    print("\nsweep results:")
    for label, status in results.items():
        print(f"  {status:<9} {label}")
    return 0 if all(s in ("FINISHED", "SKIPPED") for s in results.values()) else 1


def cmd_prepare(args) -> int:
    spec = _load(args, _registries())
    print(spec.dataset.cls.prepare(spec.dataset.params))
    return 0


def cmd_plugins(args) -> int:
    registries = _registries()
    for kind, reg in registries.items():
        print(f"{kind}:")
        for e in reg:
            print(f"  {e.name:<16} {e.cls.__name__:<20} {e.module}  [{e.distribution}]")
    commands = collect_commands()
    if commands:
        print("commands:")
        for name, (_, _, help_, module) in sorted(commands.items()):
            print(f"  {name:<16} {help_}  ({module})")
    return 0


def cmd_ui(args) -> int:
    return serve_ui(args.tracking_uri, args.port)


def cmd_generate(args) -> int:
    paths = generate(run_id=args.run, checkpoint_path=args.checkpoint, n=args.n, seconds=args.seconds,
                     truncation=args.truncation, out=Path(args.out), device=args.device, batch=args.batch,
                     tracking_uri=args.tracking_uri, seed=args.seed, label=args.label)
    print(f"wrote {len(paths)} files to {args.out}/")
    return 0


def cmd_report(args) -> int:
    higher = {"higher": True, "lower": False}.get(args.better)
    paths = report(args.experiment, args.metric, Path(args.out or f"outputs/report/{args.experiment}"), higher,
                   args.tracking_uri)
    for kind, p in paths.items():
        print(f"{kind:<9} {p}")
    return 0


def cmd_bench(args) -> int:
    run_bench(args.spec, _registries(), variants=args.variant or [], sets=args.set or [], batch=args.batch,
              steps=args.steps, warmup=args.warmup, repeats=args.repeats, device=args.device,
              out=Path(args.out) if args.out else None, gen_batch=args.gen_batch, smoke=args.smoke)
    return 0


def cmd_ladder(args) -> int:
    try:
        seeds = [int(x) for x in args.seeds.split(",")]
    except ValueError:
        raise FrameworkError(f"ladder --seeds {args.seeds!r}: give comma-separated integers, e.g. --seeds 0,1") from None
    rows = run_ladder(_registries(), folder=Path(args.dir), rungs=args.rungs, seeds=seeds, sets=args.set or [],
                      smoke=args.smoke, tracking_uri=args.tracking_uri, device=args.device, out=Path(args.out),
                      keep_going=args.keep_going)
    print("\n" + table(rows))
    print(f"\ntable, figures and wav files: {args.out}/")
    return 0 if rows and all(r.status == "FINISHED" for r in rows) else 1


def cmd_energy(args) -> int:
    path = summary_path(runs_dir(), args.run_id, args.last)
    record = json.loads(path.read_text())
    print(f"run {path.parent.name}: " + "\n".join(summary(record["metrics"], record["tags"])))
    return 0


def build_parser(commands=None) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m framework", formatter_class=argparse.RawDescriptionHelpFormatter,
                                description="Train, compare and inspect experiments (YAML specs, MLflow runs).",
                                epilog="`python -m framework COMMAND --help` shows a command's options.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def spec_args(sp, smoke=True, optional=False):
        sp.add_argument("spec", nargs="?" if optional else None,
                        help="experiment YAML (a spec)" + ("; may be left out with --resume" if optional else ""))
        sp.add_argument("--set", action="append", metavar="KEY=VALUE",
                        help="override a key (value parsed as YAML), applied last; repeatable")
        if smoke:
            sp.add_argument("--smoke", action="store_true", help="apply the spec's smoke: overlay (tiny, CI-sized)")

    r = sub.add_parser("run", help="train an experiment and log it to MLflow")
    spec_args(r, optional=True)
    r.add_argument("--resume", metavar="RUN_ID", help="continue this MLflow run from its last checkpoint, with the "
                   "spec stored there (--set may only change train.steps)")
    r.add_argument("--grid", action="append", metavar="KEY=V1,V2",
                   help="sweep: one child run per combination of values (repeatable; cross product)")
    r.add_argument("--tracking-uri", help="MLflow store (default: $MLFLOW_TRACKING_URI or sqlite:///mlflow.db)")
    r.add_argument("--device", help="cpu | cuda | cuda:N (default: the spec's train.device, auto)")
    r.set_defaults(func=cmd_run)

    v = sub.add_parser("validate", help="check a spec against the registered plugins without running it")
    spec_args(v)
    v.add_argument("--print", action="store_true", help="print the resolved spec")
    v.set_defaults(func=cmd_validate)

    pr = sub.add_parser("prepare", help="obtain / convert the spec's dataset once")
    spec_args(pr)
    pr.set_defaults(func=cmd_prepare)

    pl = sub.add_parser("plugins", help="list registered plugins with their module and distribution")
    pl.set_defaults(func=cmd_plugins)

    u = sub.add_parser("ui", help="serve the MLflow UI on 127.0.0.1 and print each experiment's runs page")
    u.add_argument("--tracking-uri", help="MLflow store (default: $MLFLOW_TRACKING_URI or sqlite:///mlflow.db)")
    u.add_argument("--port", type=int, default=5000, help="port on 127.0.0.1 (default 5000)")
    u.set_defaults(func=cmd_ui)

    rp = sub.add_parser("report", help="quality vs energy table and Pareto plot across an experiment's runs")
    rp.add_argument("experiment", help="MLflow experiment name (the spec's experiment:)")
    rp.add_argument("--metric", help="quality metric key, e.g. eval/NAME (default: chosen from the runs' "
                                     "metrics: the first distance, else score, that the specs' metric plugins declare; "
                                     "the report says which)")
    rp.add_argument("--better", choices=("higher", "lower"),
                    help="direction of the metric (default: as its metric plugin declares, else lower)")
    rp.add_argument("--out", help="output folder (default outputs/report/EXPERIMENT)")
    rp.add_argument("--tracking-uri", help="MLflow store (default: $MLFLOW_TRACKING_URI or sqlite:///mlflow.db)")
    rp.set_defaults(func=cmd_report)

    b = sub.add_parser("bench", help="time training steps and generation of spec variants in one run")
    b.add_argument("spec", help="a spec; its bench: block names the variants timed by default")
    b.add_argument("--variant", action="append", metavar="NAME:KEY=V,KEY=V", help="a variant to time (repeatable)")
    b.add_argument("--set", action="append", metavar="KEY=VALUE", help="override for every variant")
    b.add_argument("--batch", type=int, help="batch size (default: the spec's)")
    b.add_argument("--steps", type=int, default=5, help="timed train steps per repeat; 0 times generation only")
    b.add_argument("--warmup", type=int, default=2, help="untimed train steps first (default 2)")
    b.add_argument("--repeats", type=int, default=3, help="timed loops; the median is reported (default 3)")
    b.add_argument("--gen-batch", type=int, default=4, help="samples per timed generation call (default 4)")
    b.add_argument("--device", help="cpu | cuda | cuda:N (default: auto)")
    b.add_argument("--smoke", action="store_true", help="apply the spec's smoke: overlay (checks the command only)")
    b.add_argument("--out", help="write the results as JSON here")
    b.set_defaults(func=cmd_bench)

    la = sub.add_parser("ladder", help="train rung specs in order, each until its train.until criterion holds or its "
                        "budget is spent; table of examples, time and energy to pass")
    la.add_argument("rungs", nargs="*", metavar="RUNG", help="rungs to train, by file stem or leading number "
                    "(default: all, in name order)")
    la.add_argument("--dir", default="experiments/ladder", help="folder of rung specs (default experiments/ladder)")
    la.add_argument("--seeds", default="0", help="comma-separated seeds, each rung trained once per seed (default 0)")
    la.add_argument("--set", action="append", metavar="KEY=VALUE", help="override for every rung (repeatable)")
    la.add_argument("--smoke", action="store_true", help="each rung's smoke: overlay (checks the command only)")
    la.add_argument("--keep-going", action="store_true", help="climb on after a rung that no seed passed")
    la.add_argument("--out", default="outputs/ladder", help="ladder.md / ladder.json, figures and wavs per rung")
    la.add_argument("--tracking-uri", help="MLflow store (default: $MLFLOW_TRACKING_URI or sqlite:///mlflow.db)")
    la.add_argument("--device", help="cpu | cuda | cuda:N (default: each spec's train.device, auto)")
    la.set_defaults(func=cmd_ladder)

    en = sub.add_parser("energy", help="print a run's energy: training, generation, CO2e, measured or estimated")
    en.add_argument("run_id", nargs="?", help="a run id (its folder under FRAMEWORK_RUNS_DIR or ./runs)")
    en.add_argument("--last", action="store_true", help="the most recently finished run in that folder")
    en.set_defaults(func=cmd_energy)

    g = sub.add_parser("generate", help="generate samples from a trained run or checkpoint")
    src = g.add_mutually_exclusive_group(required=True)
    src.add_argument("--run", metavar="RUN_ID", help="the run's checkpoint: in the runs folder, else the one logged "
                     "to the store (downloaded into the cache, ~/.cache/framework/checkpoints; $FRAMEWORK_CACHE_DIR)")
    src.add_argument("--checkpoint", metavar="PATH", help="a checkpoint.pt file")
    g.add_argument("--n", type=int, default=4, help="number of samples (default 4)")
    g.add_argument("--seconds", type=float, default=None, help="audio length (default: the training length)")
    g.add_argument("--truncation", type=float, default=None, help="truncated-normal latents |z| <= this")
    g.add_argument("--out", default="outputs/generate", help="output folder (default outputs/generate)")
    g.add_argument("--batch", type=int, default=8, help="samples generated per call (default 8)")
    g.add_argument("--seed", type=int, default=0, help="seed of the latents (default 0)")
    g.add_argument("--label", type=int, default=None,
                   help="class-conditional models: draw every sample of this class (default: uniform classes)")
    g.add_argument("--device", help="cpu | cuda | cuda:N (default: auto)")
    g.add_argument("--tracking-uri", help="MLflow store of --run (default: $MLFLOW_TRACKING_URI or "
                   "sqlite:///mlflow.db)")
    g.set_defaults(func=cmd_generate)

    for name, (run_fn, add_arguments, help_, module) in sorted((commands or {}).items()):
        if name in sub.choices:
            raise FrameworkError(f"plugin command '{name}' clashes with a core command")
        c = sub.add_parser(name, help=f"{help_} [plugin {module}]")
        add_arguments(c)
        c.set_defaults(func=run_fn)
    return p


def main(argv: list[str] | None = None) -> int:
    try:
        parser = build_parser(collect_commands())
        args = parser.parse_args(argv)
        return int(args.func(args) or 0)
    except FrameworkError as exc:
        print(f"error: {exc}", file=sys.stderr)
        for note in getattr(exc, "__notes__", []):  # errors that followed it (e.g. while a run was ended)
            print(f"  {note}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # the reader of stdout went away (`... | head`): no traceback, nothing more to say
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
