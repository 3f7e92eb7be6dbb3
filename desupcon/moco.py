"""MoCo-v3 self-supervised pretraining (SPEC §8): the model, its task for the trainer core, checkpoint evaluation.

Chen, Xie, He, "An Empirical Study of Training Self-Supervised Vision Transformers", ICCV 2021,
https://arxiv.org/abs/2104.02057; the model follows facebookresearch/moco-v3 ``moco/builder.py``.
A base encoder (backbone + projector) and a predictor learn from the symmetric loss against keys
of a momentum encoder (an exponential moving average of the base encoder), optionally with a FIFO
queue of past keys as extra negatives for small batches. ViT-Small/16 keeps its patch projection
frozen at its random initialisation, the paper's fix for training instability. The heads come in
two layouts (``head_layout``: facebookresearch/moco-v3's or write-up 001_*'s), and ``train.training_mode:
kd`` trains the write-up's distillation of a frozen teacher instead (``desupcon.vit_kd``).
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
from .memory import announce_line
from .models import freeze_conv1, freeze_patch_projection, is_vit, random_backbone
from .moco_config import HEAD_LAYOUTS, MocoConfig, ModelConfig, load_config
from .store import StaleRunError, atomic_write_json, describe_diff, eval_path, load_checkpoint, saved_snapshots, \
    snapshot_path


def build_backbone(cfg: ModelConfig, image_size: int, freeze: bool = True, **arch) -> tuple[nn.Module, int]:
    """Backbone ``(module, feature_dim)`` of the ``model`` section, pooled features ``(B, feature_dim)``.

    Args:
        cfg: the ``model`` section (backbone, width, patch_size, stop_grad_conv1, freeze_conv1).
        image_size: input side (a multiple of the patch size for ViT).
        freeze: freeze a ViT's patch projection when ``stop_grad_conv1`` says so and a ResNet's
            ``conv1`` when ``freeze_conv1`` does (default: True).
        arch: architecture overrides (``models.random_backbone``), e.g. a one-layer ViT in tests
            (default: none).
    """
    backbone, dim = random_backbone(cfg.backbone, image_size, cfg.width, cfg.patch_size, **arch)
    if freeze and cfg.stop_grad_conv1 and is_vit(cfg.backbone):
        freeze_patch_projection(backbone)
    if freeze and cfg.freeze_conv1:
        freeze_conv1(backbone)
    return backbone, dim


def _build_mlp(num_layers: int, input_dim: int, mlp_dim: int, output_dim: int, last_bn: bool = True,
               last_affine: bool = False) -> nn.Sequential:
    """facebookresearch/moco-v3's ``_build_mlp``: ``num_layers`` Linear layers without bias, each hidden
    one followed by BatchNorm1d and ReLU, the last one by BatchNorm1d(affine=False) if ``last_bn``.

    Args:
        num_layers: number of Linear layers.
        input_dim: input width.
        mlp_dim: hidden width.
        output_dim: output width.
        last_bn: a BatchNorm1d after the last Linear (default: True).
        last_affine: that BatchNorm learns a scale and shift, write-up 001_*'s ``BatchNorm1d(dim)`` (default:
            False, moco-v3's, which follows SimCLR without gamma).
    """
    layers = []
    for i in range(num_layers):
        dim1 = input_dim if i == 0 else mlp_dim
        dim2 = output_dim if i == num_layers - 1 else mlp_dim
        layers.append(nn.Linear(dim1, dim2, bias=False))
        if i < num_layers - 1:
            layers += [nn.BatchNorm1d(dim2), nn.ReLU(inplace=True)]
        elif last_bn:
            layers.append(nn.BatchNorm1d(dim2, affine=last_affine))
    return nn.Sequential(*layers)


def head_layout(heads: str, vit: bool) -> dict:
    """The ``MoCoV3`` head arguments (proj_layers, pred_last_bn, last_affine) of a ``model.heads`` layout.

    "official", facebookresearch/moco-v3 ``moco/builder.py``: ``MoCo_ViT`` has a 3-layer projector and a
    2-layer predictor, both ending in BatchNorm1d(affine=False); ``MoCo_ResNet`` has a 2-layer projector
    ending so and a 2-layer predictor without a last BatchNorm (``_build_mlp(2, dim, mlp_dim, dim, False)``).
    "writeup", write-up 001_* (fix 1; "BN Layers (Proj) 3/3", "(Pred) 2/2"), for every backbone: a 3-layer
    projector with BatchNorm after all three Linear layers and a 2-layer predictor with BatchNorm after
    both; the added last ones are its ``BatchNorm1d(dim)``, so affine (PyTorch's default).
    No Linear has a bias in either layout (write-up 001_*: "bias=False to final Linear layers").

    Args:
        heads: "official" or "writeup".
        vit: the backbone is a ViT (``models.is_vit``); only "official" depends on it.
    """
    if heads not in HEAD_LAYOUTS:
        raise ValueError(f"unknown head layout '{heads}': choose one of {list(HEAD_LAYOUTS)}")
    if heads == "writeup":
        return {"proj_layers": 3, "pred_last_bn": True, "last_affine": True}
    return {"proj_layers": 3 if vit else 2, "pred_last_bn": vit, "last_affine": False}


class MoCoV3(nn.Module):
    """MoCo-v3: base encoder (backbone + projector), momentum encoder and predictor.

    https://arxiv.org/abs/2104.02057. ``forward(x1, x2, m)`` returns the symmetric loss
    ``moco_v3_loss(q1, k2) + moco_v3_loss(q2, k1)``; under DDP the keys of all ranks are gathered.
    """

    def __init__(self, backbone: nn.Module, feature_dim: int, proj_layers: int = 3, proj_hidden: int = 4096,
                 proj_dim: int = 256, pred_hidden: int = 4096, temperature: float = 0.2, queue_size: int = 0,
                 batch_size: int | None = None, pred_last_bn: bool = True, last_affine: bool = False):
        """
        Defaults: moco-v3's ViT heads; ``head_layout`` gives the arguments of each layout.

        backbone: network mapping images to features (B, feature_dim).
        feature_dim: dimension of the backbone features.
        proj_layers: projector depth: official 3 for ViT, 2 for ResNet; writeup 3 (default: 3).
        proj_hidden: hidden dimension of the projector (default: 4096).
        proj_dim: output dimension of projector and predictor (default: 256).
        pred_hidden: hidden dimension of the 2-layer predictor (default: 4096).
        temperature: softmax temperature tau (default: 0.2).
        queue_size: keys of past batches used as extra negatives; 0 = none (default: 0).
        batch_size: keys enqueued per forward (the global batch), checked against queue_size
            now (default: None, checked at the first enqueue).
        pred_last_bn: the predictor ends in a BatchNorm (default: True; official ResNet: False).
        last_affine: the last BatchNorm of projector and predictor is affine (default: False; writeup: True).
        """
        super().__init__()
        self.temperature = temperature
        projector = _build_mlp(proj_layers, feature_dim, proj_hidden, proj_dim, last_affine=last_affine)
        self.base_encoder = nn.Sequential(OrderedDict(backbone=backbone, projector=projector))
        self.momentum_encoder = copy.deepcopy(self.base_encoder).requires_grad_(False)  # never gets gradient
        self.predictor = _build_mlp(2, proj_dim, pred_hidden, proj_dim, pred_last_bn, last_affine)
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


def build_model(cfg: MocoConfig, freeze: bool = True, pretrained_teacher: bool = False,
                input_stats: tuple | None = None) -> nn.Module:
    """The model of a config, randomly initialised: ``MoCoV3`` with the heads of ``model.heads``
    (``head_layout``), or for ``train.training_mode: kd`` a ``vit_kd.ViTKD``.

    Args:
        cfg: the run's config.
        freeze: apply ``model.stop_grad_conv1`` and ``model.freeze_conv1`` (default: True).
        pretrained_teacher: kd only: load the teacher's weights (``vit_kd.build_teacher``) (default:
            False, a random teacher: evaluation and memory estimates need the student only).
        input_stats: kd only: the per-channel ``(mean, std)`` the views are normalised with (default:
            None, the teacher's own normalisation).
    """
    backbone, feature_dim = build_backbone(cfg.model, cfg.data.image_size, freeze)
    m, t = cfg.model, cfg.train
    if t.training_mode == "kd":
        from .vit_kd import build_kd_model

        return build_kd_model(m, backbone, feature_dim, pretrained_teacher, input_stats)
    return MoCoV3(backbone, feature_dim, proj_hidden=m.proj_hidden, proj_dim=m.proj_dim, pred_hidden=m.pred_hidden,
                  temperature=t.temperature, queue_size=t.queue_size, batch_size=t.batch_size,
                  **head_layout(m.heads, is_vit(m.backbone)))


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

    In ``train.training_mode: kd`` the model is a ``vit_kd.ViTKD`` with its teacher's weights loaded;
    it takes the same two views and has no momentum encoder.

    Under DDP the model is wrapped in ``DistributedDataParallel`` and, on GPUs, its BatchNorm
    layers (heads and ResNet) become ``SyncBatchNorm``, as in facebookresearch/moco-v3.
    """

    def __init__(self, trainer, teacher=None):
        cfg = self.cfg = trainer.cfg
        self.trainer, self.data, self.device = trainer, trainer.data, trainer.device
        per_rank_batch(cfg.train.batch_size, dist.world_size())
        stats = (self.data.train.mean, self.data.train.std)
        pretrained = self.device.type != "meta"  # kd: a shapes-only (meta) build keeps a random teacher
        self.model = build_model(cfg, pretrained_teacher=pretrained, input_stats=stats).to(self.device)
        self.teacher = getattr(self.model, "teacher", None)  # kd's frozen teacher, outside the model's state
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
            print(announce_line(cfg))

    def train(self):
        self.model.train()

    def begin_step(self, global_step: int, total_steps: int):
        """The key encoder's momentum of this step; it is updated once, before the first forward."""
        t = self.cfg.train
        self.momentum = momentum_at(global_step, total_steps, t.momentum, t.momentum_schedule)
        self._pending_momentum = self.momentum

    def log_entry(self) -> dict:
        return {"momentum": self.momentum} if self.cfg.train.training_mode == "moco_v3" else {}

    def encoder(self) -> nn.Module:
        return _Encoder(self.model.base_encoder)

    def loss(self, idx: torch.Tensor) -> tuple[torch.Tensor, None]:
        images, (view1, view2) = self.data.train.gather(idx), PRESETS[self.cfg.data.augment]
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
    data = Data.load(cfg.dataset, device).evaluation
    points = []
    for epoch in sorted(set(epochs)):
        results = evaluate_encoder(load_encoder(cfg, epoch, device), data, cfg.evaluation, cfg.seed,
                                   image_size=cfg.data.image_size)
        points.append({"epoch": epoch, **results})
        print(f"epoch {epoch:4d}: k-NN top-1 {results['knn_top1']:.2f}% | linear top-1 {results['probe_top1']:.2f}%, "
              f"top-5 {results['probe_top5']:.2f}%")
    atomic_write_json({"name": cfg.name, "config": cfg.to_dict(), "points": points}, eval_path(cfg.name))
    return points
