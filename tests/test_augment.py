"""Batched on-device augmentation: shapes, ranges, per-sample parameters, reproducibility."""

import pytest
import torch

from desupcon.images.augment import AugmentConfig, PRESETS, augment, normalize, two_views

MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


def _images(n=16, size=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, size, size), generator=g, dtype=torch.uint8)


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_shapes_and_value_range(preset):
    x = _images()
    v1, v2 = two_views(x, preset, MEAN, STD, torch.Generator().manual_seed(0))
    assert v1.shape == v2.shape == (16, 3, 16, 16) and v1.dtype == torch.float32
    lo, hi = (0 - 0.5) / 0.25, (1 - 0.5) / 0.25  # normalised [0, 1] pixels
    for v in (v1, v2):
        assert torch.isfinite(v).all()
        assert v.min() >= lo - 1e-5 and v.max() <= hi + 1e-5


def test_output_size_can_differ_from_input():
    v = augment(_images(size=32), PRESETS["moco"][0], MEAN, STD, torch.Generator().manual_seed(0), size=24)
    assert v.shape == (16, 3, 24, 24)


def test_no_augmentation_is_plain_normalisation():
    x = _images()
    v = augment(x, PRESETS["none"][0], MEAN, STD, torch.Generator().manual_seed(0))
    torch.testing.assert_close(v, normalize(x, MEAN, STD), atol=1e-5, rtol=0)


def test_samples_in_a_batch_get_different_parameters():
    """The same image repeated across the batch must come out differently per sample."""
    x = _images(n=1).expand(32, -1, -1, -1).contiguous()
    v = augment(x, PRESETS["supcon"][0], MEAN, STD, torch.Generator().manual_seed(0))
    distinct = {tuple(row.flatten()[:64].round(decimals=4).tolist()) for row in v}
    assert len(distinct) > 24


@pytest.mark.parametrize("field", ["hflip_p", "vflip_p", "rot90", "solarize_p", "grayscale_p", "blur_p"])
def test_each_operation_varies_per_sample(field):
    """With only one operation switched on at p=0.5, some samples change and some do not."""
    identity = dict(crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), hflip_p=0.0, jitter_p=0.0, grayscale_p=0.0)
    on = {"rot90": True}.get(field, 0.5)
    cfg = AugmentConfig(**{**identity, field: on})
    x = _images(n=64, size=64)  # blur sigma scales with the image (0.1-2.0 px at 224)
    v = augment(x, cfg, MEAN, STD, torch.Generator().manual_seed(1))
    changed = (v - normalize(x, MEAN, STD)).abs().flatten(1).amax(1) > 1e-3
    assert 0 < int(changed.sum()) < 64


def test_fixed_seed_reproduces_views():
    x = _images()
    a = two_views(x, "moco", MEAN, STD, torch.Generator().manual_seed(7))
    b = two_views(x, "moco", MEAN, STD, torch.Generator().manual_seed(7))
    c = two_views(x, "moco", MEAN, STD, torch.Generator().manual_seed(8))
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert not torch.allclose(a[0], c[0])


def test_two_views_differ():
    v1, v2 = two_views(_images(), "supcon", MEAN, STD, torch.Generator().manual_seed(0))
    assert not torch.allclose(v1, v2)


def test_horizontal_flip_mirrors_the_image():
    cfg = AugmentConfig(crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), hflip_p=1.0, jitter_p=0.0, grayscale_p=0.0)
    x = _images(n=2)
    v = augment(x, cfg, MEAN, STD, torch.Generator().manual_seed(0))
    torch.testing.assert_close(v, normalize(x.flip(-1), MEAN, STD), atol=1e-4, rtol=0)


def test_noise_is_added_in_pixel_space_before_normalisation():
    cfg = AugmentConfig(crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), hflip_p=0.0, jitter_p=0.0, grayscale_p=0.0,
                        noise_std=0.05)
    x = torch.full((64, 3, 16, 16), 128, dtype=torch.uint8)
    pixels = augment(x, cfg, (0.0,) * 3, (1.0,) * 3, torch.Generator().manual_seed(0))
    assert abs(float(pixels.std()) - 0.05) < 0.005


def test_bad_input_is_rejected():
    with pytest.raises(ValueError, match="uint8"):
        augment(torch.rand(2, 3, 8, 8), PRESETS["supcon"][0], MEAN, STD, torch.Generator())
    with pytest.raises(ValueError, match="unknown augmentation preset"):
        two_views(_images(), "nope", MEAN, STD, torch.Generator())
