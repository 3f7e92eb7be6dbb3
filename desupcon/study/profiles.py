"""Profiles bundle dataset, architectures, widths, epochs, batch sizes and sweep grids.

``smoke`` trains tiny networks on scikit-learn's bundled digits (no download, minutes on a CPU);
``cifar100`` is the write-ups' recipe. ``DESUPCON_PROFILE`` selects one; ``auto`` (the default) picks
``cifar100`` on a CUDA machine and ``smoke`` otherwise.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from desupcon.core.errors import ConfigError
from desupcon.core.paths import REPOSITORY
from desupcon.methods.distill.config import RunConfig
from desupcon.methods.distill.registry import BANK_ABLATION_RECIPE, METHODS, runnable
from desupcon.methods.ssl.config import load_config

CONFIGS = REPOSITORY / "configs"
STUDENT_RECIPES = ("sweeps", "bank_ablation")


@dataclass(frozen=True)
class Profile:
    """A named recipe. Grids are the values each sweep notebook trains; ``headline_seeds`` are the
    seeds of the main LW-SupCRD configuration (every other run uses ``seeds``)."""

    name: str
    dataset: str
    teacher_arch: str
    student_arch: str
    teacher_width: int
    student_width: int
    batch_size: int
    teacher_epochs: int
    teacher_optimizer: str
    teacher_lr: float
    teacher_weight_decay: float
    projection_epochs: int
    student_epochs: int
    student_lr: float
    bank_k: int
    knn_k: int
    probe_iterations: int
    seeds: tuple[int, ...]
    headline_seeds: tuple[int, ...]
    alphas: tuple[float, ...]
    betas: tuple[float, ...]
    temperatures: tuple[float, ...]
    hybrid_lambdas: tuple[float, ...]
    moco: str  # the MoCo-v3 YAML config of this profile, in configs/

    def teacher_config(self) -> RunConfig:
        """The teacher: ResNet-50 trained with cross-entropy."""
        return RunConfig(
            role="teacher", method="ce", profile=self.name, dataset=self.dataset, arch=self.teacher_arch,
            width=self.teacher_width, epochs=self.teacher_epochs, batch_size=self.batch_size,
            optimizer=self.teacher_optimizer, lr=self.teacher_lr, weight_decay=self.teacher_weight_decay,
            schedule="cosine", warmup_epochs=1 if self.teacher_optimizer == "sgd" else 0,
            knn_k=self.knn_k, probe_iterations=self.probe_iterations, seeds=self.seeds[:1]).validate()

    def projection_config(self) -> RunConfig:
        """The teacher's 64-d cosine projection head, trained with SupCon on the frozen teacher."""
        return RunConfig(
            role="projection", method="supcon_head", profile=self.name, dataset=self.dataset,
            arch=self.teacher_arch, width=self.teacher_width, epochs=self.projection_epochs,
            batch_size=self.batch_size, lr=self.student_lr, weight_decay=0.0, knn_k=self.knn_k,
            probe_iterations=self.probe_iterations, seeds=self.seeds[:1], teacher=self.teacher_config()).validate()

    def moco_config(self, overrides=()):
        """This profile's MoCo-v3 run (``configs/<moco>``), with ``section.key=value`` overrides."""

        return load_config(CONFIGS / self.moco, overrides)

    def recipe(self, run: str) -> RunConfig:
        """This profile's config of ``run``: "teacher", "projection" or a student method of the registry."""

        if run == "teacher":
            return self.teacher_config()
        if run == "projection":
            return self.projection_config()
        if run not in runnable():
            raise ConfigError(f"unknown run '{run}': choose one of {runnable()}")
        return self.student_config(run)

    def student_config(self, method: str, recipe: str = "sweeps", **overrides) -> RunConfig:
        """A student distilled (or not) by ``method``; ``overrides`` replace any ``RunConfig`` field.

        ``recipe`` is one of the write-ups' two student recipes: "sweeps" (baselines and sweeps: Adam,
        constant lr, no weight decay) or "bank_ablation" (plus ``registry.BANK_ABLATION_RECIPE``: weight
        decay 1e-4 and cosine annealing).
        """

        if recipe not in STUDENT_RECIPES:
            raise ConfigError(f"unknown student recipe '{recipe}': choose one of {list(STUDENT_RECIPES)}")

        needs_teacher = method in METHODS and METHODS[method].needs_teacher
        base = RunConfig(
            role="student", method=method, profile=self.name, dataset=self.dataset, arch=self.student_arch,
            width=self.student_width, epochs=self.student_epochs, batch_size=self.batch_size, optimizer="adam",
            lr=self.student_lr, knn_k=self.knn_k, probe_iterations=self.probe_iterations, seeds=self.seeds[:1],
            teacher=self.projection_config() if needs_teacher else None)
        if recipe == "bank_ablation":
            base = base.replace(**BANK_ABLATION_RECIPE)
        params = {k: overrides.pop(k) for k in list(overrides) if k in getattr(METHODS.get(method), "params", {})}
        return base.replace(**overrides).replace(params=tuple(sorted(params.items())))


PROFILES = {
    "smoke": Profile(
        name="smoke", dataset="digits", teacher_arch="resnet50", student_arch="resnet18",
        teacher_width=16, student_width=16, batch_size=64,
        teacher_epochs=12, teacher_optimizer="adam", teacher_lr=2e-3, teacher_weight_decay=1e-4,
        projection_epochs=3, student_epochs=8, student_lr=2e-3,
        bank_k=512, knn_k=20, probe_iterations=100, seeds=(42,), headline_seeds=(42, 43),
        alphas=(1.0, 5.0), betas=(1.0, 10.0), temperatures=(0.05, 0.07), hybrid_lambdas=(0.5,),
        moco="moco_v3_smoke.yaml"),
    "cifar100": Profile(
        name="cifar100", dataset="cifar100", teacher_arch="resnet50", student_arch="resnet18",
        teacher_width=64, student_width=64, batch_size=128,
        teacher_epochs=200, teacher_optimizer="sgd", teacher_lr=0.1, teacher_weight_decay=5e-4,
        projection_epochs=10, student_epochs=50, student_lr=1e-3,
        bank_k=4096, knn_k=200, probe_iterations=100, seeds=(42,), headline_seeds=(42, 43, 44),
        alphas=(1.0, 2.0, 5.0, 10.0), betas=(1.0, 5.0, 10.0, 12.0), temperatures=(0.05, 0.07),
        hybrid_lambdas=(0.3, 0.5, 0.7, 0.9), moco="moco_v3_vit_small_stl10.yaml"),
}


def resolve_profile(name: str | None = None) -> tuple[Profile, str]:
    """Return ``(profile, reason)``. ``name`` defaults to ``$DESUPCON_PROFILE``, then ``auto``."""
    requested = name or os.environ.get("DESUPCON_PROFILE") or "auto"
    source = "argument" if name else "DESUPCON_PROFILE"
    if requested == "auto":
        if torch.cuda.is_available():
            return PROFILES["cifar100"], "auto: a CUDA GPU is available"
        return PROFILES["smoke"], "auto: no CUDA GPU, so the embedded digits dataset on the CPU"
    if requested not in PROFILES:
        raise ConfigError(f"unknown profile '{requested}' (from the {source}): choose one of "
                          f"{sorted(PROFILES) + ['auto']}")
    return PROFILES[requested], f"{source}={requested}"


def cli_index() -> dict:
    """What ``python -m desupcon train RUN --set KEY=VALUE`` takes, for the command line's index
    (``desupcon.core.cli_index``): each run with its config's keys (types and requirements) and the keys
    an unknown-key message lists. The keys are the same under every profile."""
    configs = {run: PROFILES["smoke"].recipe(run) for run in runnable()}
    return {"runs": {run: {"keys": cfg.override_keys(), "listed": cfg.keys()} for run, cfg in configs.items()}}
