"""The config of a MoCo-v3 run: sections ``data``, ``train``, ``model`` and ``eval`` (``desupcon.config`` system).

``load_config("configs/moco_v3_smoke.yaml", ["train.epochs=5"])`` reads a file with exactly these
sections and keys, applies ``section.key=value`` overrides typed by the field, and checks every
value; a missing, unknown or mistyped key or a bad value raises ``ConfigError`` naming the file and
the key. The resulting ``MocoConfig`` is stored in every checkpoint of the run.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .config import Config, ConfigError, EvalConfig, _choices_of_registry, checked
from .models import BACKBONES

MOMENTUM_SCHEDULES = ("fixed", "cosine")


@dataclass(frozen=True)
class DataConfig(Config):
    """Section ``data``.

    dataset: a dataset of ``desupcon.data.DATASETS`` (its train split is pretrained on; train and
        test are the labelled splits of the evaluation).
    image_size: side of the square views fed to the backbone (96 for ViT-S/16 on STL-10).
    augment: view preset of ``desupcon.augment.PRESETS``: "moco" (asymmetric blur/solarise) or
        "satellite" (discrete rotations, both flips, pixel-space noise).
    """

    dataset: str = checked("digits", choices=_choices_of_registry("dataset"))
    image_size: int = checked(16, ">= 8", lambda v: v >= 8)
    augment: str = checked("moco", choices=_choices_of_registry("augment"))


@dataclass(frozen=True)
class TrainConfig(Config):
    """Section ``train``.

    epochs: training length.
    batch_size: global images per forward (split evenly over torchrun processes).
    base_lr: AdamW lr = base_lr x effective_batch / 256, effective_batch = batch_size x accum_steps
        (moco-v3 ViT: 1.5e-4).
    weight_decay: AdamW decoupled weight decay (moco-v3 ViT: 0.1).
    warmup_epochs: linear warmup before cosine decay, per optimiser step.
    accum_steps: forwards whose gradients are summed before each optimiser step.
    momentum: momentum m0 of the key encoder (0.99).
    momentum_schedule: "fixed" (m0) or "cosine" (m0 rising to 1 at the end).
    temperature: tau of the loss (0.2).
    queue_size: negative keys kept in a FIFO queue (0 = none, pure MoCo-v3); a multiple of batch_size.
    amp: mixed precision on CUDA (bf16, or fp16 with a GradScaler where bf16 is unsupported).
    seed: RNG seed of the initialisation, the data order and the augmentations.
    checkpoint_every: a snapshot every this many epochs (and at the end), kept for evaluation.
    out_dir: run name: the checkpoint and log file stem.
    """

    epochs: int = checked(20, ">= 1", lambda v: v >= 1)
    batch_size: int = checked(32, ">= 2 (the loss contrasts images within a batch)", lambda v: v >= 2)
    base_lr: float = checked(0.03, "in (0, 10] (moco-v3 ViT: 1.5e-4)", lambda v: 0 < v <= 10)
    weight_decay: float = checked(1e-4, "in [0, 1]", lambda v: 0 <= v <= 1)
    warmup_epochs: int = checked(1, ">= 0", lambda v: v >= 0)
    accum_steps: int = checked(1, ">= 1 (1 = no gradient accumulation)", lambda v: v >= 1)
    momentum: float = checked(0.99, "in [0, 1) (moco-v3: 0.99)", lambda v: 0 <= v < 1)
    momentum_schedule: str = checked("fixed", f"one of {list(MOMENTUM_SCHEDULES)}",
                                     lambda v: v in MOMENTUM_SCHEDULES)
    temperature: float = checked(0.2, "in (0, 10] (moco-v3: 0.2)", lambda v: 0 < v <= 10)
    queue_size: int = checked(0, ">= 0 (0 = no queue)", lambda v: v >= 0)
    amp: bool = True
    seed: int = 42
    checkpoint_every: int = checked(1, ">= 1", lambda v: v >= 1)
    out_dir: str = checked("moco_v3", "a plain folder name (letters, digits, '_', '-', '.')",
                           lambda v: re.fullmatch(r"[\w.-]+", v) is not None)


@dataclass(frozen=True)
class ModelConfig(Config):
    """Section ``model``.

    backbone: "vit_small" (ViT-S/16, 3-layer projector) or "resnet18"/"resnet50" (CIFAR ResNet,
        2-layer projector).
    width: first-stage channels of a ResNet (64 = standard; ignored by vit_small).
    proj_hidden: hidden width of the projector MLP (moco-v3: 4096).
    proj_dim: output dimension of projector and predictor (256).
    pred_hidden: hidden width of the predictor MLP (moco-v3: 4096).
    stop_grad_conv1: freeze the ViT patch projection at its random init (True; ignored by ResNets).
    patch_size: ViT patch side (16; ignored by ResNets).
    """

    backbone: str = checked("resnet18", f"one of {list(BACKBONES)}", lambda v: v in BACKBONES)
    width: int = checked(64, ">= 4", lambda v: v >= 4)
    proj_hidden: int = checked(4096, ">= 1", lambda v: v >= 1)
    proj_dim: int = checked(256, ">= 2", lambda v: v >= 2)
    pred_hidden: int = checked(4096, ">= 1", lambda v: v >= 1)
    stop_grad_conv1: bool = True
    patch_size: int = checked(16, ">= 1", lambda v: v >= 1)


@dataclass(frozen=True)
class MocoConfig(Config):
    """A whole pretraining run, as read from YAML; stored in every checkpoint."""

    data: DataConfig = DataConfig()
    train: TrainConfig = TrainConfig()
    model: ModelConfig = ModelConfig()
    eval: EvalConfig = EvalConfig()

    method = "moco_v3"
    role = "pretrain"
    teacher = None

    @property
    def name(self) -> str:
        return self.train.out_dir

    reference_name = name

    @property
    def dataset(self) -> str:
        return self.data.dataset

    @property
    def seeds(self) -> tuple[int, ...]:
        return (self.train.seed,)

    @property
    def seed(self) -> int:
        return self.train.seed

    @property
    def views_preset(self) -> str:
        return self.data.augment

    @property
    def uses_teacher(self) -> bool:
        return False

    @property
    def lr(self) -> float:
        """AdamW's peak lr: ``base_lr x batch_size x accum_steps / 256``."""
        return self.train.base_lr * self.train.batch_size * self.train.accum_steps / 256

    @property
    def recipe(self):
        from .engine import Recipe

        t = self.train
        return Recipe(epochs=t.epochs, batch_size=t.batch_size, accum_steps=t.accum_steps, seed=t.seed,
                      optimizer="adamw", lr=self.lr, weight_decay=t.weight_decay, sgd_momentum=0.9,
                      schedule="cosine", warmup_epochs=t.warmup_epochs, amp=t.amp,
                      checkpoint_every=t.checkpoint_every, snapshots=True)

    @property
    def evaluation(self) -> EvalConfig:
        return self.eval

    @property
    def image_size(self) -> int:
        return self.data.image_size

    @property
    def results_group(self) -> str:
        return f"moco_v3_{self.data.dataset}"

    def for_seed(self, seed: int) -> "MocoConfig":
        return self

    def run_name(self, seed: int) -> str:
        return self.name

    def _check_combinations(self, source: str | None = None, num_train: int | None = None,
                            world_size: int = 1) -> None:
        d, t, m = self.data, self.train, self.model
        prefix = f"{source}: " if source else ""
        fail = lambda key, value, requirement: ConfigError(f"{prefix}'{key}' = {value!r} {requirement}")
        if t.warmup_epochs >= t.epochs:
            raise fail("train.warmup_epochs", t.warmup_epochs, "must be in [0, train.epochs)")
        if m.backbone == "vit_small" and d.image_size % m.patch_size:
            raise fail("model.patch_size", m.patch_size, f"must divide data.image_size = {d.image_size}")
        if t.batch_size % world_size:
            multiple = -(-t.batch_size // world_size) * world_size
            raise ConfigError(f"'train.batch_size' = {t.batch_size} is not divisible by the world size "
                              f"{world_size}: choose a multiple of {world_size} (e.g. {multiple})")
        if num_train is not None and num_train // (t.batch_size * t.accum_steps) < 1:
            raise ConfigError(f"'train.batch_size' x 'train.accum_steps' = {t.batch_size * t.accum_steps} exceeds "
                              f"the {num_train} training images of '{d.dataset}': lower one of them")


def load_config(path, overrides=()) -> MocoConfig:
    """Read a MoCo-v3 YAML config with exactly the sections ``data``, ``train``, ``model`` and ``eval``.

    Args:
        path: the YAML file.
        overrides: ``"section.key=value"`` strings applied after reading, typed by the field
            (default: none).

    A missing, unknown or mistyped section or key, or a bad value, raises ``ConfigError`` naming
    the file and the key, e.g. ``configs/x.yaml: missing key 'train.epochs'``.
    """
    return MocoConfig.from_yaml(path, overrides)
