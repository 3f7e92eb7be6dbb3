"""Command line: ``python -m desupcon {train,study,reproduce,sweep,pretrain,evaluate-checkpoints} ...``.

Bad input exits with one line naming the field or the fix (no traceback).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

NOTEBOOKS = ("01_teacher", "02_baselines", "03_lw_supcrd_sweeps", "04_memory_bank_ablation",
             "05_moco_v3_pretraining", "06_analysis")


def _config(profile, what: str, overrides: list[str]):
    """The config of ``what``: a run of the registry under ``profile``, or a YAML file (MoCo-v3)."""
    if what.endswith((".yaml", ".yml")):
        from .moco_config import load_config

        return load_config(what, overrides)
    return profile.recipe(what).override(overrides)


def cmd_train(args) -> None:
    """Train one run; under ``torchrun --nproc_per_node=N`` the N processes train it together (DDP)."""
    from . import distributed
    from .profiles import resolve_profile
    from .train import train

    distributed.init_from_env()
    profile, reason = resolve_profile(args.profile)
    if distributed.is_main() and not args.run.endswith((".yaml", ".yml")):
        print(f"profile: {profile.name} ({reason})")
    summary = train(_config(profile, args.run, args.set), force_retrain=args.force_retrain)
    if distributed.is_main():
        _print_summary([summary])


def cmd_study(args) -> None:
    """Teacher, its projection head and the undistilled student: the quickest end-to-end check."""
    from .profiles import resolve_profile
    from .train import train

    profile, reason = resolve_profile(args.profile)
    print(f"profile: {profile.name} ({reason})")
    summaries = [train(cfg) for cfg in (profile.teacher_config(), profile.projection_config(),
                                        profile.student_config("undistilled"))]
    _print_summary(summaries)


def _print_summary(summaries) -> None:
    for s in summaries:
        print(f"{s['name']}: test acc {s['mean']['test_acc']:.2f}% (linear probe {s['mean']['probe_top1']:.2f}%, "
              f"k-NN {s['mean']['knn_top1']:.2f}%)")
        for ckpt, log in zip(s["checkpoints"], s["logs"]):
            print(f"  checkpoint: {ckpt}\n  log:        {log}")


def cmd_reproduce(args) -> None:
    """Execute every notebook in order under the active profile; executed copies go to ``--out``."""
    import nbformat
    from nbclient import NotebookClient

    from .profiles import resolve_profile
    from .store import load_results, output_root

    profile, reason = resolve_profile(args.profile)
    os.environ["DESUPCON_PROFILE"] = profile.name
    print(f"profile: {profile.name} ({reason})")
    notebooks_dir = Path(__file__).resolve().parents[1] / "notebooks"
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    selected = [n for n in NOTEBOOKS if not args.only or any(n.startswith(o) for o in args.only)]
    for name in selected:
        start = time.time()
        nb = nbformat.read(notebooks_dir / f"{name}.ipynb", as_version=4)
        print(f"[reproduce] {name}.ipynb ...", flush=True)
        NotebookClient(nb, timeout=None, kernel_name="python3",
                       resources={"metadata": {"path": str(notebooks_dir)}}).execute()
        nbformat.write(nb, out / f"{name}.ipynb")
        print(f"[reproduce] {name}.ipynb done in {time.time() - start:.0f} s -> {out / (name + '.ipynb')}")
    recorded = {**load_results(profile.teacher_config().results_group),
                **load_results(profile.student_config("undistilled").results_group)}
    for name, summary in recorded.items():
        checkpoints, logs = ", ".join(summary["checkpoints"]), ", ".join(summary["logs"])
        print(f"{name}: test acc {summary['mean']['test_acc']:.2f}% | checkpoint {checkpoints} | log {logs}")
    root = output_root()
    print(f"checkpoints: {root / 'pth_models'}\nlogs:        {root / 'json_results'}\nplots:       {root / 'plots'}")


def cmd_sweep(args) -> None:
    from .sweep import run_sweep

    run_sweep(args.grid, [d for d in args.gpus.split(",") if d], per_device=args.per_device, profile=args.profile)


def cmd_pretrain(args) -> None:
    """``train`` of a MoCo-v3 YAML config (the same engine)."""
    args.run, args.profile = args.config, None
    cmd_train(args)


def cmd_evaluate_checkpoints(args) -> None:
    from .moco import evaluate_checkpoints

    evaluate_checkpoints(args.config, args.epochs, overrides=args.set)


def build_parser() -> argparse.ArgumentParser:
    """The command line: one subcommand per entry point."""
    parser = argparse.ArgumentParser(prog="python -m desupcon", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    from .registry import runnable

    p = sub.add_parser("train", help="train one run (or load it from the cache); on several GPUs: "
                                     "torchrun --nproc_per_node=N -m desupcon train RUN (--set batch_size is global)")
    p.add_argument("run", help=f"one of {', '.join(runnable())}, or a MoCo-v3 YAML config")
    p.add_argument("--profile", help="smoke, cifar100 or auto (default: $DESUPCON_PROFILE, then auto)")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                   help="config overrides, e.g. alpha=2 teacher.epochs=3 (train.epochs=5 for a YAML config)")
    p.add_argument("--force-retrain", action="store_true", help="retrain even if a cached run exists")
    p.set_defaults(fn=cmd_train)
    p = sub.add_parser("study", help="teacher + projection head + undistilled student")
    p.add_argument("--profile")
    p.set_defaults(fn=cmd_study)
    p = sub.add_parser("reproduce", help="execute every notebook in order under the active profile")
    p.add_argument("--profile")
    p.add_argument("--only", nargs="*", help="notebook prefixes to run, e.g. 01 02")
    p.add_argument("--out", default="executed_notebooks", help="folder for the executed copies")
    p.set_defaults(fn=cmd_reproduce)
    p = sub.add_parser("sweep", help="run a notebook's grid in parallel, one process per device")
    p.add_argument("grid", help="notebook or grid name, e.g. 03_lw_supcrd_sweeps")
    p.add_argument("--gpus", default="0", help="comma-separated CUDA device ids (or cpu,cpu for CPU workers)")
    p.add_argument("--per-device", type=int, default=1, help="processes per device")
    p.add_argument("--profile")
    p.set_defaults(fn=cmd_sweep)
    p = sub.add_parser("pretrain", help="MoCo-v3 pretraining from a YAML config")
    p.add_argument("config", help="YAML file, e.g. configs/moco_v3_smoke.yaml")
    p.add_argument("--set", nargs="*", default=[], metavar="SECTION.KEY=VALUE", help="overrides, e.g. train.epochs=5")
    p.add_argument("--force-retrain", action="store_true", help="retrain even if a cached run exists")
    p.set_defaults(fn=cmd_pretrain)
    p = sub.add_parser("evaluate-checkpoints", help="k-NN and linear probe of saved MoCo-v3 checkpoints")
    p.add_argument("config", help="the YAML config the checkpoints were trained with")
    p.add_argument("--epochs", nargs="+", type=int, required=True, help="checkpoint epochs, e.g. 1 10 50 100")
    p.add_argument("--set", nargs="*", default=[], metavar="SECTION.KEY=VALUE")
    p.set_defaults(fn=cmd_evaluate_checkpoints)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    from .checks import DivergenceError
    from .config import ConfigError
    from .data import DatasetUnavailableError
    from .store import ArtefactWriteError, CheckpointError, StaleRunError

    try:
        args.fn(args)
    except (ConfigError, DatasetUnavailableError, CheckpointError, StaleRunError, DivergenceError, ArtefactWriteError,
            FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
