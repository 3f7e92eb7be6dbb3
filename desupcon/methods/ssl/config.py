"""The config of a self-supervised run (MoCo-v3, SimCLR, KD from a frozen teacher): ``SSLConfig``.

A YAML file names its method at the top (``method: moco_v3``), then the sections ``data``,
``train``, ``model`` and ``eval``. ``load_config("configs/moco_v3_smoke.yaml", ["train.epochs=5"])``
reads a file with exactly these keys, applies ``section.key=value`` overrides typed by the field,
and checks every value; a missing, unknown or mistyped key or a bad value raises ``ConfigError``
naming the file and the key. The method's task (``desupcon.engine.task.TASKS``) adds its own checks
(``Task.check_config``). The config is stored in every checkpoint of the run.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from desupcon.core.config import (ACCUM_STEPS, BATCH, EPOCHS, IMAGE_SIDE, SEED, Config, bounded, checked, read_yaml,
                                  shown)
from desupcon.core.errors import ConfigError
from desupcon.images.augment import PRESETS
from desupcon.images.datasets import DataSpec, DatasetName, dataset_names
from desupcon.images.sources import BUILTIN_SPLITS
from desupcon.engine.evaluate import EvalConfig
from desupcon.engine.recipe import Recipe
from desupcon.engine.task import TASKS, TaskConfig, task_for
from desupcon.nn.models import BACKBONES, TIMM_NAME, is_backbone, is_vit

MOMENTUM_SCHEDULES = ("fixed", "cosine")
HEAD_LAYOUTS = ("official", "writeup")


@dataclass(frozen=True)
class DataConfig(Config):
    """Section ``data`` (README: Your own data).

    dataset: the dataset's name, which results are grouped under: with ``source: ""`` a built-in of
        ``desupcon.images.datasets.DATASETS`` or a folder of ``$DESUPCON_DATA`` (``desupcon.images.datasets.dataset_names``),
        else any plain name for your images.
    source: where pretraining reads its images (``desupcon.images.sources``): "" = the dataset named ``dataset``,
        else a built-in name, a folder of images (ImageFolder layout, or flat: unlabelled) or a Hugging
        Face dataset on disk (``save_to_disk`` or parquet), absolute or relative to ``$DESUPCON_DATA``.
    split: the split(s) of the source pretraining reads, '+' joins them (STL-10: train, unlabeled,
        train+unlabeled).
    eval_source: the labelled train and test splits of the k-NN and linear probe: "" = those of
        ``source``; else another source string.
    image_column, label_column: the columns of a Hugging Face source ("" label column = unlabelled).
    image_size: side of the square views fed to the backbone (96 for ViT-S/16 on STL-10), and the side
        your own images are stored at in the prepared cache (built-ins keep their own).
    augment: view preset of ``desupcon.images.augment.PRESETS``: "moco" (asymmetric blur/solarise) or
        "satellite" (discrete rotations, both flips, pixel-space noise).
    """

    dataset: str = checked("digits", "a plain name (letters, digits, '_', '-', '.')",
                           lambda v: re.fullmatch(r"[\w.-]+", v) is not None)
    source: str = ""
    split: str = checked("train", "split names joined by '+' (e.g. train+unlabeled)",
                         lambda v: re.fullmatch(r"[\w-]+(\+[\w-]+)*", v) is not None)
    eval_source: str = ""
    image_column: str = checked("image", "a column name", lambda v: v != "")
    label_column: str = "label"
    image_size: int = bounded(16, IMAGE_SIDE)
    augment: str = checked("moco", choices=lambda: list(PRESETS))


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
    momentum: momentum m0 of the key encoder (0.99; MoCo-v3 only).
    momentum_schedule: "fixed" (m0) or "cosine" (m0 rising to 1 at the end; MoCo-v3 only).
    temperature: tau of the loss (0.2).
    queue_size: negative keys kept in a FIFO queue (0 = none, pure MoCo-v3); a multiple of batch_size;
        MoCo-v3 only.
    amp: mixed precision on CUDA (bf16, or fp16 with a GradScaler where bf16 is unsupported).
    seed: RNG seed of the initialisation, the data order and the augmentations.
    checkpoint_every: a snapshot every this many epochs (and at the end), kept for evaluation.
    out_dir: run name: the checkpoint and log file stem.
    """

    epochs: int = bounded(20, EPOCHS)
    batch_size: int = bounded(32, BATCH)
    base_lr: float = checked(0.03, "in (0, 10] (moco-v3 ViT: 1.5e-4)", lambda v: 0 < v <= 10)
    weight_decay: float = checked(1e-4, "in [0, 1]", lambda v: 0 <= v <= 1)
    warmup_epochs: int = checked(1, ">= 0", lambda v: v >= 0)
    accum_steps: int = bounded(1, ACCUM_STEPS)
    momentum: float = checked(0.99, "in [0, 1) (moco-v3: 0.99)", lambda v: 0 <= v < 1)
    momentum_schedule: str = checked("fixed", f"one of {list(MOMENTUM_SCHEDULES)}",
                                     lambda v: v in MOMENTUM_SCHEDULES)
    temperature: float = checked(0.2, "in (0, 10] (moco-v3: 0.2)", lambda v: 0 < v <= 10)
    queue_size: int = checked(0, ">= 0 (0 = no queue)", lambda v: v >= 0)
    amp: bool = True
    seed: int = bounded(42, SEED)
    checkpoint_every: int = checked(1, ">= 1", lambda v: v >= 1)
    out_dir: str = checked("moco_v3", "a plain folder name (letters, digits, '_', '-', '.')",
                           lambda v: re.fullmatch(r"[\w.-]+", v) is not None)


@dataclass(frozen=True)
class ModelConfig(Config):
    """Section ``model``.

    backbone: "vit_small" (torchvision ViT-S/16), "resnet18"/"resnet50" (CIFAR ResNet), or a timm
        model name such as the write-up's ``student_name`` "vit_small_patch16_224" (timm's ViT-S/16,
        built for ``data.image_size``) or "resnet50.tv_in1k" (timm's ImageNet ResNet-50, random init).
    width: first-stage channels of a CIFAR ResNet (64 = standard; ignored by the others).
    heads: layout of projector and predictor (``desupcon.methods.ssl.moco_v3.head_layout``): "official"
        (facebookresearch/moco-v3 ``moco/builder.py``: ViT 3-layer projector, ResNet 2-layer; the last
        BatchNorm without affine; the ResNet predictor has no last BatchNorm) or "writeup" (write-up 001_*:
        a 3-layer projector with BatchNorm after all three layers and a 2-layer predictor with
        BatchNorm after both, affine, for every backbone). Ignored by kd.
    proj_hidden: hidden width of the projector MLP (moco-v3: 4096; the write-up: the embed dim).
    proj_dim: output dimension of projector and predictor (256; kd projects to the teacher's dim).
    pred_hidden: hidden width of the predictor MLP (moco-v3: 4096).
    stop_grad_conv1: freeze a ViT's patch projection at its random init (True; ignored by ResNets).
    freeze_conv1: freeze a ResNet's stem convolution ``conv1`` at its random init (write-up 001_*'s
        ResNet counterpart of stop_grad_conv1; False; ResNets only: a ViT uses stop_grad_conv1).
    patch_size: patch side of "vit_small" (16; a timm ViT's name carries its own; ignored by ResNets).
    teacher_name: kd only: the frozen teacher, a timm model, e.g. "vit_small_patch14_dinov2"
        (DINOv2 ViT-S/14); "" for moco_v3.
    teacher_weights: kd only: the teacher's weights file (timm's or the original release's format;
        a relative path is read from the working directory); "" = timm's pretrained weights from the
        Hugging Face hub (needs network).
    teacher_img_size: kd only: side the views are resized to (bicubic) before the teacher; a
        multiple of its patch size (224 = 16 x 14 for DINOv2).
    """

    backbone: str = checked("resnet18", f"one of {list(BACKBONES)} or {TIMM_NAME}", is_backbone)
    width: int = checked(64, ">= 4", lambda v: v >= 4)
    heads: str = checked("official", f"one of {list(HEAD_LAYOUTS)}", lambda v: v in HEAD_LAYOUTS)
    proj_hidden: int = checked(4096, ">= 1", lambda v: v >= 1)
    proj_dim: int = checked(256, ">= 2", lambda v: v >= 2)
    pred_hidden: int = checked(4096, ">= 1", lambda v: v >= 1)
    stop_grad_conv1: bool = True
    freeze_conv1: bool = False
    patch_size: int = checked(16, ">= 1", lambda v: v >= 1)
    teacher_name: str = ""
    teacher_weights: str = ""
    teacher_img_size: int = bounded(224, IMAGE_SIDE)


def ssl_methods() -> list[str]:
    """The registered methods whose runs an ``SSLConfig`` describes."""
    return sorted(name for name, task in TASKS.items() if task.config_class is SSLConfig)


@dataclass(frozen=True)
class SSLConfig(TaskConfig):
    """A whole self-supervised run, as read from YAML; stored in every checkpoint.

    method: the registered task that trains it (``ssl_methods()``: "moco_v3", "simclr", "vit_kd").
    data, train, model, eval: the sections (``DataConfig``, ``TrainConfig``, ``ModelConfig``, ``EvalConfig``).
    """

    role = "pretrain"  # what the run is in a study (a distillation run is a teacher, projection or student)
    method: str = checked("moco_v3", choices=ssl_methods)
    data: DataConfig = DataConfig()
    train: TrainConfig = TrainConfig()
    model: ModelConfig = ModelConfig()
    eval: EvalConfig = EvalConfig()

    @property
    def task(self) -> str:
        return self.method

    @property
    def name(self) -> str:
        return self.train.out_dir

    @property
    def dataset(self) -> str:
        """``data.dataset``, carrying the ``data`` section's source, splits, columns and side as the
        ``desupcon.images.datasets.DataSpec`` that ``Data.load`` reads."""
        d = self.data
        return DatasetName(DataSpec(d.dataset, d.source, d.split, d.eval_source, d.image_column, d.label_column,
                                    d.image_size))

    @property
    def label(self) -> str:
        return f"{task_for(self).title} {self.model.backbone}"

    @property
    def caption(self) -> str:
        return f"{self.data.dataset} test split ({self.train.out_dir}, seed {self.seed})"

    def with_batch(self, batch: int) -> "SSLConfig":
        """At ``batch`` images per forward, a queue rounded up to a multiple of it."""
        queue = -(-self.train.queue_size // batch) * batch
        return self.override([f"train.batch_size={batch}", f"train.queue_size={queue}"])

    @property
    def lr(self) -> float:
        """AdamW's peak lr: ``base_lr x batch_size x accum_steps / 256``."""
        return self.train.base_lr * self.train.batch_size * self.train.accum_steps / 256

    @property
    def recipe(self):

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
        return f"{self.method}_{self.data.dataset}"

    @classmethod
    def from_yaml(cls, path, overrides=()):
        raw = read_yaml(path)
        if isinstance(raw.get("train"), dict) and "training_mode" in raw["train"]:
            mode = raw["train"]["training_mode"]
            raise ConfigError(f"{path}: 'train.training_mode' is now the top-level key 'method': replace it by "
                              f"'method: {'vit_kd' if mode == 'kd' else shown(mode)}' at the top of the file")
        return super().from_yaml(path, overrides)

    def _check_combinations(self, source: str | None = None, num_train: int | None = None,
                            world_size: int = 1) -> None:
        d, t, m = self.data, self.train, self.model
        prefix = f"{source}: " if source else ""
        fail = lambda key, value, requirement: ConfigError(f"{prefix}'{key}' = {shown(value)} {requirement}")
        if t.warmup_epochs >= t.epochs:
            raise fail("train.warmup_epochs", t.warmup_epochs,
                       f"must be below train.epochs = {t.epochs} (the warmup is part of the run): set it too, e.g. "
                       f"--set train.epochs={t.epochs} train.warmup_epochs={max(0, t.epochs // 10)}")

        if not d.source and d.dataset not in dataset_names():
            raise fail("data.dataset", d.dataset, f"must be one of {dataset_names()} (built-in, or a folder of "
                                                  f"$DESUPCON_DATA), or set data.source to where the images are")
        builtin = d.source or d.dataset
        if builtin in BUILTIN_SPLITS and not set(d.split.split("+")) <= set(BUILTIN_SPLITS[builtin]):
            raise fail("data.split", d.split, f"must join splits of '{builtin}': {list(BUILTIN_SPLITS[builtin])}")
        if m.backbone == "vit_small" and d.image_size % m.patch_size:
            raise fail("model.patch_size", m.patch_size, f"must divide data.image_size = {d.image_size}")
        if m.freeze_conv1 and is_vit(m.backbone):
            raise fail("model.freeze_conv1", True, f"applies to ResNets only (the ViT '{m.backbone}' freezes "
                                                   f"its patch projection by model.stop_grad_conv1): set it false")
        task_for(self).check_config(self, fail)
        if t.batch_size % world_size:
            multiple = -(-t.batch_size // world_size) * world_size
            raise ConfigError(f"'train.batch_size' = {t.batch_size} is not divisible by the world size "
                              f"{world_size}: choose a multiple of {world_size} (e.g. {multiple})")
        if num_train is not None and num_train // (t.batch_size * t.accum_steps) < 1:
            raise ConfigError(f"'train.batch_size' x 'train.accum_steps' = {t.batch_size * t.accum_steps} exceeds "
                              f"the {num_train} training images of '{d.dataset}': lower one of them")


def load_config(path, overrides=()) -> SSLConfig:
    """Read a self-supervised YAML config: ``method`` and exactly the sections ``data``, ``train``, ``model``, ``eval``.

    Args:
        path: the YAML file.
        overrides: ``"section.key=value"`` strings applied after reading, typed by the field
            (default: none).

    A missing, unknown or mistyped section or key, or a bad value, raises ``ConfigError`` naming
    the file and the key, e.g. ``configs/x.yaml: missing key 'train.epochs'``.
    """
    return SSLConfig.from_yaml(path, overrides)


MocoConfig = SSLConfig  # the name earlier releases and the README's MoCo-v3 examples use
