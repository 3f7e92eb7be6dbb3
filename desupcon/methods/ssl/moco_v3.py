"""MoCo-v3 self-supervised pretraining (docs/design.md#moco-v3-pretraining): the model, its task for the trainer core, checkpoint evaluation.

Chen, Xie, He, "An Empirical Study of Training Self-Supervised Vision Transformers", ICCV 2021,
https://arxiv.org/abs/2104.02057; the model follows facebookresearch/moco-v3 ``moco/builder.py``.
A base encoder (backbone + projector) and a predictor learn from the symmetric loss against keys
of a momentum encoder (an exponential moving average of the base encoder), optionally with a FIFO
queue of past keys as extra negatives for small batches. ViT-Small/16 keeps its patch projection
frozen at its random initialisation, the paper's fix for training instability. The heads come in
two layouts (``head_layout``: facebookresearch/moco-v3's or write-up 001_*'s). The config of a run
is an ``SSLConfig`` with ``method: moco_v3`` (``desupcon.methods.ssl.config``); training is
``desupcon.study.train.train(cfg)``, the same engine as every other run.

    python -m desupcon pretrain configs/moco_v3_smoke.yaml --set train.epochs=5
    python -m desupcon evaluate-checkpoints configs/moco_v3_smoke.yaml --epochs 0 1 5

Artefacts (``desupcon.core.paths``): ``pth_models/<out_dir>.pth`` (latest), snapshots
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

from desupcon.core import distributed as dist
from desupcon.engine.task import register_task
from desupcon.methods.ssl.base import TwoViewTask, build_backbone
from desupcon.methods.ssl.config import HEAD_LAYOUTS, SSLConfig
from desupcon.nn.banks import FIFOQueue
from desupcon.nn.heads import build_mlp
from desupcon.nn.losses import moco_v3_loss
from desupcon.nn.models import is_vit


def head_layout(heads: str, vit: bool) -> dict:
    """The ``MoCoV3`` head arguments (proj_layers, pred_last_bn, last_affine) of a ``model.heads`` layout.

    "official", facebookresearch/moco-v3 ``moco/builder.py``: ``MoCo_ViT`` has a 3-layer projector and a
    2-layer predictor, both ending in BatchNorm1d(affine=False); ``MoCo_ResNet`` has a 2-layer projector
    ending so and a 2-layer predictor without a last BatchNorm (``build_mlp(2, dim, mlp_dim, dim, False)``).
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
        projector = build_mlp(proj_layers, feature_dim, proj_hidden, proj_dim, last_affine=last_affine)
        self.base_encoder = nn.Sequential(OrderedDict(backbone=backbone, projector=projector))
        self.momentum_encoder = copy.deepcopy(self.base_encoder).requires_grad_(False)  # never gets gradient
        self.predictor = build_mlp(2, proj_dim, pred_hidden, proj_dim, pred_last_bn, last_affine)
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


def momentum_at(step: int, total_steps: int, m0: float, schedule: str) -> float:
    """Key-encoder momentum at optimiser step ``step``: ``m0`` ("fixed") or
    ``1 - (1 - m0) * (cos(pi * step / total_steps) + 1) / 2`` ("cosine", rising from m0 to 1)."""
    if schedule == "fixed":
        return m0
    return 1 - (1 - m0) * (math.cos(math.pi * step / total_steps) + 1) / 2


@register_task("moco_v3")
class MoCoTask(TwoViewTask):
    """MoCo-v3 for ``desupcon.engine.trainer.Trainer``: the model, the momentum schedule and the two views."""

    title = "MoCo-v3"

    def __init__(self, trainer, teacher=None):
        super().__init__(trainer, teacher)
        self.momentum = self.cfg.train.momentum
        self._pending_momentum = None

    @classmethod
    def build_model(cls, cfg: SSLConfig, pretrained: bool = False, input_stats: tuple | None = None) -> MoCoV3:
        """``MoCoV3`` with the heads of ``model.heads`` (``head_layout``), randomly initialised."""
        backbone, feature_dim = build_backbone(cfg.model, cfg.data.image_size)
        m, t = cfg.model, cfg.train
        return MoCoV3(backbone, feature_dim, proj_hidden=m.proj_hidden, proj_dim=m.proj_dim, pred_hidden=m.pred_hidden,
                      temperature=t.temperature, queue_size=t.queue_size, batch_size=t.batch_size,
                      **head_layout(m.heads, is_vit(m.backbone)))

    def begin_step(self, global_step: int, total_steps: int):
        """The key encoder's momentum of this step; it is updated once, before the first forward."""
        t = self.cfg.train
        self.momentum = momentum_at(global_step, total_steps, t.momentum, t.momentum_schedule)
        self._pending_momentum = self.momentum

    def log_entry(self) -> dict:
        return {"momentum": self.momentum}

    def loss(self, idx: torch.Tensor) -> tuple[torch.Tensor, None]:
        m, self._pending_momentum = self._pending_momentum, None
        return self.forward(*self.views(idx), m), None
