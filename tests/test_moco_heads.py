"""MoCo-v3 head layouts (``model.heads``): facebookresearch/moco-v3's and write-up 001_*'s, module by module."""

from pathlib import Path

import pytest
import torch
import torch.nn as nn

from desupcon.core.errors import ConfigError
from desupcon.methods.ssl.base import build_model
from desupcon.methods.ssl.config import load_config
from desupcon.methods.ssl.moco_v3 import head_layout

SMOKE = Path(__file__).resolve().parents[1] / "configs" / "moco_v3_smoke.yaml"
LIN, RELU, BN, BN_NO_AFFINE = "Linear", "ReLU", "BN", "BN(affine=False)"

# Layer by layer, with the BatchNorm affine flag: the tables of head_layout's docstring.
LAYOUTS = {
    ("official", "vit"): {"projector": [LIN, BN, RELU, LIN, BN, RELU, LIN, BN_NO_AFFINE],
                          "predictor": [LIN, BN, RELU, LIN, BN_NO_AFFINE]},
    ("official", "resnet"): {"projector": [LIN, BN, RELU, LIN, BN_NO_AFFINE],
                             "predictor": [LIN, BN, RELU, LIN]},
    ("writeup", "vit"): {"projector": [LIN, BN, RELU, LIN, BN, RELU, LIN, BN],
                         "predictor": [LIN, BN, RELU, LIN, BN]},
    ("writeup", "resnet"): {"projector": [LIN, BN, RELU, LIN, BN, RELU, LIN, BN],
                            "predictor": [LIN, BN, RELU, LIN, BN]},
}
BACKBONES = {"vit": ["model.backbone=vit_small", "model.patch_size=16"], "resnet": ["model.backbone=resnet18"]}


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def model_of(heads, kind, *overrides):
    cfg = load_config(SMOKE, [f"model.heads={heads}", *BACKBONES[kind], *overrides])
    torch.manual_seed(0)
    return build_model(cfg), cfg


def layers(head: nn.Sequential) -> list[str]:
    names = {nn.Linear: LIN, nn.ReLU: RELU}
    return [(BN if m.affine else BN_NO_AFFINE) if isinstance(m, nn.BatchNorm1d) else names[type(m)] for m in head]


@pytest.mark.parametrize("heads,kind", list(LAYOUTS))
def test_head_modules_layer_by_layer(heads, kind):
    model, cfg = model_of(heads, kind)
    m, feature_dim = cfg.model, 384 if kind == "vit" else 32  # ViT-S embed dim; ResNet-18 width 4 x 8
    projector, predictor = model.base_encoder.projector, model.predictor
    assert layers(projector) == LAYOUTS[heads, kind]["projector"]
    assert layers(predictor) == LAYOUTS[heads, kind]["predictor"]
    assert layers(model.momentum_encoder.projector) == layers(projector)
    for head in (projector, predictor):
        assert all(lin.bias is None for lin in head if isinstance(lin, nn.Linear))
    widths = lambda head: [(lin.in_features, lin.out_features) for lin in head if isinstance(lin, nn.Linear)]
    hidden = [(m.proj_hidden, m.proj_hidden)] * (len(widths(projector)) - 2)
    assert widths(projector) == [(feature_dim, m.proj_hidden), *hidden, (m.proj_hidden, m.proj_dim)]
    assert widths(predictor) == [(m.proj_dim, m.pred_hidden), (m.pred_hidden, m.proj_dim)]


def test_a_timm_vit_gets_the_vit_heads():
    model, _ = model_of("official", "resnet", "model.backbone=test_vit")  # timm's tiny ViT, patch 16
    assert layers(model.base_encoder.projector) == LAYOUTS["official", "vit"]["projector"]
    assert layers(model.predictor) == LAYOUTS["official", "vit"]["predictor"]
    assert not any(p.requires_grad for p in model.base_encoder.backbone.patch_embed.proj.parameters())


@pytest.mark.parametrize("heads", ["official", "writeup"])
def test_every_layout_trains(heads):
    model, _ = model_of(heads, "resnet")
    x1, x2 = torch.randn(8, 3, 16, 16), torch.randn(8, 3, 16, 16)
    loss = model(x1, x2, m=0.99)
    loss.backward()
    assert torch.isfinite(loss)
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.predictor.parameters())


def test_an_unknown_layout_is_refused():
    with pytest.raises(ConfigError, match=r"config field 'model.heads' = 'paper': must be one of "
                                          r"\['official', 'writeup'\]"):
        load_config(SMOKE, ["model.heads=paper"])
    with pytest.raises(ValueError, match=r"unknown head layout 'paper': choose one of \['official', 'writeup'\]"):
        head_layout("paper", vit=True)
