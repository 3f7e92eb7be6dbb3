"""FitNets (desupcon/methods/distill/fitnets.py): the hint loss against its formula, the connector's life
cycle, and a smoke student that trains end to end against an untrained network."""

import pytest
import torch
import torch.nn as nn

from desupcon.core.artefacts import load_checkpoint
from desupcon.core.errors import ConfigError
from desupcon.core.paths import checkpoint_path
from desupcon.images.datasets import Data
from desupcon.engine.evaluate import evaluate_encoder
from desupcon.methods.distill.fitnets import hint_loss
from desupcon.methods.distill.registry import METHODS, runnable
from desupcon.nn.models import build_model
from desupcon.study.profiles import PROFILES
from desupcon.study.train import train

SMOKE = PROFILES["smoke"]


def test_hint_loss_is_the_mean_squared_distance_through_the_connector():
    torch.manual_seed(0)
    f_s, h, connector = torch.randn(4, 3), torch.randn(4, 5), nn.Linear(3, 5)
    mapped = connector(f_s)
    loop = sum((mapped[i, j] - h[i, j]) ** 2 for i in range(4) for j in range(5)) / 20
    assert hint_loss(f_s, h, connector).item() == pytest.approx(loop.item(), rel=1e-6)
    hint_loss(f_s, h, connector).backward()
    assert connector.weight.grad is not None and connector.weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match=r"must be 2-D with one B, got \(4, 3\) and \(2, 5\)"):
        hint_loss(f_s, h[:2], connector)


def test_fitnets_is_a_student_of_the_registry_with_its_own_hyperparameter():
    assert "fitnets" in runnable() and METHODS["fitnets"].modules is not None
    cfg = SMOKE.student_config("fitnets", hint_weight=2.0)
    assert cfg.param("hint_weight") == 2.0 and cfg.label == "FitNets λ=2"
    assert cfg.reference_name == "student_fitnets_hint_2.0_resnet18_digits"
    with pytest.raises(ConfigError, match="hint_weight"):
        SMOKE.student_config("fitnets", hint_weight=0.0)


@pytest.mark.slow
def test_fitnets_trains_its_connector_and_beats_an_untrained_network(smoke_home, monkeypatch):
    monkeypatch.setenv("DESUPCON_HOME", str(smoke_home))
    cfg = SMOKE.student_config("fitnets")
    summary = train(cfg)
    ckpt = load_checkpoint(checkpoint_path(cfg.name))
    data = Data.load(cfg.dataset, "cpu")
    classes = data.train.num_classes
    student_dim = build_model(cfg, classes).classifier.in_features
    teacher_dim = build_model(cfg.teacher, classes).classifier.in_features
    assert ckpt["own_modules"]["connector.weight"].shape == (teacher_dim, student_dim)  # saved with the student
    torch.manual_seed(0)
    untrained = evaluate_encoder(build_model(cfg, data.train.num_classes), data, cfg.evaluation, cfg.seed,
                                 trained_head=False)
    mean = summary["mean"]
    # an untrained ResNet's features already reach ~94% linear probe on digits: FitNets must at least
    # halve its error, and its k-NN must beat the untrained network's
    assert 100 - mean["probe_top1"] < 0.5 * (100 - untrained["probe_top1"]), (mean, untrained)
    assert mean["knn_top1"] > untrained["knn_top1"], (mean, untrained)
