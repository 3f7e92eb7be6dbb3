"""Command line: ``python -m desupcon {train,study,reproduce,sweep,pretrain,memory,prepare-data,evaluate-checkpoints} ...``.

Bad input exits with one line naming the field or the fix (no traceback).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path



def _config(profile, what: str, overrides: list[str]):
    """The config of ``what``: a run of the registry under ``profile``, or a self-supervised run's YAML file."""
    if what.endswith((".yaml", ".yml")):
        from desupcon.methods.ssl.config import load_config

        return load_config(what, overrides)
    return profile.recipe(what).override(overrides)


def command_index() -> dict:
    """The command line's index of runs and their keys (``desupcon.core.cli_index``), built on first use."""
    from desupcon.core import cli_index

    def build() -> dict:
        from desupcon.study.profiles import cli_index as runs

        return runs()

    return cli_index.load(build)


def _check_run(run: str, overrides: list[str]) -> None:
    """A mistyped run, key or value of a registry run answered from the index, before torch is imported.

    The index stands in for the method registry in a fresh process only: where the registry is already
    loaded (``main`` called from a notebook, a test, or after a method was registered at run time), the
    config build checks against the live registry at no extra cost."""
    if not run.endswith((".yaml", ".yml")) and "desupcon.methods" not in sys.modules:
        from desupcon.core.cli_index import check_run

        check_run(command_index(), run, overrides)


def cmd_train(args) -> None:
    """Train one run; under ``torchrun --nproc_per_node=N`` the N processes train it together (DDP)."""
    _check_run(args.run, args.set)
    from desupcon.core import distributed
    from desupcon.study.profiles import resolve_profile
    from desupcon.study.train import train

    distributed.init_from_env()
    profile, reason = resolve_profile(args.profile)
    if distributed.is_main() and not args.run.endswith((".yaml", ".yml")):
        print(f"profile: {profile.name} ({reason})")
    summary = train(_config(profile, args.run, args.set), force_retrain=args.force_retrain, fast=FAST[args.fast])
    if distributed.is_main():
        _print_summary([summary])


FAST = {"auto": "auto", "on": True, "off": False}  # --fast -> Trainer(fast=...)


def _fast_flag(p):
    p.add_argument("--fast", choices=FAST, default="auto",
                   help="mixed precision: auto (default) = bf16 autocast + channels_last where the hardware runs "
                        "bf16 natively (CUDA; CPUs with AMX or AVX-512 BF16) and the recipe's amp allows it, "
                        "fp32 elsewhere; on; off")


def cmd_study(args) -> None:
    """Teacher, its projection head and the undistilled student: the quickest end-to-end check."""
    from desupcon.study.profiles import resolve_profile
    from desupcon.study.train import train

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
    from desupcon.study.profiles import resolve_profile
    from desupcon.core.paths import output_root
    from desupcon.engine.runs import load_results
    from desupcon.study.reproduce import reproduce

    profile, reason = resolve_profile(args.profile)
    os.environ["DESUPCON_PROFILE"] = profile.name
    print(f"profile: {profile.name} ({reason})")
    try:
        reproduce(args.only, args.out)
    finally:
        recorded = {**load_results(profile.teacher_config().results_group),
                    **load_results(profile.student_config("undistilled").results_group)}
        for name, summary in recorded.items():
            checkpoints, logs = ", ".join(summary["checkpoints"]), ", ".join(summary["logs"])
            print(f"{name}: test acc {summary['mean']['test_acc']:.2f}% | checkpoint {checkpoints} | log {logs}")
        root = output_root()
        print(f"checkpoints: {root / 'pth_models'}\nlogs:        {root / 'json_results'}\n"
              f"plots:       {root / 'plots'}\nexecuted notebooks: {Path(args.out).resolve()}")


LAUNCHERS = {"slurm": "slurm", "slurm-local": "local"}  # --launcher -> submit_sweep(cluster=...)


def cmd_sweep(args) -> int:
    """Run a grid (``--launcher``); 1 after one line naming each failed run and its error, once the others finished."""
    from desupcon.study.sweep import SweepError, run_sweep

    try:
        if args.launcher in LAUNCHERS:
            from desupcon.study.slurm import submit_sweep

            submit_sweep(args.grid, profile=args.profile, cluster=LAUNCHERS[args.launcher], partition=args.partition,
                         timeout_min=args.timeout_min)
        else:
            run_sweep(args.grid, [d for d in args.gpus.split(",") if d], per_device=args.per_device,
                      profile=args.profile)
    except SweepError as err:  # the runs that did not fail are finished and cached
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


def cmd_pretrain(args) -> None:
    """``train`` of a self-supervised run's YAML config (the same engine; its ``method`` names the task)."""
    args.run, args.profile = args.config, None
    cmd_train(args)


def cmd_memory(args) -> None:
    """Peak GPU memory of one training process of a run, measured on fake tensors, and the batch each card fits."""
    _check_run(args.config, args.set)
    from desupcon.engine.memory import report
    from desupcon.study.profiles import resolve_profile

    profile, _ = resolve_profile(args.profile)
    print("\n".join(report(_config(profile, args.config, args.set), world_size=args.world_size)))


def cmd_prepare_data(args) -> None:
    """Decode a source once into the prepared cache (``desupcon.images.prepared``); print each entry and its size."""
    from desupcon.images.datasets import prepare_data
    from desupcon.images.prepared import human_bytes

    entries = prepare_data(args.source, args.size, args.split, args.image_column, args.label_column, args.workers)
    for split, entry in entries:
        side = entry.manifest["size"]
        print(f"{split}: {entry.count:,} images at {side}x{side}, {human_bytes(entry.nbytes)}: {entry.folder}")
    print(f"total {human_bytes(sum(e.nbytes for _, e in entries))} in {entries[0][1].folder.parent}")


def cmd_evaluate_checkpoints(args) -> None:
    from desupcon.methods.ssl.base import evaluate_checkpoints

    evaluate_checkpoints(args.config, args.epochs, overrides=args.set)


def _tensorboard_flag(p):
    p.add_argument("--tensorboard", action="store_true",
                   help="write live per-epoch curves to <output home>/tensorboard/<run> (desupcon.engine.live)")


def build_parser() -> argparse.ArgumentParser:
    """The command line: one subcommand per entry point."""
    parser = argparse.ArgumentParser(prog="python -m desupcon", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    runs = "teacher, projection or a student method such as crd or lw_supcrd (a name it does not know lists them)"
    p = sub.add_parser("train", help="train one run (or load it from the cache); on several GPUs: "
                                     "torchrun --nproc_per_node=N -m desupcon train RUN (--set batch_size is global)")
    p.add_argument("run", help=f"a run: {runs}; or a MoCo-v3 YAML config")
    p.add_argument("--profile", help="smoke, cifar100 or auto (default: $DESUPCON_PROFILE, then auto)")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                   help="config overrides, e.g. alpha=2 teacher.epochs=3 (train.epochs=5 for a YAML config)")
    p.add_argument("--force-retrain", action="store_true", help="retrain even if a cached run exists")
    _tensorboard_flag(p)
    _fast_flag(p)
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
    p.add_argument("--launcher", choices=("local", *LAUNCHERS), default="local",
                   help="local: worker processes on this machine; slurm: job arrays through submitit; "
                        "slurm-local: the same job arrays on this machine (submitit's local executor, CPU), "
                        "to try a grid before submitting it")
    p.add_argument("--partition", help="Slurm partition (--launcher slurm)")
    p.add_argument("--timeout-min", type=int, default=24 * 60, help="time limit per Slurm task in minutes")
    _tensorboard_flag(p)
    p.set_defaults(fn=cmd_sweep)
    p = sub.add_parser("pretrain", help="MoCo-v3 pretraining from a YAML config")
    p.add_argument("config", help="YAML file, e.g. configs/moco_v3_smoke.yaml")
    p.add_argument("--set", nargs="*", default=[], metavar="SECTION.KEY=VALUE", help="overrides, e.g. train.epochs=5")
    p.add_argument("--force-retrain", action="store_true", help="retrain even if a cached run exists")
    _tensorboard_flag(p)
    _fast_flag(p)
    p.set_defaults(fn=cmd_pretrain)
    p = sub.add_parser("memory", help="peak GPU memory of one training step (fake-tensor trace, no GPU needed) "
                                      "and the largest batch for 8-80 GB cards")
    p.add_argument("config", help=f"a MoCo-v3 YAML config, or a run: {runs}")
    p.add_argument("--profile", help="the profile of a run (default: $DESUPCON_PROFILE, then auto)")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                   help="config overrides, e.g. train.batch_size=64 (YAML) or bank_k=4096 (a run)")
    p.add_argument("--world-size", type=int, default=1,
                   help="processes the global batch is split over (default: 1)")
    p.set_defaults(fn=cmd_memory)
    p = sub.add_parser("prepare-data", help="decode a folder of images or a Hugging Face dataset once into the "
                                            "memory-mappable cache a run reads (README: Your own data)")
    p.add_argument("source", help="a built-in name (e.g. stl10), a folder of images or a Hugging Face dataset on disk "
                                  "(absolute, or relative to $DESUPCON_DATA)")
    p.add_argument("--size", type=int, help="side to store your images at: the run's data.image_size (built-ins keep theirs)")
    p.add_argument("--split", nargs="*", default=[], help="splits to prepare, '+' joins them, e.g. train+unlabeled test "
                                                          "(default: every split of the source)")
    p.add_argument("--image-column", default="image", help="image column of a Hugging Face dataset (default: image)")
    p.add_argument("--label-column", default="label",
                   help="label column of a Hugging Face dataset, '' for unlabelled images (default: label)")
    p.add_argument("--workers", type=int, help="decoding processes (default: the CPU cores, at most 16)")
    p.set_defaults(fn=cmd_prepare_data)
    p = sub.add_parser("evaluate-checkpoints", help="k-NN and linear probe of saved MoCo-v3 checkpoints")
    p.add_argument("config", help="the YAML config the checkpoints were trained with")
    p.add_argument("--epochs", nargs="+", type=int, required=True, help="checkpoint epochs, e.g. 1 10 50 100")
    p.add_argument("--set", nargs="*", default=[], metavar="SECTION.KEY=VALUE")
    p.set_defaults(fn=cmd_evaluate_checkpoints)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    from desupcon.core.errors import (ArtefactWriteError, CheckpointError, ConfigError, DatasetUnavailableError,
                                      DivergenceError, StaleRunError)
    from desupcon.study.reproduce import StudyIncomplete

    if getattr(args, "tensorboard", False):
        from desupcon.engine.live import ENV

        os.environ[ENV] = "1"  # read by every run of this process and of its sweep workers
    try:
        status = args.fn(args)  # None, or a command's own exit status
    except KeyboardInterrupt as err:
        from desupcon.core.paths import output_root

        print(f"\n{err}" if str(err) else f"\n[interrupted] nothing finished is lost; rerun the same command to resume "
              f"each unfinished run from its last epoch checkpoint in {output_root() / 'pth_models'}", file=sys.stderr)
        return 130
    except (ConfigError, DatasetUnavailableError, CheckpointError, StaleRunError, DivergenceError, ArtefactWriteError,
            FileNotFoundError, StudyIncomplete) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return status or 0


if __name__ == "__main__":
    sys.exit(main())
