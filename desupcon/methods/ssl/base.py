"""What every self-supervised method shares: two augmented views of each image, a base encoder, evaluation.

A method subclasses ``TwoViewTask``, defines ``build_model(cfg)`` (a module with a ``base_encoder``
= ``backbone`` + ``projector`` whose ``forward(x1, x2)`` returns the loss) and registers itself
(``desupcon.engine.task.register_task``). Checkpoints, resume, snapshots, ``load_encoder`` and
``evaluate_checkpoints`` then work for it unchanged. Its config is an ``SSLConfig`` whose ``method``
names it.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from desupcon.core import distributed as dist
from desupcon.core.artefacts import atomic_write_json, load_checkpoint
from desupcon.core.errors import ConfigError, StaleRunError
from desupcon.core.paths import eval_path, saved_snapshots, snapshot_path
from desupcon.images.augment import PRESETS, augment
from desupcon.images.datasets import Data
from desupcon.engine.evaluate import evaluate_encoder
from desupcon.engine.memory import announce_line
from desupcon.engine.runs import data_inputs, describe_diff, file_fingerprint
from desupcon.engine.task import Task, task_for
from desupcon.engine.trainer import default_device
from desupcon.methods.ssl.config import ModelConfig, SSLConfig, load_config
from desupcon.nn.models import freeze_conv1, freeze_patch_projection, is_vit, random_backbone


def build_backbone(cfg: ModelConfig, image_size: int, freeze: bool = True, **arch) -> tuple[nn.Module, int]:
    """Backbone ``(module, feature_dim)`` of the ``model`` section, pooled features ``(B, feature_dim)``.

    Args:
        cfg: the ``model`` section (backbone, width, patch_size, stop_grad_conv1, freeze_conv1).
        image_size: input side (a multiple of the patch size for ViT).
        freeze: freeze a ViT's patch projection when ``stop_grad_conv1`` says so and a ResNet's
            ``conv1`` when ``freeze_conv1`` does (default: True).
        arch: architecture overrides (``desupcon.nn.models.random_backbone``), e.g. a one-layer ViT in tests
            (default: none).
    """
    backbone, dim = random_backbone(cfg.backbone, image_size, cfg.width, cfg.patch_size, **arch)
    if freeze and cfg.stop_grad_conv1 and is_vit(cfg.backbone):
        freeze_patch_projection(backbone)
    if freeze and cfg.freeze_conv1:
        freeze_conv1(backbone)
    return backbone, dim


def per_rank_batch(batch_size: int, world_size: int) -> int:
    """Images per process; ``ConfigError`` unless ``batch_size`` divides evenly over ``world_size``."""
    if batch_size % world_size:
        multiple = -(-batch_size // world_size) * world_size
        raise ConfigError(f"'train.batch_size' = {batch_size} is not divisible by the world size {world_size}: "
                          f"choose a multiple of {world_size} (e.g. {multiple})")
    return batch_size // world_size


class Encoder(nn.Module):
    """``x -> (backbone features, L2-normalised projector output)``: what the evaluation reads."""

    def __init__(self, base_encoder: nn.Module):
        super().__init__()
        self.base_encoder = base_encoder

    def forward(self, x):
        features = self.base_encoder.backbone(x)  # (B, F)
        return features, F.normalize(self.base_encoder.projector(features), dim=1)


class TwoViewTask(Task):
    """A self-supervised method for ``desupcon.engine.trainer.Trainer``: two views per image, one model.

    Subclasses define ``build_model`` and ``title``; ``loss`` calls the model on both views. Under
    DDP the model is wrapped in ``DistributedDataParallel`` and, on GPUs, its BatchNorm layers
    become ``SyncBatchNorm``, as in facebookresearch/moco-v3.
    """

    config_class = SSLConfig

    def __init__(self, trainer, teacher=None):
        super().__init__(trainer, teacher)
        cfg = self.cfg
        per_rank_batch(cfg.train.batch_size, dist.world_size())
        stats = (self.data.train.mean, self.data.train.std)
        pretrained = self.device.type != "meta"  # a shapes-only (meta) build keeps a frozen teacher random
        self.model = self.build_model(cfg, pretrained=pretrained, input_stats=stats).to(self.device)
        if dist.is_distributed() and self.device.type == "cuda":  # PyTorch's SyncBatchNorm runs on GPUs only
            self.model = nn.SyncBatchNorm.convert_sync_batchnorm(self.model)
        self.forward = dist.wrap(self.model)
        self.ddp_modules = [self.forward] if dist.is_distributed() else []

    @classmethod
    def build_model(cls, cfg: SSLConfig, pretrained: bool = False, input_stats: tuple | None = None) -> nn.Module:
        """The method's model, randomly initialised (a frozen teacher's weights loaded if ``pretrained``)."""
        raise NotImplementedError

    def extra_state(self) -> dict:
        return {"encoder_q": self.model.base_encoder.backbone.state_dict(),
                "proj_q": self.model.base_encoder.projector.state_dict()}

    def announce(self):
        if dist.is_main():
            cfg, t = self.cfg, self.cfg.train
            print(f"{self.title} '{t.out_dir}': {cfg.model.backbone} on {cfg.data.dataset} at {cfg.data.image_size}px, "
                  f"lr = {t.base_lr} x {t.batch_size * t.accum_steps}/256 = {cfg.lr:.3g}, "
                  f"{self.trainer.steps_per_epoch} steps/epoch, amp {self.trainer.autocast_dtype or 'off'}")
            print(announce_line(cfg))

    def encoder(self) -> nn.Module:
        return Encoder(self.model.base_encoder)

    def views(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The two augmented views (B, C, S, S) of this rank's images ``idx``."""
        images, (view1, view2) = self.data.train.gather(idx), PRESETS[self.cfg.data.augment]
        size, mean, std, gen = self.cfg.data.image_size, self.data.train.mean, self.data.train.std, self.trainer.aug_gen
        return augment(images, view1, mean, std, gen, size), augment(images, view2, mean, std, gen, size)

    def loss(self, idx: torch.Tensor) -> tuple[torch.Tensor, None]:
        return self.forward(*self.views(idx)), None

    @classmethod
    def trained_encoder(cls, cfg: SSLConfig, device="cpu") -> nn.Module:
        return load_encoder(cfg, cfg.train.epochs, device)


def build_model(cfg: SSLConfig, pretrained_teacher: bool = False, input_stats: tuple | None = None) -> nn.Module:
    """The model of ``cfg``'s method (``TwoViewTask.build_model``), randomly initialised.

    Args:
        cfg: the run's config.
        pretrained_teacher: a method with a frozen teacher (``vit_kd``) loads its weights (default: False,
            a random teacher: evaluation and memory estimates need the student only).
        input_stats: the per-channel ``(mean, std)`` the views are normalised with, for a teacher that
            renormalises them (default: None, the teacher's own normalisation).
    """
    return task_for(cfg).build_model(cfg, pretrained_teacher, input_stats)


def load_encoder(cfg: SSLConfig, epoch: int, device="cpu") -> nn.Module:
    """The base encoder (``x -> (features, projections)``) saved at ``epoch``, in eval mode; 0 = its random init.

    The random init is the one ``pretrain`` starts from (same seed); the global RNG is left as it was.
    A missing snapshot raises ``FileNotFoundError`` naming it and the epochs available.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.train.seed)
        model = task_for(cfg).build_model(cfg)
    if epoch:
        path = snapshot_path(cfg.name, epoch)
        if not path.exists():
            raise FileNotFoundError(f"no checkpoint {path}; available epochs: {saved_snapshots(cfg.name)} "
                                    f"(0 = random init); pretrain first or choose among them")
        ckpt = load_checkpoint(path)
        diff = cfg.diff(ckpt["config"])
        if diff:
            raise StaleRunError(f"checkpoint {path} was trained with a different config ({describe_diff(diff)}); "
                                f"pretrain again with --force-retrain, or choose another train.out_dir")
        model.load_state_dict(ckpt["model"])
    return Encoder(model.base_encoder).to(device).eval()


def evaluate_checkpoints(config_path, epochs, overrides=(), device=None) -> list[dict]:
    """The evaluation schema (``desupcon.engine.evaluate.evaluate_encoder``) of the encoder saved at each of ``epochs``.

    Args:
        config_path: the YAML config the checkpoints were trained with.
        epochs: checkpoint epochs to evaluate; 0 = the random initialisation.
        overrides: ``"section.key=value"`` overrides, as given to ``pretrain`` (default: none).
        device: evaluation device (default: CUDA if available, else the CPU).

    Writes ``json_results/<out_dir>_checkpoint_eval.json``, with the fingerprints of the data and of every
    snapshot file it read (``desupcon.engine.runs``); returns one dict per epoch (``"epoch"`` and
    the schema's keys: ``knn_top1``, ``probe_top1``, ``probe_top5``, ``alignment``, ...). Plot them
    with ``desupcon.analysis.plots.plot_accuracy_vs_epoch``.
    """

    cfg = load_config(config_path, overrides)
    device = torch.device(device) if device else default_device()
    loaded = Data.load(cfg.dataset, device)
    data, fingerprints = loaded.evaluation, loaded.fingerprints()
    points = []
    for epoch in sorted(set(epochs)):
        results = evaluate_encoder(load_encoder(cfg, epoch, device), data, cfg.evaluation, cfg.seed,
                                   image_size=cfg.data.image_size)
        points.append({"epoch": epoch, **results})
        print(f"epoch {epoch:4d}: k-NN top-1 {results['knn_top1']:.2f}% | linear top-1 {results['probe_top1']:.2f}%, "
              f"top-5 {results['probe_top5']:.2f}%")
    files = {e: snapshot_path(cfg.name, e) for e in sorted(set(epochs)) if e}
    snapshots = {"0": {"what": f"the random initialisation (seed {cfg.seed})"}} if 0 in epochs else {}
    snapshots |= {str(e): {"what": f"file {path}", "fingerprint": file_fingerprint(path)} for e, path in files.items()}
    atomic_write_json({"name": cfg.name, "config": cfg.to_dict(), "inputs": data_inputs(fingerprints),
                       "snapshots": snapshots, "points": points}, eval_path(cfg.name))
    return points
