"""MoCo-v3 self-supervised pretraining (SPEC §8): the model, its task for the trainer core, checkpoint evaluation.

Chen, Xie, He, "An Empirical Study of Training Self-Supervised Vision Transformers", ICCV 2021,
https://arxiv.org/abs/2104.02057; the model follows facebookresearch/moco-v3 ``moco/builder.py``.
A base encoder (backbone + projector) and a predictor learn from the symmetric loss against keys
of a momentum encoder (an exponential moving average of the base encoder), optionally with a FIFO
queue of past keys as extra negatives for small batches. ViT-Small/16 keeps its patch projection
frozen at its random initialisation, the paper's fix for training instability.
The config of a run lives in ``desupcon.moco_config``; training is ``desupcon.train.train(cfg)``,
the same engine as every other run.

    python -m desupcon pretrain configs/moco_v3_smoke.yaml --set train.epochs=5
    python -m desupcon evaluate-checkpoints configs/moco_v3_smoke.yaml --epochs 0 1 5

Artefacts (``desupcon.store``): ``pth_models/<out_dir>.pth`` (latest), snapshots
``pth_models/<out_dir>/epoch_<E>.pth``, ``json_results/training_logs/<out_dir>.json`` and
``json_results/<out_dir>_checkpoint_eval.json``.
"""

from __future__ import annotations

import copy
import math
from collections import OrderedDict

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import distributed as dist
from .augment import PRESETS, augment
from .banks import FIFOQueue
from .config import ConfigError
from .data import Data
from .evaluate import evaluate_encoder
from .losses import moco_v3_loss
from .models import freeze_patch_projection, random_backbone
from .moco_config import MocoConfig, ModelConfig, load_config
from .store import StaleRunError, atomic_write_json, describe_diff, eval_path, load_checkpoint, saved_snapshots, \
    snapshot_path


def build_backbone(cfg: ModelConfig, image_size: int, freeze: bool = True, **vit_arch) -> tuple[nn.Module, int]:
    """Backbone ``(module, feature_dim)`` of the ``model`` section, pooled features ``(B, feature_dim)``.

    Args:
        cfg: the ``model`` section (backbone, width, patch_size, stop_grad_conv1).
        image_size: input side (a multiple of the patch size for ViT).
        freeze: freeze the ViT patch projection when ``stop_grad_conv1`` says so (default: True).
        vit_arch: overrides of ``models.VIT_SMALL``, e.g. a one-layer ViT in tests (default: ViT-Small).
    """
    backbone, dim = random_backbone(cfg.backbone, image_size, cfg.width, cfg.patch_size, **vit_arch)
    if freeze and cfg.backbone == "vit_small" and cfg.stop_grad_conv1:
        freeze_patch_projection(backbone)
    return backbone, dim


def _build_mlp(num_layers: int, input_dim: int, mlp_dim: int, output_dim: int) -> nn.Sequential:
    """Linear(no bias)-BN-ReLU repeated, the last Linear followed by BatchNorm1d(affine=False)."""
    layers = []
    for i in range(num_layers):
        dim1 = input_dim if i == 0 else mlp_dim
        dim2 = output_dim if i == num_layers - 1 else mlp_dim
        layers.append(nn.Linear(dim1, dim2, bias=False))
        if i < num_layers - 1:
            layers += [nn.BatchNorm1d(dim2), nn.ReLU(inplace=True)]
        else:
            layers.append(nn.BatchNorm1d(dim2, affine=False))
    return nn.Sequential(*layers)


class MoCoV3(nn.Module):
    """MoCo-v3: base encoder (backbone + projector), momentum encoder and predictor.

    https://arxiv.org/abs/2104.02057. ``forward(x1, x2, m)`` returns the symmetric loss
    ``moco_v3_loss(q1, k2) + moco_v3_loss(q2, k1)``; under DDP the keys of all ranks are gathered.
    """

    def __init__(self, backbone: nn.Module, feature_dim: int, proj_layers: int = 3, proj_hidden: int = 4096,
                 proj_dim: int = 256, pred_hidden: int = 4096, temperature: float = 0.2, queue_size: int = 0,
                 batch_size: int | None = None):
        """
        backbone: network mapping images to features (B, feature_dim).
        feature_dim: dimension of the backbone features.
        proj_layers: projector depth: 3 for ViT, 2 for ResNet (default: 3).
        proj_hidden: hidden dimension of the projector (default: 4096).
        proj_dim: output dimension of projector and predictor (default: 256).
        pred_hidden: hidden dimension of the 2-layer predictor (default: 4096).
        temperature: softmax temperature tau (default: 0.2).
        queue_size: keys of past batches used as extra negatives; 0 = none (default: 0).
        batch_size: keys enqueued per forward (the global batch), checked against queue_size
            now (default: None, checked at the first enqueue).
        """
        super().__init__()
        self.temperature = temperature
        self.base_encoder = nn.Sequential(OrderedDict(
            backbone=backbone, projector=_build_mlp(proj_layers, feature_dim, proj_hidden, proj_dim)))
        self.momentum_encoder = copy.deepcopy(self.base_encoder).requires_grad_(False)  # never gets gradient
        self.predictor = _build_mlp(2, proj_dim, pred_hidden, proj_dim)
        self.queue = FIFOQueue(queue_size, proj_dim, batch_size=batch_size) if queue_size else None

    @torch.no_grad()
    def _update_momentum_encoder(self, m: float):
        """theta_k <- m * theta_k + (1 - m) * theta_q for every parameter; buffers are copied."""
        params_k = list(self.momentum_encoder.parameters())
        torch._foreach_mul_(params_k, m)
        torch._foreach_add_(params_k, list(self.base_encoder.parameters()), alpha=1 - m)
        torch._foreach_copy_(list(self.momentum_encoder.buffers()), list(self.base_encoder.buffers()))

    def forward(self, x1: torch.Tensor, x2: torch.Tensor, m: float | None = None) -> torch.Tensor:
        """
        x1, x2: the two views of the local batch (N, C, H, W).
        m: momentum of the key-encoder update made before computing the keys; None skips it
            (the later forwards of an accumulated step) (default: None).
        Returns the symmetric loss; the queue (if any) then receives the view-2 keys k2.
        """
        q1 = F.normalize(self.predictor(self.base_encoder(x1)), dim=1)  # (N, D)
        q2 = F.normalize(self.predictor(self.base_encoder(x2)), dim=1)  # (N, D)
        with torch.no_grad():
            if m is not None:
                self._update_momentum_encoder(m)
            k1 = dist.gather(F.normalize(self.momentum_encoder(x1), dim=1))  # (N * world, D)
            k2 = dist.gather(F.normalize(self.momentum_encoder(x2), dim=1))  # (N * world, D)
        queue = None if self.queue is None else self.queue.keys  # (K, D)
        rank = dist.rank()
        loss = (moco_v3_loss(q1, k2, self.temperature, rank, queue)
                + moco_v3_loss(q2, k1, self.temperature, rank, queue))
        if self.queue is not None:
            self.queue.enqueue(k2)
        return loss


def build_model(cfg: MocoConfig, freeze: bool = True) -> MoCoV3:
    """The randomly initialised ``MoCoV3`` of a config (ViT: 3-layer projector, ResNet: 2)."""
    backbone, feature_dim = build_backbone(cfg.model, cfg.data.image_size, freeze)
    return MoCoV3(backbone, feature_dim, proj_layers=3 if cfg.model.backbone == "vit_small" else 2,
                  proj_hidden=cfg.model.proj_hidden, proj_dim=cfg.model.proj_dim, pred_hidden=cfg.model.pred_hidden,
                  temperature=cfg.train.temperature, queue_size=cfg.train.queue_size, batch_size=cfg.train.batch_size)


def per_rank_batch(batch_size: int, world_size: int) -> int:
    """Images per process; ``ConfigError`` unless ``batch_size`` divides evenly over ``world_size``."""
    if batch_size % world_size:
        multiple = -(-batch_size // world_size) * world_size
        raise ConfigError(f"'train.batch_size' = {batch_size} is not divisible by the world size {world_size}: "
                          f"choose a multiple of {world_size} (e.g. {multiple})")
    return batch_size // world_size


def momentum_at(step: int, total_steps: int, m0: float, schedule: str) -> float:
    """Key-encoder momentum at optimiser step ``step``: ``m0`` ("fixed") or
    ``1 - (1 - m0) * (cos(pi * step / total_steps) + 1) / 2`` ("cosine", rising from m0 to 1)."""
    if schedule == "fixed":
        return m0
    return 1 - (1 - m0) * (math.cos(math.pi * step / total_steps) + 1) / 2


def estimate_vram_gb(cfg: MocoConfig) -> float:
    """Rough peak GPU memory of one process in GB: an estimate, not a measurement.

    fp32 weights, gradients and the two AdamW moments of the base encoder and predictor
    (16 bytes per parameter; the frozen ViT patch projection is counted too), the momentum encoder
    (4 bytes per parameter), the buffers (queue, BatchNorm statistics), and the activations kept for
    backward: the outputs of every leaf module of the base encoder for one image (2 bytes under amp,
    else 4) x 2 views x the per-process batch. Attention internals and allocator overhead are not
    counted. The model is built on the meta device: no memory is allocated.
    """
    size = cfg.data.image_size
    with torch.device("meta"):
        model = build_model(cfg, freeze=False)
    count = lambda *modules: sum(p.numel() for module in modules for p in module.parameters())
    buffer_bytes = sum(b.numel() * b.element_size() for b in model.buffers())
    elements = []
    leaves = [module for module in model.base_encoder.modules() if not list(module.children())]
    hooks = [leaf.register_forward_hook(lambda _m, _x, out: elements.append(out.numel())) for leaf in leaves]
    model.base_encoder(torch.empty(2, 3, size, size, device="meta"))  # 2 images: BatchNorm needs a batch
    for hook in hooks:
        hook.remove()
    per_image = sum(elements) / 2 * (2 if cfg.train.amp else 4)
    batch = cfg.train.batch_size // dist.world_size()
    total = (16 * count(model.base_encoder, model.predictor) + 4 * count(model.momentum_encoder) + buffer_bytes
             + 2 * batch * per_image)
    return total / 1e9


class _Encoder(nn.Module):
    """``x -> (backbone features, L2-normalised projector output)``: what the evaluation reads."""

    def __init__(self, base_encoder: nn.Module):
        super().__init__()
        self.base_encoder = base_encoder

    def forward(self, x):
        features = self.base_encoder.backbone(x)  # (B, F)
        return features, F.normalize(self.base_encoder.projector(features), dim=1)


class MoCoTask:
    """MoCo-v3 for ``desupcon.engine.Trainer``: the model, the momentum schedule and the two views.

    Under DDP the model is wrapped in ``DistributedDataParallel`` and, on GPUs, its BatchNorm
    layers (heads and ResNet) become ``SyncBatchNorm``, as in facebookresearch/moco-v3.
    """

    def __init__(self, trainer, teacher=None):
        cfg = self.cfg = trainer.cfg
        self.trainer, self.data, self.device = trainer, trainer.data, trainer.device
        per_rank_batch(cfg.train.batch_size, dist.world_size())
        self.model = build_model(cfg).to(self.device)
        if dist.is_distributed() and self.device.type == "cuda":  # PyTorch's SyncBatchNorm runs on GPUs only
            self.model = nn.SyncBatchNorm.convert_sync_batchnorm(self.model)
        self.forward = dist.wrap(self.model)
        self.ddp_modules = [self.forward] if dist.is_distributed() else []
        self.momentum = cfg.train.momentum
        self._pending_momentum = None

    def parameters(self) -> list:
        return [p for p in self.model.parameters() if p.requires_grad]

    def extra_state(self) -> dict:
        return {"encoder_q": self.model.base_encoder.backbone.state_dict(),
                "proj_q": self.model.base_encoder.projector.state_dict()}

    def load_extra_state(self, state: dict):
        """Everything is in the model's state (the queue is one of its buffers)."""

    def announce(self):
        if dist.is_main():
            cfg, t = self.cfg, self.cfg.train
            print(f"MoCo-v3 '{t.out_dir}': {cfg.model.backbone} on {cfg.data.dataset} at {cfg.data.image_size}px, "
                  f"lr = {t.base_lr} x {t.batch_size * t.accum_steps}/256 = {cfg.lr:.3g}, "
                  f"{self.trainer.steps_per_epoch} steps/epoch, amp {self.trainer.autocast_dtype or 'off'}")
            print(f"VRAM estimate (an estimate, not a measurement): {estimate_vram_gb(cfg):.2f} GB per process")

    def train(self):
        self.model.train()

    def begin_step(self, global_step: int, total_steps: int):
        """The key encoder's momentum of this step; it is updated once, before the first forward."""
        t = self.cfg.train
        self.momentum = momentum_at(global_step, total_steps, t.momentum, t.momentum_schedule)
        self._pending_momentum = self.momentum

    def log_entry(self) -> dict:
        return {"momentum": self.momentum}

    def encoder(self) -> nn.Module:
        return _Encoder(self.model.base_encoder)

    def loss(self, idx: torch.Tensor) -> tuple[torch.Tensor, None]:
        images, (view1, view2) = self.data.train.images[idx], PRESETS[self.cfg.data.augment]
        size, mean, std, gen = self.cfg.data.image_size, self.data.train.mean, self.data.train.std, self.trainer.aug_gen
        x1, x2 = augment(images, view1, mean, std, gen, size), augment(images, view2, mean, std, gen, size)
        m, self._pending_momentum = self._pending_momentum, None
        return self.forward(x1, x2, m), None


def pretrain(cfg: MocoConfig, force_retrain: bool = False, device=None) -> dict:
    """Pretrain MoCo-v3 as ``cfg`` says (``desupcon.train.train``), resuming or reusing a cached run.

    Returns the run's summary (``train``'s) with ``"epochs"`` (the per-epoch log) and ``"snapshots"``.
    """
    from .store import log_path, read_json
    from .train import train

    summary = train(cfg, force_retrain=force_retrain, device=device)
    summary["epochs"] = read_json(log_path(cfg.name))["epochs"]
    summary["snapshots"] = [str(snapshot_path(cfg.name, e)) for e in saved_snapshots(cfg.name)]
    return summary


def pretrain_from_yaml(path, overrides=()) -> dict:
    """``python -m desupcon pretrain CONFIG --set section.key=value ...`` (works under torchrun)."""
    dist.init_from_env()
    return pretrain(load_config(path, overrides))


def load_encoder(cfg: MocoConfig, epoch: int, device="cpu") -> nn.Module:
    """The base encoder (``x -> (features, projections)``) saved at ``epoch``, in eval mode; 0 = its random init.

    The random init is the one ``pretrain`` starts from (same seed); the global RNG is left as it was.
    A missing snapshot raises ``FileNotFoundError`` naming it and the epochs available.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.train.seed)
        model = build_model(cfg)
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
    return _Encoder(model.base_encoder).to(device).eval()


def evaluate_checkpoints(config_path, epochs, overrides=(), device=None) -> list[dict]:
    """The evaluation schema (``desupcon.evaluate.evaluate_encoder``) of the encoder saved at each of ``epochs``.

    Args:
        config_path: the YAML config the checkpoints were trained with.
        epochs: checkpoint epochs to evaluate; 0 = the random initialisation.
        overrides: ``"section.key=value"`` overrides, as given to ``pretrain`` (default: none).
        device: evaluation device (default: CUDA if available, else the CPU).

    Writes ``json_results/<out_dir>_checkpoint_eval.json``; returns one dict per epoch (``"epoch"`` and
    the schema's keys: ``knn_top1``, ``probe_top1``, ``probe_top5``, ``alignment``, ...). Plot them
    with ``desupcon.plots.plot_accuracy_vs_epoch``.
    """
    from .engine import default_device

    cfg = load_config(config_path, overrides)
    device = torch.device(device) if device else default_device()
    data = Data.load(cfg.data.dataset, device)
    points = []
    for epoch in sorted(set(epochs)):
        results = evaluate_encoder(load_encoder(cfg, epoch, device), data, cfg.evaluation, cfg.seed,
                                   image_size=cfg.data.image_size)
        points.append({"epoch": epoch, **results})
        print(f"epoch {epoch:4d}: k-NN top-1 {results['knn_top1']:.2f}% | linear top-1 {results['probe_top1']:.2f}%, "
              f"top-5 {results['probe_top5']:.2f}%")
    atomic_write_json({"name": cfg.name, "config": cfg.to_dict(), "points": points}, eval_path(cfg.name))
    return points
