"""Integration: really train on the embedded digits (smoke profile), cache, evaluate."""

import dataclasses
import json
import re

import pytest
import torch

from desupcon.__main__ import main
from desupcon.analysis.figures import draw_run, figure_paths
from desupcon.core.artefacts import load_checkpoint
from desupcon.core.errors import StaleRunError
from desupcon.core.paths import checkpoint_path, log_path
from desupcon.engine.runs import cached_checkpoint, load_results
from desupcon.methods.distill import registry
from desupcon.methods.distill.registry import student_methods
from desupcon.methods.distill.task import load_model
from desupcon.nn.models import ModelWrapper
from desupcon.study.profiles import PROFILES
from desupcon.study.train import train

SMOKE = PROFILES["smoke"]
pytestmark = pytest.mark.slow


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


def test_undistilled_student_probe_and_cache(trained_home, capsys):
    cfg = SMOKE.student_config("undistilled")
    summary = train(cfg)
    print("undistilled linear probe", summary["mean"]["probe_top1"])
    assert summary["mean"]["probe_top1"] >= 90.0
    for key in ("probe_top5", "knn_top1", "train_acc", "gap", "alignment", "uniformity", "separation_ratio"):
        assert key in summary["mean"]
    assert summary["name"] == cfg.name and summary["group"] == cfg.results_group == "resnet18_digits"
    figures = figure_paths(cfg.name)
    assert not any(path.exists() for path in figures.values())  # training draws nothing
    paths = draw_run(summary)  # the analysis step draws from the saved run
    assert paths == figures and all(path.stat().st_size > 1000 for path in paths.values())
    assert paths["hypersphere"] == trained_home / "plots" / f"{cfg.name}_hypersphere.html"
    assert paths["tsne"] == trained_home / "plots" / f"tsne_{cfg.name}.png"
    capsys.readouterr()
    again = train(cfg)
    assert f"[cache] {cfg.name}: loaded" in capsys.readouterr().out  # loaded, not trained again
    assert again["runs"] == summary["runs"]
    assert load_results(cfg.results_group)[cfg.name]["mean"] == again["mean"]


def test_an_edited_profile_is_a_new_run_beside_the_cached_one(trained_home, monkeypatch):
    """The profile's recipe changed after the runs were cached: the changed configs get new names,
    so nothing cached under the old names is loaded for them, and the old runs stay loadable."""
    train(SMOKE.projection_config())
    cached = SMOKE.teacher_config()
    monkeypatch.setitem(PROFILES, "smoke", dataclasses.replace(SMOKE, teacher_epochs=13))
    changed = PROFILES["smoke"]
    for old, new in ((cached, changed.teacher_config()), (SMOKE.projection_config(), changed.projection_config())):
        assert new.reference_name == old.reference_name and new.name != old.name
        assert cached_checkpoint(new.for_seed(42), new.run_name(42)) is None  # would train anew
        assert cached_checkpoint(old.for_seed(42), old.run_name(42))["complete"]  # the old run is kept
    assert changed.projection_config().teacher.epochs == 13


def test_a_changed_method_default_never_loads_the_old_run_silently(trained_home, monkeypatch):
    """Same name, other config: a field at its (method) default is not in the name, so when the code's
    default changes after a run was cached, the request has the cached name and another config."""
    train(SMOKE.projection_config())
    cached_name = SMOKE.teacher_config().name
    ce = registry.METHODS["ce"]
    monkeypatch.setitem(registry.METHODS, "ce", dataclasses.replace(ce, defaults={**ce.defaults, "proj_dim": 32}))
    teacher = SMOKE.teacher_config().replace(proj_dim=32)
    assert teacher.name == cached_name
    projection = SMOKE.projection_config().replace(teacher=teacher)
    for run in (teacher, projection):  # the projection stops at its teacher
        with pytest.raises(StaleRunError, match=f"{cached_name}.pth .*proj_dim: cached 64 vs requested 32"):
            train(run)


@pytest.mark.parametrize("method,changes", [(m, {}) for m in student_methods()] + [
    ("crd", {"bank_k": 128}), ("lw_supcrd", {"bank_k": 128}), ("lw_supcrd", {"bank_k": 128, "bank_positives": True}),
    ("lw_supcrd", {"positives": "instance"}), ("lw_supcrd", {"adaptive_beta_source": "student"}),
    ("lw_supcrd", {"positive_terms": "pooled"}), ("lw_supcrd", {"bank_k": 128, "bank_literal": True}),
])
def test_every_student_method_trains(trained_home, method, changes):
    cfg = SMOKE.student_config(method, epochs=1, **changes)
    summary = train(cfg, force_retrain=True)
    ckpt = load_checkpoint(checkpoint_path(cfg.name))
    assert ckpt["complete"] and ckpt["epoch"] == 1
    assert torch.isfinite(torch.tensor(ckpt["history"][0]["loss"]))
    assert summary["mean"]["test_acc"] > 20.0  # well above chance (10%) after one epoch
    assert ("bank" in ckpt) == bool(changes.get("bank_k"))
    if cfg.spec.teacher_keys:  # the teacher head adapted, the backbone did not
        teacher = load_model(cfg.teacher)
        assert not torch.equal(ckpt["teacher_head"]["weight"], teacher.head.weight)


def test_changing_one_hyperparameter_retrains_that_run_only(trained_home, capsys):
    base = SMOKE.student_config("lw_supcrd", epochs=1)
    train(base)
    cached = checkpoint_path(base.name).read_bytes()
    by_cli = SMOKE.student_config("lw_supcrd", epochs=1, lr=0.003)
    assert by_cli.reference_name == base.reference_name and len({base.name, by_cli.name}) == 2
    assert base.replace(alpha=2.0).reference_name == "student_alpha_2.0_beta_10.0_temp_0.07_resnet18_digits"
    runs = [(lambda: train(base.replace(alpha=2.0))["name"], base.replace(alpha=2.0).name),
            (lambda: main(["train", "lw_supcrd", "--profile", "smoke", "--set", "epochs=1", "lr=0.003"]) == 0
             and by_cli.name, by_cli.name)]
    for run, name in runs:
        capsys.readouterr()
        assert run() == name
        out = capsys.readouterr().out
        assert f"[cache] {SMOKE.teacher_config().name}: loaded" in out
        assert f"[cache] {SMOKE.projection_config().name}: loaded" in out
        assert re.findall(r"\[done\] (\S+):", out) == [name], out  # that run only, the others cached
    assert checkpoint_path(base.name).read_bytes() == cached  # the recipe's run is kept beside them


def test_several_seeds_report_mean_and_std(trained_home):
    cfg = SMOKE.student_config("undistilled", epochs=1, seeds=(1, 2))
    summary = train(cfg)
    accs = [r["test_acc"] for r in summary["runs"]]
    assert summary["mean"]["test_acc"] == pytest.approx(sum(accs) / 2)
    assert summary["std"]["test_acc"] == pytest.approx(abs(accs[0] - accs[1]) / 2 ** 0.5)
    assert checkpoint_path(f"{cfg.name}_seed1").exists() and checkpoint_path(f"{cfg.name}_seed2").exists()


def test_the_frozen_teacher_stays_frozen_while_its_projection_head_trains(trained_home):
    """Every backbone and classifier tensor of the projection run (BatchNorm statistics included)
    equals the teacher's, so the head the students distil from sits on the teacher as it was trained."""
    teacher = load_checkpoint(checkpoint_path(SMOKE.teacher_config().name))
    projection = load_checkpoint(checkpoint_path(SMOKE.projection_config().name))
    frozen = [k for k in teacher["model"] if k.startswith(("backbone.", "classifier."))]
    assert any(k.endswith("running_mean") for k in frozen) and any(k.endswith("running_var") for k in frozen)
    for key in frozen:
        assert torch.equal(projection["model"][key], teacher["model"][key]), key
    assert not torch.equal(projection["model"]["head.weight"], teacher["model"]["head.weight"])  # the head learned
    assert projection["results"]["head_top1"] == teacher["results"]["test_acc"]  # the same classifier, same score
