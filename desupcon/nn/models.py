"""Backbones and the wrapper every student and teacher uses.

CIFAR ResNets on torchvision's ResNet (``ARCHS``), ViT-Small/16 (torchvision
``VisionTransformer``, for MoCo-v3) and any timm model by name (``timm_backbone``, for MoCo-v3 and
its ``kd`` mode; timm is the optional extra ``desupcon[kd]``), whose local weights files load strictly
(``load_weights``: a file of another architecture or a damaged one is refused with one line).
``ModelWrapper(num_classes, arch)`` returns ``(features, projections, logits)``: backbone features,
L2-normalised projections (64-d by default) and classifier logits.
"""

from __future__ import annotations

import importlib

import torch
import torch.nn as nn
import torch.nn.functional as F
from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet

from desupcon.core.artefacts import safe_torch_load
from desupcon.core.errors import CheckpointError, ConfigError

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
TIMM_NAME = "a timm model name (e.g. vit_small_patch16_224; needs timm: pip install 'desupcon[kd]')"


def is_timm_model(name: str) -> bool:
    """Whether ``name`` is a timm model (``vit_small_patch16_224``, ``resnet50.tv_in1k``, ...); False without timm."""
    try:
        import timm
    except ImportError:
        return False
    return timm.is_model(name)


def is_backbone(name: str) -> bool:
    """Whether ``name`` is a backbone of ``random_backbone``: one of ``BACKBONES`` or a timm model."""
    return name in BACKBONES or is_timm_model(name)


def is_vit(name: str) -> bool:
    """Whether backbone ``name`` is a ViT: ``vit_small``, or a timm model whose first layer is a patch embedding."""
    if name == "vit_small":
        return True
    if name in ARCHS or not is_timm_model(name):
        return False
    from timm.models import get_pretrained_cfg_value

    return get_pretrained_cfg_value(name, "first_conv") == "patch_embed.proj"


def timm_backbone(name: str, image_size: int, pretrained: bool = False, weights: str = "",
                  size_field: str = "data.image_size", weights_field: str = "model.teacher_weights",
                  name_field: str = "model.teacher_name", **arch) -> tuple[nn.Module, int]:
    """A timm model without its classifier and its feature dimension: ``forward`` returns timm's pooled
    features ``(B, num_features)``, the CLS token after the final norm for DINOv2 and
    vit_small_patch16_224.

    Args:
        name: a timm model name, e.g. "vit_small_patch16_224" or "vit_small_patch14_dinov2".
        image_size: input side; models with a fixed input size (ViTs) are built for it (``img_size``),
            and their position embeddings are resampled when the weights were made at another size.
        pretrained: load pretrained weights, from ``weights`` if given (``load_weights``, strict), else
            from the Hugging Face hub (default: False, a random initialisation).
        weights: a local weights file in timm's or the original release's format (default: "").
        size_field: the config field that set ``image_size``, named in the error if a ViT's patch size
            does not divide it (default: "data.image_size").
        weights_field, name_field: the config fields that set ``weights`` and ``name``, named in the
            errors of ``load_weights`` (default: "model.teacher_weights", "model.teacher_name").
        arch: architecture overrides for ``timm.create_model``, e.g. ``depth=1`` in tests (default: none).
    """
    import timm
    from timm.models import get_pretrained_cfg_value

    if get_pretrained_cfg_value(name, "fixed_input_size"):
        arch["img_size"] = image_size
    model = timm.create_model(name, pretrained=pretrained and not weights, num_classes=0, **arch)
    if hasattr(model, "patch_embed") and image_size % model.patch_embed.patch_size[0]:
        patch = model.patch_embed.patch_size[0]
        lower = max(patch, image_size // patch * patch)
        raise ValueError(f"'{size_field}' = {image_size} is not a multiple of {name}'s patch size {patch}: "
                         f"choose e.g. {lower} or {lower + patch}")
    if pretrained and weights:
        load_weights(model, name, weights, weights_field, name_field)
    return model, model.num_features


def weights_source(name: str) -> str:
    """Where the pretrained weights of timm model ``name`` are published: its Hugging Face hub page,
    else "timm's release"."""
    from timm.models import get_pretrained_cfg

    hub = getattr(get_pretrained_cfg(name), "hf_hub_id", None)
    return f"https://huggingface.co/{hub}" if hub else "timm's release"


# the containers timm's load_checkpoint unwraps, in its order (EMA weights first)
WEIGHT_CONTAINERS = ("state_dict_ema", "model_ema", "state_dict", "model")


def read_weights(path, what: str, fix: str) -> dict[str, torch.Tensor]:
    """The state dict in weights file ``path``: safetensors for a ``.safetensors`` file, else
    ``torch.load(weights_only=True)`` after a CRC-32 check of its zip records (``safe_torch_load``);
    unwrapped from the first of ``WEIGHT_CONTAINERS`` it holds, with the ``module.`` (DDP) and
    ``_orig_mod.`` (torch.compile) prefixes removed (timm's ``clean_state_dict``).

    Args:
        path: the file.
        what: how messages name the file, e.g. "weights file '<path>' (model.teacher_weights)".
        fix: what the user should do, ending every message.
    A damaged file, or one that holds no dict of tensors, raises one-line ``CheckpointError``.
    """
    from timm.models import clean_state_dict

    if str(path).endswith(".safetensors"):
        try:
            import safetensors.torch
        except ImportError:
            raise CheckpointError(f"{what} is a safetensors file and the safetensors library is not installed: "
                                  f"pip install safetensors") from None
        try:
            state = safetensors.torch.load_file(path, device="cpu")
        except FileNotFoundError:
            raise
        except Exception as err:
            raise CheckpointError(f"{what} is truncated or corrupted ({type(err).__name__}: {err}); {fix}") from None
    else:
        state = safe_torch_load(path, what, fix)
    if isinstance(state, dict):
        state = next((state[key] for key in WEIGHT_CONTAINERS if isinstance(state.get(key), dict)), state)
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        held = f"keys {sorted(map(str, state))[:5]}" if isinstance(state, dict) else f"a {type(state).__name__}"
        raise CheckpointError(f"{what} holds no state dict of tensors ({held}); {fix}")
    return clean_state_dict(state)


def checkpoint_filter(name: str):
    """timm's ``checkpoint_filter_fn(state_dict, model)`` of the module that defines model ``name``
    (e.g. the ViT one: it converts the original DINOv2 and CLIP releases and resamples position and
    patch embeddings to the model's grid), or None where that module has none (e.g. ResNets)."""
    from timm.models import model_entrypoint

    return getattr(importlib.import_module(model_entrypoint(name).__module__), "checkpoint_filter_fn", None)


def load_weights(model: nn.Module, name: str, path, weights_field: str = "model.teacher_weights",
                 name_field: str = "model.teacher_name") -> None:
    """Load weights file ``path`` into timm model ``model`` of architecture ``name``, strictly.

    The file is read with ``read_weights``, passed through timm's checkpoint filter of ``name``
    (``checkpoint_filter``), stripped of the classifier keys a headless ``model`` lacks (its
    ``pretrained_cfg["classifier"]``, as timm does), then loaded with ``load_state_dict(strict=True)``:
    every tensor of the model must be in the file with its shape, and nothing else.

    Args:
        model: the timm model, built for its input size and ``num_classes``.
        name: its timm name, e.g. "vit_small_patch14_dinov2".
        path: the weights file.
        weights_field, name_field: the config fields named in the errors (default:
            "model.teacher_weights", "model.teacher_name").
    A damaged file raises ``CheckpointError`` (re-download it); a file of another architecture or
    size raises ``ConfigError`` counting the missing, unexpected and reshaped tensors with one example
    of each; both one line.
    """
    where = weights_source(name)
    what = f"weights file '{path}' ({weights_field})"
    fix = f"download the {name} weights again (from {where}), or set {weights_field}: '' to fetch them from the hub"
    raw = read_weights(path, what, fix)
    state = dict(raw)
    filter_fn = checkpoint_filter(name)
    if filter_fn is not None:
        try:
            state = filter_fn(state, model)
        except Exception:  # a filter may trip over another architecture's keys: compare the file as it is
            state = dict(raw)
    expected = model.state_dict()
    classifiers = model.pretrained_cfg.get("classifier") or ()
    for key in [f"{c}.{p}" for c in ([classifiers] if isinstance(classifiers, str) else classifiers)
                for p in ("weight", "bias")]:
        if key not in expected:
            state.pop(key, None)
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    reshaped = [k for k in expected if k in state and state[k].shape != expected[k].shape]
    if missing or unexpected or reshaped:
        def shapes(key):
            return f"'{key}': {tuple(state[key].shape)} in the file, {tuple(expected[key].shape)} in the model"

        raise ConfigError(f"{what} does not hold {name} weights ({name_field}): of the model's {len(expected)} "
                          f"tensors {_counted(missing, 'are missing from the file')}, "
                          f"{_counted(reshaped, 'have another shape', shapes)}, and "
                          f"{_counted(unexpected, f'of the {len(state)} in the file are unexpected')}; put the {name} "
                          f"weights there (from {where}), or set {name_field} to the architecture the file was made for")
    model.load_state_dict(state, strict=True)


def _counted(keys: list[str], text: str, describe=lambda key: f"'{key}'") -> str:
    """"<n> <text>", with " (e.g. <describe(first key)>)" when there are any (default: the key quoted)."""
    return f"{len(keys)} {text}" + (f" (e.g. {describe(keys[0])})" if keys else "")


def freeze_patch_projection(vit: nn.Module) -> list[str]:
    """Freeze the ViT patch projection at its current weights; return the names of the parameters frozen.

    The projection is torchvision's ``conv_proj`` or timm's ``patch_embed.proj`` (the layer
    facebookresearch/moco-v3 ``vits.py`` freezes for its stop_grad_conv1 option). Raises ``RuntimeError``
    if the model has neither, so a renamed layer never leaves the projection silently trainable.
    """
    return _freeze(vit, ("conv_proj", "patch_embed.proj"), "ViT patch projection")


def freeze_conv1(resnet: nn.Module) -> list[str]:
    """Freeze a ResNet's stem convolution ``conv1`` at its current weights; return the parameter names frozen.

    Write-up 001_*'s ResNet counterpart of the ViT patch-projection freeze ("Added ResNet conv1 freezing
    support"). Raises ``RuntimeError`` if the model has no ``conv1``.
    """
    return _freeze(resnet, ("conv1",), "ResNet stem convolution")


def _freeze(model: nn.Module, candidates: tuple[str, ...], what: str) -> list[str]:
    """Freeze the first submodule of ``model`` named in ``candidates``; print a confirmation; return
    the names of its parameters."""
    modules = dict(model.named_modules())
    name = next((c for c in candidates if c in modules), None)
    if name is None:
        raise RuntimeError(f"{what} {' or '.join(repr(c) for c in candidates)} not found: cannot freeze it")
    modules[name].requires_grad_(False)
    print(f"✓ Froze {what} layer ({name})")
    return [f"{name}.{n}" for n, _ in modules[name].named_parameters()]


def random_backbone(name: str, image_size: int, width: int = 64, patch_size: int = 16,
                    **arch) -> tuple[nn.Module, int]:
    """A randomly initialised backbone and its feature dimension (all layers trainable).

    Args:
        name: "vit_small" (features = the CLS token), a CIFAR ResNet of ``ARCHS``, or a timm model name
            (``timm_backbone``; ``BACKBONES`` win, so "resnet50" is the CIFAR ResNet-50 and
            "resnet50.tv_in1k" timm's ImageNet ResNet-50).
        image_size: input side (a multiple of the patch size for ViTs).
        width: first-stage channels of a CIFAR ResNet (default: 64; ignored by the others).
        patch_size: patch side of "vit_small" (default: 16; a timm name carries its own).
        arch: architecture overrides: of ``VIT_SMALL`` (num_layers, num_heads, hidden_dim, mlp_dim) for
            "vit_small", or ``timm.create_model`` keywords for a timm model, e.g. a one-layer ViT in tests
            (default: none).
    """
    if name == "vit_small":
        from torchvision.models import VisionTransformer

        arch = {**VIT_SMALL, **arch}
        vit = VisionTransformer(image_size=image_size, patch_size=patch_size, **arch)
        vit.heads = nn.Identity()
        return vit, arch["hidden_dim"]
    if name in ARCHS:
        resnet = CifarResNet(name, width)
        return resnet, resnet.feature_dim
    if is_timm_model(name):
        return timm_backbone(name, image_size, **arch)
    raise ValueError(f"unknown backbone '{name}': choose one of {list(BACKBONES)} or {TIMM_NAME}")
