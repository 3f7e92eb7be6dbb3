"""desupcon: contrastive knowledge distillation (LW-SupCRD and baselines) and self-supervised pretraining.

The package is layered; each layer imports only from itself and the layers below (README:
Architecture; ``tests/test_layers.py`` enforces it):

``core`` (errors, paths, artefacts, config machinery, checks, DDP helpers) -> ``images`` (sources,
prepared cache, streaming, datasets, augmentation) and ``nn`` (networks, heads, losses, banks) ->
``engine`` (``Recipe``, the ``Task`` base and registry, trainer, evaluation, metrics, memory tracing,
run cache) -> ``methods`` (distillation and self-supervised tasks, which register themselves) ->
``study`` (train, profiles, grids, sweeps, Slurm, reproduce) -> ``analysis`` (figures, plots,
report, statistics, reference results) -> ``__main__`` (the command line).

The names researchers use most are importable from here (``from desupcon import train``); each is
loaded on first use, so ``import desupcon`` stays cheap.
"""

import importlib

__version__ = "0.1.0"

# public name -> the module that defines it
EXPORTS = {
    "train": "desupcon.study.train", "pretrain": "desupcon.study.train",
    "resolve_profile": "desupcon.study.profiles", "PROFILES": "desupcon.study.profiles",
    "run_sweep": "desupcon.study.sweep", "submit_sweep": "desupcon.study.slurm",
    "load_model": "desupcon.methods.distill.task", "StepOutputs": "desupcon.methods.distill.task",
    "RunConfig": "desupcon.methods.distill.config",
    "Method": "desupcon.methods.distill.registry", "Param": "desupcon.methods.distill.registry",
    "register": "desupcon.methods.distill.registry", "METHODS": "desupcon.methods.distill.registry",
    "SSLConfig": "desupcon.methods.ssl.config", "MocoConfig": "desupcon.methods.ssl.config",
    "load_config": "desupcon.methods.ssl.config", "load_encoder": "desupcon.methods.ssl.base",
    "evaluate_checkpoints": "desupcon.methods.ssl.base",
    "Task": "desupcon.engine.task", "TaskConfig": "desupcon.engine.task", "register_task": "desupcon.engine.task",
    "alignment": "desupcon.engine.metrics", "uniformity": "desupcon.engine.metrics",
    "supcon_loss": "desupcon.nn.losses", "crd_loss": "desupcon.nn.losses", "lw_supcrd_loss": "desupcon.nn.losses",
    "hybrid_loss": "desupcon.nn.losses", "kd_loss": "desupcon.nn.losses", "moco_v3_loss": "desupcon.nn.losses",
    "MomentumMemoryBank": "desupcon.nn.banks", "FIFOQueue": "desupcon.nn.banks",
    "draw_run": "desupcon.analysis.figures",
}


def __getattr__(name: str):
    if name not in EXPORTS:
        raise AttributeError(f"module 'desupcon' has no attribute '{name}'")
    importlib.import_module("desupcon.methods")  # every built-in task registered before any is used
    return getattr(importlib.import_module(EXPORTS[name]), name)


def __dir__() -> list[str]:
    return sorted([*globals(), *EXPORTS])
