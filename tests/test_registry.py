"""The method registry: a new method is a few lines; the built-in records agree with the configs, the
profiles and the CLI; run names are the write-ups' for their recipe and never depend on a profile."""

import dataclasses
import math
import re
import shutil

import pytest
import torch
import torch.nn.functional as F

from desupcon.__main__ import main
from desupcon.analysis.reference_results import REFERENCE_RESULTS
from desupcon.core.artefacts import load_checkpoint
from desupcon.core.errors import ConfigError
from desupcon.core.paths import checkpoint_path
from desupcon.images.augment import PRESETS
from desupcon.images.datasets import Data
from desupcon.engine.evaluate import embed, evaluate_encoder
from desupcon.engine.runs import load_results
from desupcon.engine.task import TASKS, task_for
from desupcon.methods.distill.config import RunConfig
from desupcon.methods.distill.registry import METHODS, Method, Param, method_of, register, runnable, student_methods
from desupcon.methods.distill.task import load_model
from desupcon.nn.models import build_model
from desupcon.study.profiles import PROFILES
from desupcon.study.train import train

SMOKE = PROFILES["smoke"]
CIFAR = PROFILES["cifar100"]
BUILT_IN = {"ce": "teacher", "supcon_head": "projection", "undistilled": "student", "supcon": "student",
            "crd": "student", "kd": "student", "lw_supcrd": "student", "hybrid": "student"}


# ---- (a) a method of one's own ----

def _margin_loss(out):  # out: desupcon.methods.distill.task.StepOutputs
    """Hinge: the cosine of each student projection to its own teacher key must exceed its mean cosine
    to the other keys by ``margin`` (without the other keys, student and key head collapse together)."""
    sim = out.student_z @ out.teacher_keys.T  # (B, K)
    own = sim[:, :out.n].diagonal()  # (B,) key i is the positive of anchor i
    others = (sim.sum(dim=1) - own) / (sim.shape[1] - 1)  # (B,)
    return torch.relu(out.cfg.param("margin") - (own - others)).mean()


@pytest.fixture
def margin():
    """A toy student, registered for one test: a hinge on the cosine to the teacher's key."""
    assert "margin" not in METHODS
    method = register(Method("margin", role="student", loss=_margin_loss, teacher_keys=True, trains_head=True,
                             probe_head=True, params={"margin": Param(0.5, "in (0, 2]", lambda v: 0 < v <= 2)},
                             stem=lambda cfg: f"student_margin_{cfg.param('margin')}"))
    yield method
    METHODS.pop("margin")


def test_a_registered_method_is_a_run_of_every_entry_point(margin):
    assert "margin" in student_methods() and runnable()[-1] == "margin"
    cfg = SMOKE.student_config("margin")
    assert SMOKE.recipe("margin") == cfg and cfg.spec is margin and method_of(cfg) is margin
    assert cfg.param("margin") == 0.5 and cfg.params == ()  # the declared default
    assert cfg.reference_name == "student_margin_0.5_resnet18_digits"
    assert cfg.teacher == SMOKE.projection_config() and cfg.uses_teacher  # teacher_keys: it needs the teacher
    assert RunConfig(method="margin", teacher=SMOKE.projection_config().replace(dataset="cifar100",
                                                                                teacher=CIFAR.teacher_config())
                     ).validate().method == "margin"  # a choice of the config's method field


def test_its_hyperparameter_is_set_like_a_field_and_checked_by_its_declaration(margin, capsys):
    cfg = SMOKE.student_config("margin")
    changed = cfg.override(["margin=0.3"])
    assert changed.param("margin") == 0.3 and changed.params == (("margin", 0.3),)
    assert changed == SMOKE.student_config("margin", margin=0.3)  # the profile's keyword takes it too
    assert changed.reference_name == "student_margin_0.3_resnet18_digits" and changed.name != cfg.name
    assert changed.override(["margin=0.5"]).param("margin") == 0.5
    assert RunConfig.from_dict(changed.to_dict()) == changed  # stored in checkpoints and logs
    assert changed.diff(cfg.to_dict()) == {"params": ((), (("margin", 0.3),))}
    with pytest.raises(ConfigError, match=r"^config field 'margin' = 5\.0: must be in \(0, 2\]$"):
        cfg.override(["margin=5"])
    with pytest.raises(ConfigError, match=r"^config field 'margin' = -0\.1: must be in \(0, 2\]$"):
        SMOKE.student_config("margin", margin=-0.1)
    with pytest.raises(ConfigError, match="override 'margin=wide': 'margin' must be a finite number"):
        cfg.override(["margin=wide"])
    with pytest.raises(ConfigError, match="override 'margin=0.3': unknown key 'margin'"):
        SMOKE.student_config("crd").override(["margin=0.3"])  # only the method that declares it has it
    with pytest.raises(ConfigError, match=r"\['margin'\] are not hyperparameters of method 'crd'"):
        SMOKE.student_config("crd").replace(params=(("margin", 0.3),))
    assert main(["train", "margin", "--profile", "smoke", "--set", "margin=3"]) == 2  # refused before training
    err = capsys.readouterr().err.strip()
    assert err == "error: config field 'margin' = 3.0: must be in (0, 2]"


def _copy_teachers(src, dst):
    """The session's trained smoke teacher and projection head, under this test's output root."""
    for cfg in (SMOKE.teacher_config(), SMOKE.projection_config()):
        for folder in ("pth_models", "json_results/training_logs"):
            name = f"{cfg.name}.pth" if folder == "pth_models" else f"{cfg.name}.json"
            (dst / folder).mkdir(parents=True, exist_ok=True)
            shutil.copy(src / folder / name, dst / folder / name)


@pytest.mark.slow
def test_a_registered_method_trains_end_to_end(margin, smoke_home, home, capsys):
    _copy_teachers(smoke_home, home)  # its own output root: the session's home never holds a 'margin' run
    cfg = SMOKE.student_config("margin", epochs=2, margin=1.0)
    summary = train(cfg)
    out = capsys.readouterr().out
    assert f"[cache] {SMOKE.projection_config().name}: loaded" in out  # it distilled from the session's teacher
    assert re.findall(r"\[done\] (\S+):", out) == [cfg.name]
    ckpt = load_checkpoint(checkpoint_path(cfg.name))
    assert ckpt["complete"] and ckpt["epoch"] == 2 and ckpt["config"] == cfg.to_dict()
    losses = [h["loss"] for h in ckpt["history"]]
    assert all(math.isfinite(v) for v in losses) and losses[-1] < losses[0]
    teacher = load_model(cfg.teacher)
    assert not torch.equal(ckpt["teacher_head"]["weight"], teacher.head.weight)  # the key head trained with it
    assert load_results(cfg.results_group)[cfg.name]["method"] == "margin"

    # What a no-op (an untrained network of the same architecture and seed) does not do: tell each
    # test image's teacher key from the others', and spread the projections over the sphere.
    data = Data.load(cfg.dataset, "cpu")
    test = data.test
    torch.manual_seed(cfg.seed)
    untrained = build_model(cfg, test.num_classes).eval()
    head = torch.nn.Linear(teacher.head.in_features, teacher.head.out_features).requires_grad_(False)
    head.load_state_dict(ckpt["teacher_head"])
    keys = F.normalize(head(embed(teacher, test.images, test.mean, test.std)[0]), dim=1)  # (N, P)

    def key_gap(model):  # mean cosine to its own teacher key minus mean cosine to the other images' keys
        sim = embed(model, test.images, test.mean, test.std)[1] @ keys.T  # (N, N)
        own = sim.diagonal()
        return float((own - (sim.sum(dim=1) - own) / (len(own) - 1)).mean())

    baseline = evaluate_encoder(untrained, data, cfg.evaluation, cfg.seed)
    mean = summary["mean"]
    print(f"margin student vs untrained: key gap {key_gap(load_model(cfg)):.3f} vs {key_gap(untrained):.3f}, "
          f"uniformity {mean['uniformity']:.2f} vs {baseline['uniformity']:.2f}, "
          f"linear probe {mean['probe_top1']:.1f}% vs {baseline['probe_top1']:.1f}%")
    assert key_gap(load_model(cfg)) > key_gap(untrained) + 0.3
    assert mean["uniformity"] < baseline["uniformity"] - 0.5
    # Its features still classify (2 epochs of this toy loss do not beat an untrained network's
    # probe on digits, which is already high, so the probe is checked against chance only).
    assert math.isfinite(mean["probe_top1"]) and mean["probe_top1"] > 5 * 100 / test.num_classes


# ---- (b) the built-in records ----

def test_the_built_in_records():
    assert BUILT_IN.items() <= {name: m.role for name, m in METHODS.items()}.items()  # and any added since
    assert runnable() == ["teacher", "projection", *student_methods()]
    assert student_methods() == [name for name, m in METHODS.items() if m.role == "student"]
    fields = {f.name for f in dataclasses.fields(RunConfig)}
    for name, m in METHODS.items():
        assert m.name == name and m.augment in PRESETS, name
        assert set(m.defaults) <= fields, name
        assert (m.loss is None) == (m.role == "pretrain"), name
        if m.uses_bank:
            assert m.teacher_keys, f"{name}: the bank holds teacher keys"
        if m.probe_head or m.teacher_keys:
            assert m.trains_head, f"{name}: its projection space is what it learns"
    assert SMOKE.recipe("teacher").spec.role == "teacher" and SMOKE.recipe("projection").spec.role == "projection"


@pytest.mark.parametrize("method", student_methods())
def test_each_student_method_gets_what_its_record_asks_for(method):
    m = METHODS[method]
    cfg = SMOKE.recipe(method)
    assert cfg.method == method and cfg.role == "student" and cfg.spec is m
    assert cfg.teacher == (SMOKE.projection_config() if m.needs_teacher else None)
    assert cfg.uses_teacher == m.needs_teacher
    assert cfg.views_preset == m.augment
    if m.uses_bank:
        assert SMOKE.student_config(method, bank_k=64).bank_k == 64
    else:
        with pytest.raises(ConfigError, match="a memory bank is used only by crd, lw_supcrd, hybrid students"):
            SMOKE.student_config(method, bank_k=64)
    switches = {"positives": "instance", "adaptive_beta_source": "student", "positive_terms": "pooled"}  # non-default
    for field in m.hyperparameters:  # the name spells each named hyperparameter
        value = getattr(cfg, field)
        other = cfg.replace(**{field: switches[field] if field in switches else
                               (not value) if isinstance(value, bool) else value / 2})
        assert other.reference_name != cfg.reference_name and field not in other.unnamed_changes(), field
    hashed = "kd_weight" if m.name != "kd" else "alpha"
    assert cfg.replace(**{hashed: 0.25}).reference_name == cfg.reference_name  # what is not named is hashed
    assert cfg.replace(**{hashed: 0.25}).name != cfg.name


def test_the_registry_drives_the_config_choices(margin):
    with pytest.raises(ConfigError) as err:
        RunConfig(method="simclr").validate()
    assert str(err.value) == f"config field 'method' = 'simclr': must be one of {list(METHODS)}"
    assert "'margin'" in str(err.value)  # a registered method is a choice at once
    with pytest.raises(ConfigError, match="a teacher run uses method 'ce'$"):
        SMOKE.teacher_config().replace(method="undistilled")
    with pytest.raises(ConfigError, match="a projection run uses method 'supcon_head'$"):
        SMOKE.projection_config().replace(method="supcon")
    with pytest.raises(ConfigError, match="a student run uses method 'undistilled' or 'supcon' or .*'margin'$"):
        SMOKE.student_config("undistilled").replace(method="ce")
    with pytest.raises(KeyError, match="unknown method 'simclr'"):
        method_of(dataclasses.replace(RunConfig(), method="simclr"))
    moco = SMOKE.moco_config()  # a self-supervised run is a task of its own, not a distillation method
    assert "moco_v3" not in METHODS and task_for(moco) is TASKS["moco_v3"] and moco.role == "pretrain"


def test_register_refuses_an_incomplete_record():
    with pytest.raises(ValueError, match="method 'x': role must be one of"):
        register(Method("x", role="critic", loss=_margin_loss))
    with pytest.raises(ValueError, match="method 'x': a student method needs a loss"):
        register(Method("x", role="student"))
    assert "x" not in METHODS


# ---- (c) names ----

def test_the_cifar100_recipe_has_the_write_ups_names():
    """Every run of the reference results, built from the cifar100 profile, has exactly its name (no hash)."""
    configs = [CIFAR.teacher_config(), CIFAR.projection_config(), CIFAR.student_config("undistilled"),
               CIFAR.student_config("supcon"), CIFAR.student_config("crd")]
    configs += [CIFAR.student_config("lw_supcrd", **change) for change in (
        {}, dict(alpha=2.0), dict(alpha=5.0), dict(alpha=10.0), dict(beta=1.0),
        dict(beta=5.0), dict(beta=12.0), dict(temperature=0.05))]
    configs += [CIFAR.student_config("hybrid", hybrid_lambda=lam) for lam in CIFAR.hybrid_lambdas]
    configs += [CIFAR.student_config(m, recipe="bank_ablation", bank_k=k) for m in ("crd", "lw_supcrd")
                for k in (0, CIFAR.bank_k)]
    for cfg in configs:
        assert cfg.unnamed_changes() == {} and cfg.name == cfg.reference_name, cfg.name
    assert sorted(cfg.name for cfg in configs) == sorted(REFERENCE_RESULTS)
    assert CIFAR.student_config("lw_supcrd").name == "student_alpha_1.0_beta_10.0_temp_0.07_resnet18_cifar100"
    assert CIFAR.teacher_config().name == "teacher_resnet50_cifar100"
    assert CIFAR.projection_config().name == "teacher_resnet50_cifar100_with_projection"
    ablation = lambda method, **kw: CIFAR.student_config(method, recipe="bank_ablation", **kw).name
    assert ablation("crd", bank_k=4096) == "student_baseline_crd_bank4096_resnet18_cifar100"
    assert ablation("lw_supcrd", bank_k=0) == "student_lwsupcrd_nobank_resnet18_cifar100"
    assert ablation("lw_supcrd", bank_k=4096, bank_positives=True) == \
        "student_lwsupcrd_bank4096_bankpos_resnet18_cifar100"
    # the ablation's stem does not spell alpha, beta, tau: a changed one is hashed into the name
    assert ablation("lw_supcrd", bank_k=4096, alpha=2.0).startswith("student_lwsupcrd_bank4096_resnet18_cifar100_")
    assert CIFAR.student_config("lw_supcrd", bank_k=4096).name == \
        "student_alpha_1.0_beta_10.0_temp_0.07_bank4096_resnet18_cifar100"  # a bank under the sweep recipe


def test_a_name_is_the_config_s_alone_and_never_the_profile_s(monkeypatch):
    cfg = SMOKE.student_config("lw_supcrd")
    name, teacher_name = cfg.name, cfg.teacher.name
    assert re.fullmatch(re.escape(cfg.reference_name) + "_[0-9a-f]{8}", name), name
    assert cfg.reference_name == "student_alpha_1.0_beta_10.0_temp_0.07_resnet18_digits"
    monkeypatch.setitem(PROFILES, "smoke", dataclasses.replace(SMOKE, student_epochs=SMOKE.student_epochs + 5,
                                                               teacher_epochs=SMOKE.teacher_epochs + 1,
                                                               alphas=(3.0,)))
    edited = PROFILES["smoke"]
    assert cfg.name == name and cfg.teacher.name == teacher_name  # the same config keeps its name
    assert edited.student_config("lw_supcrd").name != name  # the edited recipe is another run
    assert edited.student_config("lw_supcrd", epochs=SMOKE.student_epochs,
                                 teacher=SMOKE.projection_config()).name == name  # an equal config: an equal name
    assert cfg.replace(lr=cfg.lr * 2).name != name and cfg.replace(lr=cfg.lr * 2).reference_name == cfg.reference_name
    assert cfg.replace(lr=cfg.lr * 2).name == cfg.replace(lr=cfg.lr * 2).name
    assert cfg.replace(seeds=(1, 2)).name == name  # seeds name the files of runs (run_name), not the config


@pytest.mark.parametrize("source", ["teacher", "student"])
def test_lw_supcrd_reads_the_adaptive_beta_probability_and_positives_from_its_config(source):
    from desupcon.methods.distill.task import StepOutputs
    from desupcon.nn.losses import lw_supcrd_loss

    gen = torch.Generator().manual_seed(0)
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    z_s, keys = (torch.nn.functional.normalize(torch.randn(6, 8, generator=gen), dim=1) for _ in range(2))
    student_logits, teacher_logits = torch.randn(6, 3, generator=gen), torch.randn(6, 3, generator=gen)
    cfg = SMOKE.student_config("lw_supcrd", adaptive_beta_source=source, positives="instance")
    out = StepOutputs(cfg, y, student_logits, z_s, teacher_logits=teacher_logits, teacher_keys=keys, key_labels=y,
                      in_batch_keys=6)
    owner = student_logits if source == "student" else teacher_logits
    q = owner.softmax(dim=1).gather(1, y[:, None]).squeeze(1)
    expected = lw_supcrd_loss(z_s, y, keys, y, teacher_logits.softmax(dim=1), target_probs=q, positives="instance",
                              in_batch_keys=6)
    assert METHODS["lw_supcrd"].loss(out).item() == pytest.approx(expected.item(), rel=1e-6)
    other = lw_supcrd_loss(z_s, y, keys, y, teacher_logits.softmax(dim=1), in_batch_keys=6)  # class positives
    assert expected.item() != pytest.approx(other.item(), rel=1e-3)


@pytest.mark.parametrize("method,field,value", [("supcon", "positives", "instance"),
                                                ("crd", "adaptive_beta_source", "student"),
                                                ("crd", "bank_positives", True), ("lw_supcrd", "bank_positives", True)])
def test_lw_supcrd_switches_are_refused_where_nothing_reads_them(method, field, value):
    with pytest.raises(ConfigError, match=f"config field '{field}'"):
        SMOKE.student_config(method, **{field: value})


def test_a_cross_entropy_only_run_measures_its_geometry_on_features_never_on_its_random_head():
    """Teacher, undistilled and KD runs never train their projection head: re-drawing that head must not
    change their alignment or uniformity, while a contrastive run's metrics live in its head's space."""
    assert [SMOKE.recipe(run).head_is_trained for run in ("teacher", "projection", "undistilled", "kd", "supcon")] == \
        [False, True, False, False, True]
    data = Data.load("digits", "cpu")
    cfg = SMOKE.teacher_config()
    torch.manual_seed(0)
    model = build_model(cfg, data.train.num_classes)
    metrics = lambda trained: {k: v for k, v in evaluate_encoder(model, data, cfg.evaluation, cfg.seed,
                                                                 trained_head=trained).items()
                               if k in ("alignment", "uniformity", "separation_ratio", "metric_space")}
    before = metrics(False)
    torch.nn.init.normal_(model.head.weight)  # another random head
    assert metrics(False) == before and before["metric_space"] == "features"
    in_head = metrics(True)
    torch.nn.init.normal_(model.head.weight)
    assert in_head["metric_space"] == "projection" and metrics(True)["uniformity"] != in_head["uniformity"]
