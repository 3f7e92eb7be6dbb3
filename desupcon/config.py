"""One typed config object per training run, validated in one place.

A ``RunConfig`` fully describes a run: it is stored inside the run's checkpoint and JSON log,
and a cached run is reused only when its stored config equals the requested one. A student's
config embeds its teacher's config, so retraining the teacher invalidates its students.

A run's name spells out its method's hyperparameters as the seed study did, then every other
field that differs from its profile's recipe (``..._digits_lr_0.003``): changing a hyperparameter
makes a new run beside the recipe's, so it trains while every other run stays cached.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Optional

ROLES = ("teacher", "projection", "student")
STUDENT_METHODS = ("undistilled", "supcon", "crd", "kd", "lw_supcrd", "hybrid")
CONTRASTIVE_METHODS = ("supcon", "crd", "lw_supcrd", "hybrid")
TEACHER_METHODS = ("kd", "crd", "lw_supcrd", "hybrid")  # student methods that need a teacher
ARCHS = ("resnet18", "resnet50")
DATASETS = ("digits", "cifar10", "cifar100", "stl10")
OPTIMIZERS = ("adam", "adamw", "sgd")
AUGMENTATIONS = ("standard", "supcon", "moco", "satellite", "none")
DEFAULT_SEED = 42

# The hyperparameters each student method's name spells out (the seed study's file names).
_NAMED_HYPERPARAMETERS = {
    "undistilled": (), "supcon": ("temperature",), "crd": ("temperature",), "kd": ("kd_temperature",),
    "lw_supcrd": ("alpha", "beta", "temperature", "adaptive_beta"),
    "hybrid": ("hybrid_lambda", "alpha", "beta", "temperature", "adaptive_beta"),
}
# Fields no name suffix repeats: the stem says role, method, arch and dataset, ``run_name`` the seed,
# the teacher gets its own ``_from_<teacher>`` part and a profile clash is the stale-cache guard's.
_UNNAMED = ("role", "method", "profile", "dataset", "arch", "seeds", "teacher")


class ConfigError(ValueError):
    """A config field has a bad value; the message names the field and a valid choice."""


@dataclass(frozen=True)
class RunConfig:
    """Everything that defines one training run (defaults: the seed's CIFAR-100 student recipe).

    Args:
        role: "teacher" (backbone + classifier, cross-entropy), "projection" (the teacher's 64-d
            cosine projection head trained with SupCon on the frozen teacher) or "student".
        method: for students one of ``STUDENT_METHODS``; "ce" for the teacher, "supcon" for projection.
        profile: the profile that produced this config ("smoke", "cifar100"); part of cache identity.
        dataset: "digits" (embedded), "cifar10", "cifar100" or "stl10".
        arch: "resnet18" or "resnet50" (CIFAR stem: 3x3 conv, no max-pool).
        width: channels of the first ResNet stage (64 = standard; smaller for smoke).
        proj_dim: dimension of the L2-normalised projection (64).
        epochs, batch_size: training length and per-step batch (per process under DDP).
        optimizer, lr, weight_decay, sgd_momentum: optimiser ("adam" as in the seed).
        warmup_epochs: linear warmup before cosine annealing (per step).
        seeds: one run per seed; results report mean and std over seeds.
        temperature: tau of the contrastive losses.
        alpha, beta, adaptive_beta: LW-SupCRD pull weight, push weight and adaptive beta.
        hybrid_lambda: weight of SupCon in ``hybrid`` (lambda*supcon + (1-lambda)*lw_supcrd).
        kd_temperature, kd_weight: Hinton KD temperature and weight (loss = (1-w) CE + w KD).
        bank_k: memory-bank keys sampled per step (0 = no bank); the bank has one slot per image.
        bank_momentum: momentum of the memory-bank update.
        bank_positives: same-label bank entries count as positives (False = the seed's all-negatives).
        augment: augmentation preset for the training views (see ``desupcon.augment.PRESETS``).
        knn_k: neighbours of the weighted k-NN evaluation.
        probe_epochs: epochs of the linear probe on frozen features.
        compile: wrap the student in ``torch.compile`` (CUDA only; off by default).
        teacher: config of the teacher run this run builds on (projection and distilled students).
    """

    role: str = "student"
    method: str = "undistilled"
    profile: str = "cifar100"
    dataset: str = "cifar100"
    arch: str = "resnet18"
    width: int = 64
    proj_dim: int = 64
    epochs: int = 50
    batch_size: int = 128
    optimizer: str = "adam"
    lr: float = 1e-3
    weight_decay: float = 1e-4
    sgd_momentum: float = 0.9
    warmup_epochs: int = 0
    seeds: tuple[int, ...] = (DEFAULT_SEED,)
    temperature: float = 0.07
    alpha: float = 1.0
    beta: float = 10.0
    adaptive_beta: bool = True
    hybrid_lambda: float = 0.5
    kd_temperature: float = 4.0
    kd_weight: float = 0.9
    bank_k: int = 0
    bank_momentum: float = 0.5
    bank_positives: bool = True
    augment: str = "supcon"
    knn_k: int = 200
    probe_epochs: int = 50
    compile: bool = False
    teacher: Optional["RunConfig"] = field(default=None)

    @property
    def name(self) -> str:
        """Human-readable run name: ``seed_name``, then each other field that differs from the
        profile's recipe for this run, e.g. ``student_undistilled_resnet18_digits_lr_0.003_epochs_4``."""
        return self.seed_name + self._variant()

    @property
    def seed_name(self) -> str:
        """The name as the seed study spelled it, e.g. ``student_alpha_1.0_beta_10.0_temp_0.07_resnet18_cifar100``."""
        suffix = f"{self.arch}_{self.dataset}"
        if self.role == "teacher":
            return f"teacher_{suffix}"
        if self.role == "projection":
            return f"teacher_{suffix}_with_projection"
        stem = {
            "undistilled": "student_undistilled",
            "supcon": f"student_baseline_supcon_temp_{self.temperature}",
            "crd": f"student_baseline_crd_temp_{self.temperature}",
            "kd": f"student_baseline_kd_T_{self.kd_temperature}",
            "lw_supcrd": f"student_alpha_{self.alpha}_beta_{self.beta}_temp_{self.temperature}",
            "hybrid": f"student_hybrid_lambda_{self.hybrid_lambda}_alpha_{self.alpha}_beta_{self.beta}"
            f"_temp_{self.temperature}",
        }[self.method]
        if self.method in ("lw_supcrd", "hybrid") and not self.adaptive_beta:
            stem += "_fixedbeta"
        if self.bank_k:
            stem += f"_bank{self.bank_k}" + ("" if self.bank_positives else "_allneg")
        return f"{stem}_{suffix}"

    def _variant(self) -> str:
        """``_<field>_<value>`` for each field ``seed_name`` leaves out that differs from the recipe."""
        from .profiles import PROFILES  # profiles builds RunConfigs, so it imports this module

        if self.profile not in PROFILES:
            return ""
        recipe = PROFILES[self.profile].recipe(self.role, self.method)
        named = _UNNAMED
        if self.role == "student":
            named += _NAMED_HYPERPARAMETERS[self.method] + ("bank_k", "bank_positives")
        parts = [f"_{f.name}_{getattr(self, f.name)}" for f in dataclasses.fields(self)
                 if f.name not in named and getattr(self, f.name) != getattr(recipe, f.name)]
        if self.teacher is not None and recipe.teacher is not None and self.teacher.name != recipe.teacher.name:
            parts.append(f"_from_{self.teacher.name}")
        return "".join(parts)

    @property
    def uses_teacher(self) -> bool:
        return self.role == "projection" or (self.role == "student" and self.method in TEACHER_METHODS)

    def for_seed(self, seed: int) -> "RunConfig":
        """The single-seed config of one run (what its checkpoint stores)."""
        return dataclasses.replace(self, seeds=(seed,))

    def run_name(self, seed: int) -> str:
        """File stem of one seed's run: the plain name for ``DEFAULT_SEED`` (the seed study's 42,
        so its file names are kept), ``<name>_seed<s>`` for any other seed."""
        return self.name if seed == DEFAULT_SEED else f"{self.name}_seed{seed}"

    def replace(self, **changes: Any) -> "RunConfig":
        """A copy with ``changes`` applied and validated; unknown fields raise ``ConfigError``."""
        unknown = sorted(set(changes) - {f.name for f in dataclasses.fields(self)})
        if unknown:
            raise ConfigError(f"unknown config field(s) {unknown}; valid fields: {field_names()}")
        return validate(dataclasses.replace(self, **changes))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "RunConfig":
        d = dict(d)
        if d.get("teacher") is not None:
            d["teacher"] = cls.from_dict(d["teacher"])
        d["seeds"] = tuple(d.get("seeds", (DEFAULT_SEED,)))
        unknown = sorted(set(d) - set(field_names()))
        if unknown:
            raise ConfigError(f"unknown config field(s) {unknown}; valid fields: {field_names()}")
        return cls(**d)


def field_names() -> list[str]:
    return [f.name for f in dataclasses.fields(RunConfig)]


def config_diff(stored: dict, requested: dict, prefix: str = "") -> dict[str, tuple]:
    """Fields whose values differ, as ``{"teacher.epochs": (stored, requested)}``."""
    diff = {}
    for key in sorted(set(stored) | set(requested)):
        a, b = stored.get(key, "<missing>"), requested.get(key, "<missing>")
        if isinstance(a, dict) and isinstance(b, dict):
            diff.update(config_diff(a, b, f"{prefix}{key}."))
        elif (list(a) if isinstance(a, (list, tuple)) else a) != (list(b) if isinstance(b, (list, tuple)) else b):
            diff[f"{prefix}{key}"] = (a, b)
    return diff


def _check(ok: bool, field_name: str, value: Any, requirement: str) -> None:
    if not ok:
        raise ConfigError(f"config field '{field_name}' = {value!r}: {requirement}")


def _choice(cfg: RunConfig, field_name: str, choices: tuple) -> None:
    value = getattr(cfg, field_name)
    _check(value in choices, field_name, value, f"must be one of {list(choices)}")


def validate(cfg: RunConfig, num_train: Optional[int] = None, world_size: int = 1) -> RunConfig:
    """Check types, ranges and combinations before any work starts; return ``cfg`` unchanged.

    ``num_train`` (training-set size) enables the checks of batch and bank size against the data;
    ``world_size`` checks that the global batch divides over the processes.
    """
    for name, typ in (("width", int), ("proj_dim", int), ("epochs", int), ("batch_size", int),
                      ("warmup_epochs", int), ("bank_k", int), ("knn_k", int), ("probe_epochs", int)):
        value = getattr(cfg, name)
        _check(isinstance(value, typ) and not isinstance(value, bool), name, value, f"must be an {typ.__name__}")
    for name in ("lr", "weight_decay", "sgd_momentum", "temperature", "alpha", "beta", "hybrid_lambda",
                 "kd_temperature", "kd_weight", "bank_momentum"):
        value = getattr(cfg, name)
        _check(isinstance(value, (int, float)) and not isinstance(value, bool), name, value, "must be a number")
    for name in ("adaptive_beta", "bank_positives", "compile"):
        _check(isinstance(getattr(cfg, name), bool), name, getattr(cfg, name), "must be True or False")
    _choice(cfg, "role", ROLES)
    _choice(cfg, "arch", ARCHS)
    _choice(cfg, "dataset", DATASETS)
    _choice(cfg, "optimizer", OPTIMIZERS)
    _choice(cfg, "augment", AUGMENTATIONS)
    if cfg.role == "student":
        _choice(cfg, "method", STUDENT_METHODS)
    else:
        expected = "ce" if cfg.role == "teacher" else "supcon"
        _check(cfg.method == expected, "method", cfg.method, f"a {cfg.role} run uses method '{expected}'")
    _check(cfg.lr > 0, "lr", cfg.lr, "must be > 0 (the seed uses 1e-3 with Adam)")
    _check(cfg.weight_decay >= 0, "weight_decay", cfg.weight_decay, "must be >= 0")
    _check(0 <= cfg.sgd_momentum < 1, "sgd_momentum", cfg.sgd_momentum, "must be in [0, 1)")
    _check(cfg.width >= 4, "width", cfg.width, "must be >= 4")
    _check(cfg.proj_dim >= 2, "proj_dim", cfg.proj_dim, "must be >= 2")
    _check(cfg.epochs >= 1, "epochs", cfg.epochs, "must be >= 1")
    _check(cfg.batch_size >= 2, "batch_size", cfg.batch_size, "must be >= 2 (contrastive losses need pairs)")
    _check(0 <= cfg.warmup_epochs < cfg.epochs, "warmup_epochs", cfg.warmup_epochs, "must be in [0, epochs)")
    _check(isinstance(cfg.seeds, tuple) and len(cfg.seeds) >= 1 and all(isinstance(s, int) for s in cfg.seeds),
           "seeds", cfg.seeds, "must be a non-empty tuple of ints")
    _check(len(set(cfg.seeds)) == len(cfg.seeds), "seeds", cfg.seeds, "must not repeat a seed")
    _check(cfg.temperature > 0, "temperature", cfg.temperature, "must be > 0 (the seed uses 0.07)")
    _check(cfg.alpha > 0, "alpha", cfg.alpha, "must be > 0 (the loss is divided by alpha)")
    _check(cfg.beta >= 0, "beta", cfg.beta, "must be >= 0")
    _check(0 <= cfg.hybrid_lambda <= 1, "hybrid_lambda", cfg.hybrid_lambda, "must be in [0, 1]")
    _check(cfg.kd_temperature > 0, "kd_temperature", cfg.kd_temperature, "must be > 0")
    _check(0 <= cfg.kd_weight <= 1, "kd_weight", cfg.kd_weight, "must be in [0, 1]")
    _check(cfg.bank_k >= 0, "bank_k", cfg.bank_k, "must be >= 0 (0 = no memory bank)")
    _check(0 <= cfg.bank_momentum < 1, "bank_momentum", cfg.bank_momentum, "must be in [0, 1)")
    _check(cfg.knn_k >= 1, "knn_k", cfg.knn_k, "must be >= 1")
    _check(cfg.probe_epochs >= 1, "probe_epochs", cfg.probe_epochs, "must be >= 1")
    if cfg.bank_k:
        _check(cfg.role == "student" and cfg.method in ("crd", "lw_supcrd", "hybrid"), "bank_k", cfg.bank_k,
               "a memory bank is used only by crd, lw_supcrd and hybrid students; set bank_k=0")
    if cfg.uses_teacher:
        _check(cfg.teacher is not None, "teacher", None,
               f"a {cfg.role} run with method '{cfg.method}' needs a teacher config")
    if cfg.teacher is not None:
        validate(cfg.teacher)
        _check(cfg.teacher.dataset == cfg.dataset, "teacher.dataset", cfg.teacher.dataset,
               f"must match the run's dataset '{cfg.dataset}'")
    _check(world_size >= 1 and cfg.batch_size % world_size == 0, "batch_size", cfg.batch_size,
           f"must be divisible by the world size {world_size}")
    if num_train is not None:
        _check(cfg.batch_size <= num_train, "batch_size", cfg.batch_size,
               f"exceeds the {num_train} training images")
        _check(cfg.bank_k + cfg.batch_size <= num_train, "bank_k", cfg.bank_k,
               f"bank_k + batch_size must be <= the {num_train} training images (one bank slot per image)")
    return cfg


def parse_overrides(pairs: list[str]) -> dict:
    """``["alpha=2", "adaptive_beta=false", "seeds=1,2"]`` -> typed values for ``RunConfig.replace``."""
    types = {f.name: f.type for f in dataclasses.fields(RunConfig)}
    out = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or key not in types or key == "teacher":
            raise ConfigError(f"override '{pair}': expected FIELD=VALUE with FIELD one of {sorted(set(types) - {'teacher'})}")
        typ = str(types[key])
        try:
            if "bool" in typ:
                if raw.lower() not in ("true", "false", "1", "0"):
                    raise ValueError(raw)
                out[key] = raw.lower() in ("true", "1")
            elif "tuple" in typ:
                out[key] = tuple(int(s) for s in raw.split(",") if s)
            elif typ in ("int",):
                out[key] = int(raw)
            elif typ in ("float",):
                out[key] = float(raw)
            else:
                out[key] = raw
        except ValueError:
            raise ConfigError(f"override '{pair}': '{raw}' is not a valid {typ} for field '{key}'") from None
    return out
