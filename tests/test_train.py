"""Integration: really train on the embedded digits (smoke profile), cache, evaluate."""

import dataclasses
import json
import re
import time

import pytest
import torch

from desupcon.__main__ import main
from desupcon.config import STUDENT_METHODS
from desupcon.models import ModelWrapper
from desupcon.profiles import PROFILES
from desupcon.results import load_results
from desupcon.runs import StaleRunError, checkpoint_path, load_checkpoint, log_path
from desupcon.train import load_model, train

SMOKE = PROFILES["smoke"]
pytestmark = pytest.mark.integration


@pytest.fixture
def trained_home(smoke_home, monkeypatch):
    monkeypatch.setenv("DESUPCON_HOME", str(smoke_home))
    return smoke_home


def test_model_wrapper_outputs():
    model = ModelWrapper(10, "resnet18", width=8)
    feats, z, logits = model(torch.randn(4, 3, 16, 16))
    assert feats.shape == (4, 64) and z.shape == (4, 64) and logits.shape == (4, 10)
    torch.testing.assert_close(z.norm(dim=1), torch.ones(4))
    assert isinstance(model.backbone.maxpool, torch.nn.Identity) and model.backbone.conv1.stride == (1, 1)
    with pytest.raises(ValueError, match="unknown architecture 'vgg'"):
        ModelWrapper(10, "vgg")


def test_smoke_teacher_reaches_95_percent(trained_home):
    summary = train(SMOKE.teacher_config())
    print("teacher test acc", summary["mean"]["test_acc"])
    assert summary["mean"]["test_acc"] >= 95.0
    log = json.loads(log_path(SMOKE.teacher_config().name).read_text())
    assert len(log["epochs"]) == SMOKE.teacher_epochs and log["complete"]
    assert set(log["epochs"][0]) == {"epoch", "loss", "train_acc", "lr", "seconds"}
    assert log["epochs"][-1]["loss"] < log["epochs"][0]["loss"]


def test_undistilled_student_probe_and_cache(trained_home):
    cfg = SMOKE.student_config("undistilled")
    summary = train(cfg, plots=True)
    print("undistilled linear probe", summary["mean"]["probe_top1"])
    assert summary["mean"]["probe_top1"] >= 90.0
    for key in ("probe_top5", "knn_top1", "train_acc", "gap", "alignment", "uniformity", "separation_ratio"):
        assert key in summary["mean"]
    assert (trained_home / "plots" / f"{cfg.name}_hypersphere.html").exists()
    assert (trained_home / "plots" / f"tsne_{cfg.name}.png").exists()
    start = time.time()
    again = train(cfg)
    assert time.time() - start < 5 and again["runs"] == summary["runs"]
    assert load_results(cfg.arch, cfg.dataset)[cfg.name]["mean"] == again["mean"]


def test_a_changed_recipe_never_loads_the_old_run_silently(trained_home, monkeypatch):
    """Same name, other config (here: the profile's recipe changed after the runs were cached)."""
    train(SMOKE.projection_config())
    cached_name = SMOKE.teacher_config().name
    monkeypatch.setitem(PROFILES, "smoke", dataclasses.replace(SMOKE, teacher_epochs=13))
    changed = PROFILES["smoke"]
    assert changed.teacher_config().name == cached_name
    for run in (changed.teacher_config(), changed.projection_config()):  # the projection stops at its teacher
        with pytest.raises(StaleRunError, match="teacher_resnet50_digits.pth .*epochs: cached 12 vs requested 13"):
            train(run)


@pytest.mark.parametrize("method,changes", [(m, {}) for m in STUDENT_METHODS] + [
    ("crd", {"bank_k": 128}), ("lw_supcrd", {"bank_k": 128}), ("lw_supcrd", {"bank_k": 128, "bank_positives": False}),
])
def test_every_student_method_trains(trained_home, method, changes):
    cfg = SMOKE.student_config(method, epochs=1, **changes)
    summary = train(cfg, plots=False, force_retrain=True)
    ckpt = load_checkpoint(checkpoint_path(cfg.name))
    assert ckpt["complete"] and ckpt["epoch"] == 1
    assert torch.isfinite(torch.tensor(ckpt["history"][0]["loss"]))
    assert summary["mean"]["test_acc"] > 20.0  # well above chance (10%) after one epoch
    assert ("bank" in ckpt) == bool(changes.get("bank_k"))
    if cfg.uses_teacher and method != "kd":  # the teacher head adapted, the backbone did not
        teacher = load_model(cfg.teacher)
        assert not torch.equal(ckpt["teacher_head"]["weight"], teacher.head.weight)


def test_changing_one_hyperparameter_retrains_that_run_only(trained_home, capsys):
    base = SMOKE.student_config("lw_supcrd", epochs=1)
    train(base, plots=False)
    cached = checkpoint_path(base.name).read_bytes()
    runs = [(lambda: train(base.replace(alpha=2.0), plots=False), base.replace(alpha=2.0).name),
            (lambda: main(["train", "lw_supcrd", "--profile", "smoke", "--set", "epochs=1", "lr=0.003"]),
             f"{base.name}_lr_0.003")]
    for run, name in runs:
        capsys.readouterr()
        run()
        out = capsys.readouterr().out
        assert "[cache] teacher_resnet50_digits: loaded" in out
        assert "[cache] teacher_resnet50_digits_with_projection: loaded" in out
        assert re.findall(r"\[done\] (\S+):", out) == [name], out  # that run only, the others cached
    assert checkpoint_path(base.name).read_bytes() == cached  # the recipe's run is kept beside them


def test_several_seeds_report_mean_and_std(trained_home):
    cfg = SMOKE.student_config("undistilled", epochs=1, seeds=(1, 2))
    summary = train(cfg, plots=False)
    accs = [r["test_acc"] for r in summary["runs"]]
    assert summary["mean"]["test_acc"] == pytest.approx(sum(accs) / 2)
    assert summary["std"]["test_acc"] == pytest.approx(abs(accs[0] - accs[1]) / 2 ** 0.5)
    assert checkpoint_path(f"{cfg.name}_seed1").exists() and checkpoint_path(f"{cfg.name}_seed2").exists()
