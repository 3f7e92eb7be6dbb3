"""Backbones and the wrapper every student and teacher uses.

CIFAR ResNets on torchvision's ResNet (``ARCHS``) and ViT-Small/16 (torchvision
``VisionTransformer``, for MoCo-v3). ``ModelWrapper(num_classes, arch)`` returns ``(features,
projections, logits)``: backbone features, L2-normalised projections (64-d by default) and
classifier logits.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet

ARCHS = {"resnet18": (BasicBlock, [2, 2, 2, 2]), "resnet50": (Bottleneck, [3, 4, 6, 3])}


class CifarResNet(ResNet):
    """torchvision ResNet with a 3x3 stride-1 stem and no max-pool, for 32x32 (or smaller) images.

    Args:
        arch: "resnet18" or "resnet50".
        width: channels of the first stage (64 = the standard network; stages use width x 1, 2, 4, 8).
    The classifier ``fc`` is an identity: ``forward`` returns pooled features ``(B, feature_dim)``.
    """

    def __init__(self, arch: str = "resnet18", width: int = 64):
        if arch not in ARCHS:
            raise ValueError(f"unknown architecture '{arch}': choose one of {sorted(ARCHS)}")
        block, layers = ARCHS[arch]
        nn.Module.__init__(self)  # ResNet.__init__ hard-codes width 64 and the ImageNet stem
        self._norm_layer, self.dilation, self.groups, self.base_width = nn.BatchNorm2d, 1, 1, 64
        self.inplanes = width
        self.conv1 = nn.Conv2d(3, width, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.Identity()
        self.layer1 = self._make_layer(block, width, layers[0])
        self.layer2 = self._make_layer(block, width * 2, layers[1], stride=2)
        self.layer3 = self._make_layer(block, width * 4, layers[2], stride=2)
        self.layer4 = self._make_layer(block, width * 8, layers[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Identity()
        self.feature_dim = width * 8 * block.expansion
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")


class ModelWrapper(nn.Module):
    """Backbone + projection head + linear classifier.

    Args:
        num_classes: classifier outputs.
        arch: "resnet18" or "resnet50".
        width: first-stage channels of the backbone (64 = standard).
        proj_dim: projection dimension (64).
        projection: "mlp" (Linear-ReLU-Linear, SupCon style, for students) or "linear" (the teacher's
            cosine projection head ``feature_dim -> proj_dim``).
    ``forward(x)`` returns ``(features (B, F), projections (B, proj_dim) L2-normalised, logits (B, classes))``.
    """

    def __init__(self, num_classes: int, arch: str = "resnet18", width: int = 64, proj_dim: int = 64,
                 projection: str = "mlp"):
        super().__init__()
        self.backbone = CifarResNet(arch, width)
        dim = self.backbone.feature_dim
        if projection == "mlp":
            self.head = nn.Sequential(nn.Linear(dim, dim), nn.ReLU(inplace=True), nn.Linear(dim, proj_dim))
        elif projection == "linear":
            self.head = nn.Linear(dim, proj_dim)
        else:
            raise ValueError(f"unknown projection '{projection}': choose 'mlp' or 'linear'")
        self.classifier = nn.Linear(dim, num_classes)

    def project(self, features: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.head(features), dim=1)

    def forward(self, x: torch.Tensor):
        features = self.backbone(x)  # (B, F)
        return features, self.project(features), self.classifier(features)


@torch.no_grad()
def fold_batchnorm(resnet: CifarResNet) -> CifarResNet:
    """Fold every BatchNorm of a frozen ``resnet`` into the convolution before it, in place.

    In eval mode BatchNorm is the affine map ``y = (x - mean) / sqrt(var + eps) * gamma + beta``, so
    ``conv -> bn`` equals one convolution with weight ``W * s`` and bias ``beta - mean * s``, where
    ``s = gamma / sqrt(var + eps)`` per output channel. The folded network computes the same
    function with one pass over each activation fewer; it is for inference only (no BN statistics).
    """
    if resnet.training:
        raise ValueError("fold_batchnorm needs an eval-mode network: its BatchNorm statistics must be frozen")
    pairs = [(resnet, "conv1", "bn1")]
    for block in [*resnet.layer1, *resnet.layer2, *resnet.layer3, *resnet.layer4]:
        pairs += [(block, f"conv{i}", f"bn{i}") for i in (1, 2, 3) if hasattr(block, f"bn{i}")]
        if block.downsample is not None:
            pairs.append((block.downsample, "0", "1"))
    for parent, conv_name, bn_name in pairs:
        conv, bn = getattr(parent, conv_name), getattr(parent, bn_name)
        scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)  # (C_out,)
        folded = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                           bias=True).to(conv.weight.device)
        folded.weight.copy_(conv.weight * scale.view(-1, 1, 1, 1))
        folded.bias.copy_(bn.bias - bn.running_mean * scale)
        setattr(parent, conv_name, folded.requires_grad_(False))
        setattr(parent, bn_name, nn.Identity())
    return resnet


def build_model(cfg, num_classes: int) -> ModelWrapper:
    """The network of a distillation run: teachers get the linear cosine head, students the MLP head."""
    projection = "mlp" if cfg.role == "student" else "linear"
    return ModelWrapper(num_classes, cfg.arch, cfg.width, cfg.proj_dim, projection)


VIT_SMALL = dict(num_layers=12, num_heads=6, hidden_dim=384, mlp_dim=1536)
BACKBONES = ("vit_small", *ARCHS)


def freeze_patch_projection(vit: nn.Module) -> list[str]:
    """Freeze the ViT patch projection (``conv_proj``) at its current weights; return the names frozen.

    Raises ``RuntimeError`` if the model has no ``conv_proj`` parameter, so a renamed layer
    never leaves the projection silently trainable.
    """
    frozen = [name for name, p in vit.named_parameters() if name.split(".")[0] == "conv_proj"]
    if not frozen:
        raise RuntimeError("ViT patch projection 'conv_proj' not found: cannot freeze it")
    vit.conv_proj.requires_grad_(False)
    print("✓ Froze ViT patch projection layer (conv_proj)")
    return frozen


def random_backbone(name: str, image_size: int, width: int = 64, patch_size: int = 16,
                    **vit_arch) -> tuple[nn.Module, int]:
    """A randomly initialised backbone of ``BACKBONES`` and its feature dimension (all layers trainable).

    Args:
        name: "vit_small" (features = the CLS token) or a CIFAR ResNet of ``ARCHS``.
        image_size: input side (a multiple of ``patch_size`` for ViT).
        width: first-stage channels of a ResNet (ignored by ViT).
        patch_size: ViT patch side (ignored by ResNets).
        vit_arch: overrides of ``VIT_SMALL`` (num_layers, num_heads, hidden_dim, mlp_dim), e.g. a
            one-layer ViT in tests (default: ViT-Small).
    """
    if name == "vit_small":
        from torchvision.models import VisionTransformer

        arch = {**VIT_SMALL, **vit_arch}
        vit = VisionTransformer(image_size=image_size, patch_size=patch_size, **arch)
        vit.heads = nn.Identity()
        return vit, arch["hidden_dim"]
    if name in ARCHS:
        resnet = CifarResNet(name, width)
        return resnet, resnet.feature_dim
    raise ValueError(f"unknown backbone '{name}': choose one of {list(BACKBONES)}")
