"""The YAML config of a MoCo-v3 run: sections ``data``, ``train`` and ``model``, typed and validated.

``load_config("configs/moco_v3_smoke.yaml", ["train.epochs=5"])`` reads a file with exactly these
sections and keys, applies ``section.key=value`` overrides typed by the field, and checks every
value; a missing, unknown or mistyped key or a bad value raises ``ConfigError`` naming the file and
the key. The resulting ``MocoConfig`` is stored in every checkpoint of the run.
"""

from __future__ import annotations

import contextlib
import dataclasses
import re
import typing
from dataclasses import dataclass
from pathlib import Path

import yaml

from .config import DATASETS, ConfigError

BACKBONES = ("vit_small", "resnet18", "resnet50")
MOCO_AUGMENTATIONS = ("moco", "satellite")
MOMENTUM_SCHEDULES = ("fixed", "cosine")

@dataclass(frozen=True)
class DataConfig:
    """Section ``data``.

    dataset: "digits", "cifar10", "cifar100" or "stl10" (see ``desupcon.data``).
    image_size: side of the square views fed to the backbone (96 for ViT-S/16 on STL-10).
    augment: view preset of ``desupcon.augment.PRESETS``: "moco" (asymmetric blur/solarise) or
        "satellite" (discrete rotations, both flips, pixel-space noise).
    """

    dataset: str
    image_size: int
    augment: str


@dataclass(frozen=True)
class TrainConfig:
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
    seed: seed of the initialisation, the data order and the augmentations.
    checkpoint_every: a checkpoint every this many epochs (and at the end).
    out_dir: run name: the checkpoint folder and the log file stem.
    """

    epochs: int
    batch_size: int
    base_lr: float
    weight_decay: float
    warmup_epochs: int
    accum_steps: int
    momentum: float
    momentum_schedule: str
    temperature: float
    queue_size: int
    amp: bool
    seed: int
    checkpoint_every: int
    out_dir: str


@dataclass(frozen=True)
class ModelConfig:
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

    backbone: str
    width: int
    proj_hidden: int
    proj_dim: int
    pred_hidden: int
    stop_grad_conv1: bool
    patch_size: int


@dataclass(frozen=True)
class MocoConfig:
    """A whole pretraining run, as read from YAML; stored in every checkpoint."""

    data: DataConfig
    train: TrainConfig
    model: ModelConfig

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


_SECTIONS = {"data": DataConfig, "train": TrainConfig, "model": ModelConfig}
_TYPE_NAMES = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}


def _coerce(value, typ, where: str):
    """``value`` (a YAML scalar or an override string) as ``typ``, or ``ConfigError`` naming ``where``."""
    if isinstance(value, str) and typ is not str:  # overrides, and YAML 1.1 floats such as 1e-4
        if typ is bool:
            value = {"true": True, "false": False}.get(value.lower(), value)
        else:
            with contextlib.suppress(ValueError):
                value = typ(value)
    if typ is float and type(value) is int:
        value = float(value)
    if type(value) is not typ:
        raise ConfigError(f"{where} must be {_TYPE_NAMES[typ]}, got {value!r}")
    return value


def _require_exactly(raw: dict, expected: list[str], source: str, what: str, prefix: str = "") -> None:
    """Every ``expected`` key present in ``raw`` and no other; errors name the file and the key."""
    unknown = sorted(set(raw) - set(expected))
    if unknown:
        raise ConfigError(f"{source}: unknown {what} '{prefix}{unknown[0]}'; valid {what}s: {expected}")
    missing = [key for key in expected if key not in raw]
    if missing:
        raise ConfigError(f"{source}: missing {what} '{prefix}{missing[0]}'")


def _section(cls, raw, name: str, source: str):
    """Build section ``name`` from its YAML mapping: every key present, none unknown, typed."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: section '{name}' must be a mapping of keys, got {raw!r}")
    types = typing.get_type_hints(cls)
    _require_exactly(raw, list(types), source, "key", prefix=f"{name}.")
    return cls(**{key: _coerce(raw[key], typ, f"{source}: '{name}.{key}'") for key, typ in types.items()})


def _apply_override(cfg: MocoConfig, override: str) -> MocoConfig:
    """Apply one ``section.key=value`` override, typed by the dataclass field."""
    path, sep, value = override.partition("=")
    section, _, key = path.partition(".")
    valid = [f"{s}.{k}" for s, cls in _SECTIONS.items() for k in typing.get_type_hints(cls)]
    if not sep or path not in valid:
        raise ConfigError(f"override '{override}': expected SECTION.KEY=VALUE with SECTION.KEY one of {valid}")
    old = getattr(cfg, section)
    typed = _coerce(value, typing.get_type_hints(type(old))[key], f"override '{override}': '{path}'")
    return dataclasses.replace(cfg, **{section: dataclasses.replace(old, **{key: typed})})


def _validate(cfg: MocoConfig, source: str) -> MocoConfig:
    d, t, m = cfg.data, cfg.train, cfg.model
    rules = (
        ("data.dataset", d.dataset in DATASETS, f"must be one of {list(DATASETS)}"),
        ("data.image_size", d.image_size >= 8, "must be >= 8"),
        ("data.augment", d.augment in MOCO_AUGMENTATIONS, f"must be one of {list(MOCO_AUGMENTATIONS)}"),
        ("train.epochs", t.epochs >= 1, "must be >= 1"),
        ("train.batch_size", t.batch_size >= 2, "must be >= 2 (the loss contrasts images within a batch)"),
        ("train.base_lr", t.base_lr > 0, "must be > 0 (moco-v3 ViT: 1.5e-4)"),
        ("train.weight_decay", t.weight_decay >= 0, "must be >= 0"),
        ("train.warmup_epochs", 0 <= t.warmup_epochs < t.epochs, "must be in [0, train.epochs)"),
        ("train.accum_steps", t.accum_steps >= 1, "must be >= 1 (1 = no gradient accumulation)"),
        ("train.momentum", 0 <= t.momentum < 1, "must be in [0, 1) (moco-v3: 0.99)"),
        ("train.momentum_schedule", t.momentum_schedule in MOMENTUM_SCHEDULES,
         f"must be one of {list(MOMENTUM_SCHEDULES)}"),
        ("train.temperature", t.temperature > 0, "must be > 0 (moco-v3: 0.2)"),
        ("train.queue_size", t.queue_size >= 0, "must be >= 0 (0 = no queue)"),
        ("train.checkpoint_every", t.checkpoint_every >= 1, "must be >= 1"),
        ("train.out_dir", re.fullmatch(r"[\w.-]+", t.out_dir) is not None,
         "must be a plain folder name (letters, digits, '_', '-', '.')"),
        ("model.backbone", m.backbone in BACKBONES, f"must be one of {list(BACKBONES)}"),
        ("model.width", m.width >= 4, "must be >= 4"),
        ("model.proj_hidden", m.proj_hidden >= 1, "must be >= 1"),
        ("model.proj_dim", m.proj_dim >= 2, "must be >= 2"),
        ("model.pred_hidden", m.pred_hidden >= 1, "must be >= 1"),
        ("model.patch_size", m.backbone != "vit_small" or d.image_size % m.patch_size == 0,
         f"must divide data.image_size = {d.image_size}"),
    )
    for key, ok, requirement in rules:
        if not ok:
            section, name = key.split(".")
            raise ConfigError(f"{source}: '{key}' = {getattr(getattr(cfg, section), name)!r} {requirement}")
    return cfg


def load_config(path, overrides=()) -> MocoConfig:
    """Read a MoCo-v3 YAML config with exactly the sections ``data``, ``train`` and ``model``.

    Args:
        path: the YAML file.
        overrides: ``"section.key=value"`` strings applied after reading, typed by the field
            (default: none).

    A missing, unknown or mistyped section or key, or a bad value, raises ``ConfigError`` naming
    the file and the key, e.g. ``configs/x.yaml: missing key 'train.epochs'``.
    """
    source = str(path)
    raw = yaml.safe_load(Path(path).read_text())
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected the sections {list(_SECTIONS)}, got {raw!r}")
    _require_exactly(raw, list(_SECTIONS), source, "section")
    cfg = MocoConfig(**{name: _section(cls, raw[name], name, source) for name, cls in _SECTIONS.items()})
    for override in overrides:
        cfg = _apply_override(cfg, override)
    return _validate(cfg, source)
