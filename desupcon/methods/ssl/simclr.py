"""SimCLR self-supervised pretraining (docs/design.md#nt-xent): the NT-Xent loss, the model and its task.

Chen, Kornblith, Norouzi, Hinton, "A Simple Framework for Contrastive Learning of Visual
Representations", ICML 2020, https://arxiv.org/abs/2002.05709. A base encoder (backbone + a 2-layer
projector) embeds two views of each image; each view must pick out the other view of its image
among every other view of the batch. No momentum encoder, no predictor, no queue. The config of a run
is an ``SSLConfig`` with ``method: simclr`` (``train.temperature`` is tau; ``train.queue_size`` must be 0).

    python -m desupcon pretrain configs/simclr_smoke.yaml
"""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn as nn
import torch.nn.functional as F

from desupcon.core import distributed as dist
from desupcon.engine.task import register_task
from desupcon.methods.ssl.base import TwoViewTask, build_backbone
from desupcon.methods.ssl.config import SSLConfig
from desupcon.nn.heads import build_mlp


def nt_xent_loss(z1: torch.Tensor, z2: torch.Tensor, temperature: float = 0.5,
                 keys: torch.Tensor | None = None) -> torch.Tensor:
    """NT-Xent, the normalized temperature-scaled cross-entropy of SimCLR (https://arxiv.org/abs/2002.05709, eq. 1).

    With anchors ``a = [z1; z2]`` (2N rows) and keys ``k`` (default ``a``), anchor i's positive is the
    other view of its image, ``p(i) = i + N mod 2N``, and

        L = 1/(2N) Σ_i −log( exp(a_i·k_p(i)/τ) / Σ_{j≠i} exp(a_i·k_j/τ) )

    Args:
        z1, z2: L2-normalised embeddings of the two views, (N, D) each; row n of both is image n.
        temperature: tau > 0 (default: 0.5, the paper's CIFAR-10 value).
        keys: (M, D), M >= 2N, whose first 2N rows are ``[z1; z2]`` (under DDP: every rank's views,
            this rank's first, ``distributed.gather_local_first``) (default: ``[z1; z2]``).
    """
    if z1.dim() != 2 or z1.shape[0] == 0 or z1.shape != z2.shape:
        raise ValueError(f"z1 and z2 must be non-empty 2-D (N, D) tensors of one shape, got {tuple(z1.shape)} "
                         f"and {tuple(z2.shape)}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    anchors = torch.cat([z1, z2]).float()  # (2N, D)
    keys = anchors if keys is None else keys.float()  # (M, D)
    n2 = anchors.shape[0]
    if keys.dim() != 2 or keys.shape[1] != anchors.shape[1] or keys.shape[0] < n2:
        raise ValueError(f"keys must be (M, D) with D={anchors.shape[1]} and M >= 2N = {n2}, got {tuple(keys.shape)}")
    with torch.autocast(anchors.device.type, enabled=False):
        logits = anchors @ keys.T / temperature  # (2N, M)
        own = torch.arange(n2, device=anchors.device)
        logits[own, own] = float("-inf")  # an anchor is never its own key
        positive = (own + n2 // 2) % n2
        return (torch.logsumexp(logits, dim=1) - logits[own, positive]).mean()


class SimCLR(nn.Module):
    """SimCLR: a base encoder (backbone + projector); ``forward(x1, x2)`` returns the NT-Xent loss.

    Args:
        backbone: network mapping images to features (B, feature_dim).
        feature_dim: dimension of the backbone features.
        proj_hidden: hidden dimension of the 2-layer projector (Linear, BatchNorm, ReLU, Linear) (default: 2048).
        proj_dim: output dimension of the projector (default: 128, the paper's).
        temperature: tau of NT-Xent (default: 0.5).
    """

    def __init__(self, backbone: nn.Module, feature_dim: int, proj_hidden: int = 2048, proj_dim: int = 128,
                 temperature: float = 0.5):
        super().__init__()
        self.temperature = temperature
        projector = build_mlp(2, feature_dim, proj_hidden, proj_dim, last_bn=False)
        self.base_encoder = nn.Sequential(OrderedDict(backbone=backbone, projector=projector))

    def forward(self, x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
        """x1, x2: the two views of the local batch (N, C, H, W). Under DDP the keys are every rank's views."""
        z1 = F.normalize(self.base_encoder(x1), dim=1)  # (N, D)
        z2 = F.normalize(self.base_encoder(x2), dim=1)  # (N, D)
        keys = dist.gather_local_first(torch.cat([z1, z2]))  # (2N * world, D), differentiable, local rows first
        return nt_xent_loss(z1, z2, self.temperature, keys)


@register_task("simclr")
class SimCLRTask(TwoViewTask):
    """SimCLR for ``desupcon.engine.trainer.Trainer``: the two views and the model; the loss is the model's."""

    title = "SimCLR"

    @classmethod
    def build_model(cls, cfg: SSLConfig, pretrained: bool = False, input_stats: tuple | None = None) -> SimCLR:
        backbone, feature_dim = build_backbone(cfg.model, cfg.data.image_size)
        return SimCLR(backbone, feature_dim, cfg.model.proj_hidden, cfg.model.proj_dim, cfg.train.temperature)

    @classmethod
    def check_config(cls, cfg: SSLConfig, fail) -> None:
        if cfg.train.queue_size:
            raise fail("train.queue_size", cfg.train.queue_size, "must be 0 for method 'simclr' (its negatives "
                                                                 "are the batch's other views)")
