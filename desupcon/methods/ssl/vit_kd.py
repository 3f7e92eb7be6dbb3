"""KD from a frozen teacher (write-up 000_*'s ``training_mode: kd``): a student distils the teacher's normalised embedding.

Write-up 000_*'s pipeline switches between MoCo-v3 and "knowledge distillation from DINOv2 teacher",
with the student ``student_name: vit_small_patch16_224`` at ``student_img_size: 96``; here that is
the method ``vit_kd``: an ``SSLConfig`` with ``method: vit_kd``, ``model.backbone:
vit_small_patch16_224``, ``data.image_size: 96`` and a timm teacher (``model.teacher_name``, e.g.
DINOv2's ``vit_small_patch14_dinov2``; Oquab et al. 2023, https://arxiv.org/abs/2304.07193). It
reads the ``model.teacher_*`` keys and ignores the momentum, temperature and predictor keys. Like
every two-view method it has checkpoints (``encoder_q`` = the student backbone, ``proj_q`` = its
projector), resume, snapshots and the evaluation schema (docs/design.md#embedding-kd).

    python -m desupcon pretrain configs/moco_v3_writeup_kd_dinov2.yaml
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from desupcon.engine.task import register_task
from desupcon.methods.ssl.base import TwoViewTask, build_backbone
from desupcon.methods.ssl.config import ModelConfig, SSLConfig
from desupcon.nn.heads import build_mlp
from desupcon.nn.models import is_timm_model, is_vit, timm_backbone, weights_source


def kd_cosine_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Normalised-embedding distillation, the mean over the batch of

        L_i = || s_i / ||s_i|| - t_i / ||t_i|| ||^2 = 2 - 2 cos(s_i, t_i)

    BYOL's normalised regression loss (Grill et al. 2020, https://arxiv.org/abs/2006.07733, eq. 2),
    from the student's projected embedding ``s`` (N, D) to the frozen teacher's embedding ``t`` (N, D).
    It lies in [0, 4] and is 0 when every pair points the same way; computed in fp32.
    """
    return (2 - 2 * F.cosine_similarity(student.float(), teacher.float(), dim=1)).mean()


class ViTKD(nn.Module):
    """A student (backbone + projector) regressing a frozen teacher's L2-normalised embedding.

    ``base_encoder`` is ``backbone`` + ``projector`` as in ``desupcon.methods.ssl.moco_v3.MoCoV3``, so checkpoints, evaluation
    and ``desupcon.methods.ssl.base.load_encoder`` read both alike. The teacher is kept out of the module tree: it is in
    neither ``parameters()`` (never trained), ``state_dict()`` (checkpoints hold the student only) nor
    ``train()`` (always in eval mode), but ``.to()`` moves it with the model.
    ``forward(x1, x2)`` returns ``(kd_cosine_loss on x1 + kd_cosine_loss on x2) / 2``.
    """

    def __init__(self, backbone: nn.Module, feature_dim: int, teacher: nn.Module, teacher_img_size: int,
                 proj_layers: int = 3, proj_hidden: int = 4096, input_mean=None, input_std=None):
        """
        backbone: the student, mapping images to features (B, feature_dim).
        feature_dim: dimension of the student's features.
        teacher: frozen timm model mapping images to its embedding (B, teacher.num_features); its
            ``pretrained_cfg`` gives the mean and std its inputs are normalised with.
        teacher_img_size: side the views are resized to (bicubic) for the teacher.
        proj_layers: depth of the student's projector ``build_mlp(proj_layers, feature_dim,
            proj_hidden, teacher dim, last_bn=False)``: 3 for ViTs, 2 for ResNets (default: 3). It ends
            in a plain Linear: a last BatchNorm without affine would centre every output dimension,
            which the teacher's embedding is not.
        proj_hidden: hidden width of the projector (default: 4096).
        input_mean, input_std: per-channel statistics the views are normalised with (default: None,
            the teacher's own, i.e. no renormalisation).
        """
        super().__init__()
        projector = build_mlp(proj_layers, feature_dim, proj_hidden, teacher.num_features, last_bn=False)
        self.base_encoder = nn.Sequential(OrderedDict(backbone=backbone, projector=projector))
        self._teacher = (teacher.eval().requires_grad_(False),)  # a tuple, so not a submodule
        self.teacher_img_size = teacher_img_size
        t_mean, t_std = (torch.tensor(teacher.pretrained_cfg[k]).view(1, -1, 1, 1) for k in ("mean", "std"))
        mean = t_mean if input_mean is None else torch.tensor(input_mean).view(1, -1, 1, 1)
        std = t_std if input_std is None else torch.tensor(input_std).view(1, -1, 1, 1)
        # x_teacher = (x * std + mean - t_mean) / t_std: undo the data's normalisation, apply the teacher's
        self.register_buffer("_scale", std / t_std, persistent=False)
        self.register_buffer("_shift", (mean - t_mean) / t_std, persistent=False)

    @property
    def teacher(self) -> nn.Module:
        return self._teacher[0]

    def _apply(self, fn, recurse=True):
        """``.to()``, ``.cuda()``, ``.half()``, ... also apply to the teacher, outside the module tree."""
        self.teacher._apply(fn, recurse)
        return super()._apply(fn, recurse)

    @torch.no_grad()
    def teacher_embedding(self, x: torch.Tensor) -> torch.Tensor:
        """The teacher's L2-normalised embedding (N, D_t) of views ``x`` (N, C, H, W): resized to
        ``teacher_img_size`` (bicubic) and renormalised to the teacher's statistics."""
        if x.shape[-1] != self.teacher_img_size:
            x = F.interpolate(x, size=(self.teacher_img_size,) * 2, mode="bicubic", align_corners=False)
        return F.normalize(self.teacher(x * self._scale + self._shift).float(), dim=1)

    def forward(self, x1: torch.Tensor, x2: torch.Tensor, m: float | None = None) -> torch.Tensor:
        """
        x1, x2: the two views of the local batch (N, C, H, W), normalised with input_mean/std.
        m: ignored (``moco.MoCoTask`` passes MoCo-v3's momentum; there is no momentum encoder).
        Returns the mean of the two views' ``kd_cosine_loss``.
        """
        losses = [kd_cosine_loss(self.base_encoder(x), self.teacher_embedding(x)) for x in (x1, x2)]
        return (losses[0] + losses[1]) / 2


def build_teacher(cfg: ModelConfig, pretrained: bool = True) -> nn.Module:
    """The frozen teacher of ``model.teacher_name`` at ``model.teacher_img_size``, in eval mode.

    Args:
        cfg: the ``model`` section.
        pretrained: load its weights from ``model.teacher_weights``, or from the Hugging Face hub when
            that is "" (default: True; False = a random teacher of the same architecture).

    A missing weights file raises ``FileNotFoundError`` naming it and the fix; a failed hub download
    raises ``OSError`` saying how to use a local file instead; a damaged file ``CheckpointError`` and a
    file of another architecture ``ConfigError`` (``desupcon.nn.models.load_weights``, strict).
    """
    name, weights = cfg.teacher_name, cfg.teacher_weights
    where = weights_source(name)
    if pretrained and weights and not Path(weights).is_file():
        raise FileNotFoundError(f"teacher weights file '{weights}' (model.teacher_weights) not found: download the "
                                f"{name} weights there (from {where}), or set model.teacher_weights: '' to fetch "
                                f"them from the Hugging Face hub")
    try:
        teacher, _ = timm_backbone(name, cfg.teacher_img_size, pretrained, weights, size_field="model.teacher_img_size")
    except OSError as err:
        if not pretrained or weights:
            raise
        raise OSError(f"could not fetch the {name} teacher weights from the Hugging Face hub ({err}); on a machine "
                      f"with network download them from {where} and set model.teacher_weights: PATH") from err
    return teacher.eval().requires_grad_(False)


def build_kd_model(cfg: ModelConfig, backbone: nn.Module, feature_dim: int, pretrained_teacher: bool = False,
                   input_stats: tuple | None = None) -> ViTKD:
    """``ViTKD`` of the ``model`` section around the student ``backbone``.

    Args:
        cfg: the ``model`` section (backbone, proj_hidden, teacher_name, teacher_weights, teacher_img_size).
        backbone: the student, built and frozen as ``desupcon.methods.ssl.base.build_backbone`` says.
        feature_dim: dimension of the student's features.
        pretrained_teacher: load the teacher's weights (``build_teacher``) (default: False, random).
        input_stats: per-channel ``(mean, std)`` of the views (default: None, the teacher's own).
    """
    mean, std = input_stats or (None, None)
    return ViTKD(backbone, feature_dim, build_teacher(cfg, pretrained_teacher), cfg.teacher_img_size,
                 proj_layers=3 if is_vit(cfg.backbone) else 2, proj_hidden=cfg.proj_hidden, input_mean=mean,
                 input_std=std)


@register_task("vit_kd")
class ViTKDTask(TwoViewTask):
    """KD from a frozen timm teacher: the student's projected embedding of each view regresses the teacher's."""

    title = "KD"

    def __init__(self, trainer, teacher=None):
        super().__init__(trainer, teacher)
        self.teacher = self.model.teacher  # outside the model's state: the memory tracer counts it here

    @classmethod
    def build_model(cls, cfg: SSLConfig, pretrained: bool = False, input_stats: tuple | None = None) -> ViTKD:
        """``ViTKD`` with a random student; the teacher's weights are loaded if ``pretrained``."""
        backbone, feature_dim = build_backbone(cfg.model, cfg.data.image_size)
        return build_kd_model(cfg.model, backbone, feature_dim, pretrained, input_stats)

    @classmethod
    def weight_files(cls, cfg: SSLConfig) -> dict[str, str]:
        """The teacher's weights file, when ``model.teacher_weights`` names one (hub weights are not fingerprinted)."""
        return {"model.teacher_weights": cfg.model.teacher_weights} if cfg.model.teacher_weights else {}

    @classmethod
    def check_config(cls, cfg: SSLConfig, fail) -> None:
        if not is_timm_model(cfg.model.teacher_name):
            raise fail("model.teacher_name", cfg.model.teacher_name, "must name the teacher of method 'vit_kd': a "
                                                                     "timm model such as vit_small_patch14_dinov2 "
                                                                     "(needs timm: pip install 'desupcon[kd]')")
        if cfg.train.queue_size:
            raise fail("train.queue_size", cfg.train.queue_size, "must be 0 for method 'vit_kd' (it has no negatives)")
