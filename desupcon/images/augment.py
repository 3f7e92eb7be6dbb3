"""Batched data augmentation on the training device, with per-sample random parameters.

``augment(images, preset, mean, std, generator)`` turns a uint8 batch ``(B, C, H, W)`` into a
normalised float batch; every sample draws its own crop, flip, rotation, colour jitter,
grayscale, blur, solarisation and noise from ``generator`` (so a fixed seed reproduces the views).
The geometric part is one ``affine_grid``/``grid_sample`` call; blur is one grouped convolution.
No per-image Python loop and no PIL in the hot path.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class AugmentConfig:
    """Probabilities and ranges of one view's augmentation (torchvision semantics where they exist).

    crop_scale, crop_ratio: RandomResizedCrop area fraction and aspect-ratio range.
    hflip_p, vflip_p: probability of a horizontal / vertical flip.
    rot90: draw a rotation of 0/90/180/270 degrees uniformly (satellite imagery).
    jitter_p, brightness, contrast, saturation, hue: ColorJitter applied with probability jitter_p.
    grayscale_p: probability of converting to grayscale.
    blur_p, blur_sigma: Gaussian blur probability and sigma range (in pixels at 224 scaled to the image).
    solarize_p: probability of inverting pixels >= 0.5.
    noise_std: std of Gaussian noise added in pixel space ([0, 1]) before normalisation.
    """

    crop_scale: tuple[float, float] = (0.2, 1.0)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    hflip_p: float = 0.5
    vflip_p: float = 0.0
    rot90: bool = False
    jitter_p: float = 0.8
    brightness: float = 0.4
    contrast: float = 0.4
    saturation: float = 0.4
    hue: float = 0.1
    grayscale_p: float = 0.2
    blur_p: float = 0.0
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    solarize_p: float = 0.0
    noise_std: float = 0.0


_NO_COLOUR = dict(jitter_p=0.0, grayscale_p=0.0)
PRESETS: dict[str, tuple[AugmentConfig, AugmentConfig]] = {
    # crop + flip: the standard CIFAR recipe for cross-entropy training
    "standard": (AugmentConfig(crop_scale=(0.6, 1.0), **_NO_COLOUR),) * 2,
    # SupCon / CRD CIFAR views (Khosla et al.): crop, flip, colour jitter, grayscale
    "supcon": (AugmentConfig(),) * 2,
    # MoCo-v3 / BYOL asymmetric views: blur 1.0 / 0.1, solarise on view 2
    "moco": (AugmentConfig(crop_scale=(0.08, 1.0), brightness=0.4, contrast=0.4, saturation=0.2, blur_p=1.0),
             AugmentConfig(crop_scale=(0.08, 1.0), brightness=0.4, contrast=0.4, saturation=0.2, blur_p=0.1,
                           solarize_p=0.2)),
    # satellite tiles: discrete rotations, both flips, sensor noise in pixel space
    "satellite": (AugmentConfig(crop_scale=(0.5, 1.0), vflip_p=0.5, rot90=True, jitter_p=0.5, hue=0.0,
                                grayscale_p=0.0, noise_std=0.02),) * 2,
    "none": (AugmentConfig(crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), hflip_p=0.0, **_NO_COLOUR),) * 2,
}


def normalize(images: torch.Tensor, mean, std) -> torch.Tensor:
    """uint8 or [0, 1] float ``(B, C, H, W)`` -> normalised float32."""
    x = images.float() / 255 if images.dtype == torch.uint8 else images
    mean = torch.as_tensor(mean, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
    std = torch.as_tensor(std, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
    return (x - mean) / std


def augment(images: torch.Tensor, cfg: AugmentConfig, mean, std, generator: torch.Generator,
            size: int | None = None) -> torch.Tensor:
    """One augmented, normalised view of a uint8 batch ``(B, C, H, W)``; output ``(B, C, size, size)``.

    All random parameters come from ``generator`` (on the images' device), one set per sample.
    """
    if images.dtype != torch.uint8 or images.ndim != 4:
        raise ValueError(f"images must be a uint8 (B, C, H, W) batch, got {images.dtype} {tuple(images.shape)}")
    if generator.device.type != images.device.type:
        raise ValueError(f"generator is on {generator.device} but images are on {images.device}")
    rand = lambda *shape: torch.rand(*shape, generator=generator, device=images.device)
    x = images.float() / 255  # (B, C, H, W) in [0, 1]
    x = _geometric(x, cfg, rand, size or images.shape[-1])
    if x.shape[1] == 3:
        x = _colour(x, cfg, rand)
    if cfg.blur_p > 0:
        x = _blur(x, cfg, rand)
    if cfg.solarize_p > 0:
        x = torch.where((rand(x.shape[0], 1, 1, 1) < cfg.solarize_p) & (x >= 0.5), 1 - x, x)
    if cfg.noise_std > 0:
        noise = torch.randn(x.shape, generator=generator, device=x.device)
        x = (x + cfg.noise_std * noise).clamp(0, 1)
    return normalize(x, mean, std)


def two_views(images, preset: str, mean, std, generator, size=None) -> tuple[torch.Tensor, torch.Tensor]:
    """The two views of ``preset`` (independent parameters per view and per sample)."""
    if preset not in PRESETS:
        raise ValueError(f"unknown augmentation preset '{preset}': choose one of {sorted(PRESETS)}")
    cfg1, cfg2 = PRESETS[preset]
    return augment(images, cfg1, mean, std, generator, size), augment(images, cfg2, mean, std, generator, size)


def _geometric(x, cfg: AugmentConfig, rand, size: int) -> torch.Tensor:
    """Random resized crop, flips and 90-degree rotations as one affine resampling."""
    b = x.shape[0]
    area = cfg.crop_scale[0] + (cfg.crop_scale[1] - cfg.crop_scale[0]) * rand(b)
    log_r = math.log(cfg.crop_ratio[0]) + (math.log(cfg.crop_ratio[1]) - math.log(cfg.crop_ratio[0])) * rand(b)
    w = (area * log_r.exp()).sqrt().clamp(max=1.0)  # crop width as a fraction of the image
    h = (area / log_r.exp()).sqrt().clamp(max=1.0)
    cx = (1 - w) * (2 * rand(b) - 1)  # crop centre in [-1, 1] coordinates, crop inside the image
    cy = (1 - h) * (2 * rand(b) - 1)
    sx = torch.where(rand(b) < cfg.hflip_p, -w, w)
    sy = torch.where(rand(b) < cfg.vflip_p, -h, h)
    theta = torch.zeros(b, 2, 3, device=x.device)  # (B, 2, 3) output -> input coordinates
    theta[:, 0, 0], theta[:, 1, 1], theta[:, 0, 2], theta[:, 1, 2] = sx, sy, cx, cy
    if cfg.rot90:
        k = (rand(b) * 4).floor()  # 0, 1, 2, 3 quarter turns
        cos, sin = torch.cos(k * math.pi / 2).round(), torch.sin(k * math.pi / 2).round()
        rot = torch.stack([torch.stack([cos, -sin], -1), torch.stack([sin, cos], -1)], -2)  # (B, 2, 2)
        theta = torch.cat([theta[:, :, :2] @ rot, theta[:, :, 2:]], dim=2)
    grid = F.affine_grid(theta, [b, x.shape[1], size, size], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


def _gray(x: torch.Tensor) -> torch.Tensor:
    return (0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3])  # (B, 1, H, W)


def _colour(x, cfg: AugmentConfig, rand) -> torch.Tensor:
    """ColorJitter (brightness, contrast, saturation, hue in that order) then random grayscale."""
    b = x.shape[0]
    on = (rand(b) < cfg.jitter_p).float().view(b, 1, 1, 1)  # samples not jittered get identity factors
    factor = lambda s: 1 + on * s * (2 * rand(b).view(b, 1, 1, 1) - 1)
    x = (x * factor(cfg.brightness)).clamp(0, 1)
    mean_gray = _gray(x).mean(dim=(2, 3), keepdim=True)
    x = ((x - mean_gray) * factor(cfg.contrast) + mean_gray).clamp(0, 1)
    gray = _gray(x)
    x = ((x - gray) * factor(cfg.saturation) + gray).clamp(0, 1)
    if cfg.hue > 0:
        x = _rotate_hue(x, on.view(b) * cfg.hue * (2 * rand(b) - 1))
    return torch.where(rand(b).view(b, 1, 1, 1) < cfg.grayscale_p, _gray(x).expand_as(x), x)


def _rotate_hue(x, shift: torch.Tensor) -> torch.Tensor:
    """Rotate hue by ``shift`` turns per sample (a rotation of the chroma plane in YIQ space)."""
    to_yiq = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]],
                          device=x.device)
    angle = 2 * math.pi * shift
    cos, sin = angle.cos(), angle.sin()
    rot = torch.zeros(x.shape[0], 3, 3, device=x.device)  # (B, 3, 3)
    rot[:, 0, 0], rot[:, 1, 1], rot[:, 1, 2], rot[:, 2, 1], rot[:, 2, 2] = 1, cos, -sin, sin, cos
    mix = torch.linalg.inv(to_yiq) @ rot @ to_yiq  # (B, 3, 3)
    return torch.einsum("bij,bjhw->bihw", mix, x).clamp(0, 1)


def _blur(x, cfg: AugmentConfig, rand) -> torch.Tensor:
    """Gaussian blur with a per-sample sigma (scaled from 224 px to the image), as a grouped conv."""
    b, c, hgt, wid = x.shape
    scale = hgt / 224
    sigma = (cfg.blur_sigma[0] + (cfg.blur_sigma[1] - cfg.blur_sigma[0]) * rand(b)) * scale
    radius = max(1, math.ceil(3 * cfg.blur_sigma[1] * scale))
    offsets = torch.arange(-radius, radius + 1, device=x.device).float()
    kernel = torch.exp(-offsets[None] ** 2 / (2 * sigma[:, None].clamp(min=1e-3) ** 2))  # (B, K)
    kernel = kernel / kernel.sum(dim=1, keepdim=True)
    identity = (offsets == 0).float().expand_as(kernel)
    kernel = torch.where((rand(b) < cfg.blur_p)[:, None], kernel, identity)
    kernel = kernel.repeat_interleave(c, dim=0)  # (B*C, K)
    y = x.reshape(1, b * c, hgt, wid)
    y = F.pad(y, (radius, radius, radius, radius), mode="reflect")
    y = F.conv2d(y, kernel.view(b * c, 1, -1, 1), groups=b * c)
    y = F.conv2d(y, kernel.view(b * c, 1, 1, -1), groups=b * c)
    return y.view(b, c, hgt, wid)
