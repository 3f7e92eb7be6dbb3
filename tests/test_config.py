"""Config validation in one place: every bad value is refused before work starts, naming the field."""

import re

import pytest

from desupcon.core.config import config_diff
from desupcon.core.errors import ConfigError
from desupcon.engine.evaluate import EvalConfig
from desupcon.methods.distill.config import RunConfig
from desupcon.study.profiles import PROFILES, resolve_profile

SMOKE = PROFILES["smoke"]
STUDENT = SMOKE.student_config("lw_supcrd")

BAD = [  # (changes, words the message must contain)
    (dict(arch="resnet34"), "'arch' = 'resnet34': must be one of ['resnet18', 'resnet50']"),
    (dict(dataset="imagenet"), "'dataset' = 'imagenet'"),
    (dict(method="simclr"), "'method' = 'simclr'"),
    (dict(method="supcon_head"), "'method' = 'supcon_head': a student run uses method 'undistilled' or"),
    (dict(role="critic"), "'role' = 'critic'"),
    (dict(optimizer="lion"), "'optimizer' = 'lion'"),
    (dict(augment="randaugment"), "'augment' = 'randaugment'"),
    (dict(lr=-0.1), "'lr' = -0.1: must be in (0, 10]"),
    (dict(lr=0.0), "'lr' = 0.0: must be in (0, 10]"),
    (dict(lr="1e-3"), "'lr' = '1e-3': must be a finite number"),
    (dict(lr=float("nan")), "'lr' = nan: must be a finite number"),
    (dict(temperature=float("inf")), "'temperature' = inf: must be a finite number"),
    (dict(accum_steps=0), "'accum_steps' = 0: must be >= 1"),
    (dict(schedule="step"), "'schedule' = 'step': must be one of ['cosine', 'constant']"),
    (dict(probe_iterations=0), "'probe_iterations' = 0: must be >= 1"),
    (dict(params=(("margin", 0.3),)), "['margin'] are not hyperparameters of method 'lw_supcrd'"),
    (dict(weight_decay=-1e-4), "'weight_decay' = -0.0001: must be in [0, 1]"),
    (dict(epochs=0), "'epochs' = 0: must be >= 1"),
    (dict(epochs=2.5), "'epochs' = 2.5: must be an int"),
    (dict(batch_size=1), "'batch_size' = 1: must be >= 2"),
    (dict(temperature=0.0), "'temperature' = 0.0: must be in (0, 10]"),
    (dict(temperature=-0.07), "'temperature' = -0.07"),
    (dict(alpha=0.0), "'alpha' = 0.0: must be in (0, 100]"),
    (dict(beta=-1.0), "'beta' = -1.0: must be in [0, 100]"),
    (dict(hybrid_lambda=1.5), "'hybrid_lambda' = 1.5: must be in [0, 1]"),
    (dict(kd_temperature=0.0), "'kd_temperature' = 0.0"),
    (dict(kd_weight=2.0), "'kd_weight' = 2.0"),
    (dict(bank_k=-5), "'bank_k' = -5"),
    (dict(bank_momentum=1.0), "'bank_momentum' = 1.0: must be in [0, 1)"),
    (dict(seeds=()), "'seeds' = (): must be a non-empty tuple"),
    (dict(seeds=(1, 1)), "must not repeat a seed"),
    (dict(warmup_epochs=99), "'warmup_epochs' = 99"),
    (dict(adaptive_beta="yes"), "'adaptive_beta' = 'yes': must be True or False"),
    (dict(width=2), "'width' = 2"),
    (dict(knn_k=0), "'knn_k' = 0"),
    (dict(teacher=None), "'teacher' = None: a student run with method 'lw_supcrd' needs a teacher"),
    (dict(dataset="cifar100"), "'teacher.dataset' = 'digits': must match the run's dataset 'cifar100'"),
    (dict(nonsense=1), "unknown config field(s) ['nonsense']"),
]


@pytest.mark.parametrize("changes,message", BAD, ids=[next(iter(c)) + "=" + repr(c[next(iter(c))]) for c, _ in BAD])
def test_bad_config_is_refused_with_a_message_naming_the_field(changes, message):
    with pytest.raises(ConfigError) as err:
        STUDENT.replace(**changes)
    assert message in str(err.value)
    assert len(str(err.value).splitlines()) == 1


def test_bank_only_for_methods_that_use_one():
    with pytest.raises(ConfigError, match="'bank_k' = 64: a memory bank is used only by crd, lw_supcrd, hybrid students; set bank_k=0"):
        SMOKE.student_config("supcon", bank_k=64)


def test_combinations_against_the_data_and_world_size():
    with pytest.raises(ConfigError, match="bank_k \\+ batch_size must be <= the 1437 training images"):
        STUDENT.replace(bank_k=1400).validate(num_train=1437)
    with pytest.raises(ConfigError, match="'batch_size' = 64: must be divisible by the world size 3"):
        STUDENT.validate(world_size=3)
    with pytest.raises(ConfigError, match="exceeds the 50 training images"):
        STUDENT.validate(num_train=50)


def test_unknown_profile_names_the_variable_and_choices(monkeypatch):
    monkeypatch.setenv("DESUPCON_PROFILE", "huge")
    with pytest.raises(ConfigError, match="unknown profile 'huge' \\(from the DESUPCON_PROFILE\\): choose one of"):
        resolve_profile()
    with pytest.raises(ConfigError, match="unknown profile 'tiny' \\(from the argument\\): choose one of"):
        resolve_profile("tiny")


def test_auto_profile_picks_smoke_without_cuda(monkeypatch):
    monkeypatch.delenv("DESUPCON_PROFILE", raising=False)
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    profile, reason = resolve_profile()
    assert profile.name == "smoke" and "no CUDA" in reason


def test_names_are_human_readable_and_follow_the_seed():
    cifar = PROFILES["cifar100"]
    assert cifar.student_config("lw_supcrd").name == "student_alpha_1.0_beta_10.0_temp_0.07_resnet18_cifar100"
    assert cifar.teacher_config().name == "teacher_resnet50_cifar100"
    assert cifar.projection_config().name == "teacher_resnet50_cifar100_with_projection"
    assert cifar.student_config("crd", recipe="bank_ablation", bank_k=4096).name == \
        "student_baseline_crd_bank4096_resnet18_cifar100"
    assert cifar.student_config("supcon").name == "student_baseline_supcon_resnet18_cifar100"  # the write-ups' file


def _hashed(cfg) -> str:
    """The 8-hex hash after ``reference_name`` in ``cfg.name`` (which must have one)."""
    assert re.fullmatch(re.escape(cfg.reference_name) + r"_[0-9a-f]{8}", cfg.name), cfg.name
    return cfg.name[len(cfg.reference_name) + 1:]


def test_names_spell_out_the_named_hyperparameters_and_hash_the_rest():
    smoke = PROFILES["smoke"]
    recipe = smoke.student_config("undistilled")
    assert recipe.reference_name == "student_undistilled_resnet18_digits"
    _hashed(recipe)  # the smoke recipe differs from the write-ups' defaults (width, epochs, ...)
    changed = smoke.student_config("undistilled", lr=3e-3, epochs=4)
    assert changed.reference_name == recipe.reference_name and _hashed(changed) != _hashed(recipe)
    assert smoke.student_config("undistilled", lr=3e-3, epochs=4).name == changed.name  # equal configs, equal names
    assert smoke.student_config("undistilled", lr=smoke.student_lr).name == recipe.name
    assert smoke.student_config("undistilled", lr=3e-3).name not in (recipe.name, changed.name)
    lw = smoke.student_config("lw_supcrd", alpha=2.0, epochs=1)
    assert lw.reference_name == "student_alpha_2.0_beta_10.0_temp_0.07_resnet18_digits"  # alpha is named
    assert "alpha" not in lw.unnamed_changes() and lw.unnamed_changes()["epochs"] == 1
    kd = smoke.student_config("kd", temperature=0.5)
    assert kd.reference_name == smoke.student_config("kd").reference_name == \
        "student_baseline_kd_T_4.0_resnet18_digits"  # KD's name does not spell tau: it is hashed
    assert kd.unnamed_changes()["temperature"] == 0.5 and kd.name != smoke.student_config("kd").name
    teacher = smoke.teacher_config().replace(epochs=3)
    assert teacher.reference_name == "teacher_resnet50_digits" and teacher.name != smoke.teacher_config().name
    projection = smoke.projection_config().replace(teacher=teacher)
    assert projection.reference_name == "teacher_resnet50_digits_with_projection"
    assert projection.unnamed_changes()["teacher"] == teacher.name  # a changed teacher renames its students
    assert projection.name != smoke.projection_config().name
    crd = smoke.student_config("crd", teacher=projection)
    assert crd.reference_name == "student_baseline_crd_resnet18_digits"
    assert crd.unnamed_changes()["teacher"] == projection.name and crd.name != smoke.student_config("crd").name
    assert smoke.student_config("lw_supcrd", seeds=(1, 2)).name == smoke.student_config("lw_supcrd").name
    assert smoke.student_config("lw_supcrd", epochs=1).reference_name == smoke.student_config("lw_supcrd").reference_name
    assert smoke.teacher_config().name == "teacher_resnet50_digits_a9103fa1"  # stable across sessions (API.md)


def test_run_names_follow_the_seed():
    cfg = SMOKE.student_config("undistilled", seeds=(42, 7))
    assert cfg.run_name(42) == cfg.name and cfg.run_name(7) == f"{cfg.name}_seed7"
    assert cfg.for_seed(7).seeds == (7,) and cfg.for_seed(7).name == cfg.name


def test_round_trip_and_diff_name_nested_fields():
    d = STUDENT.to_dict()
    assert RunConfig.from_dict(d) == STUDENT
    changed = STUDENT.replace(lr=0.5, teacher=STUDENT.teacher.replace(epochs=9))
    assert set(config_diff(d, changed.to_dict())) == {"lr", "teacher.epochs"}
    assert changed.diff(d) == {"lr": (STUDENT.lr, 0.5), "teacher.epochs": (STUDENT.teacher.epochs, 9)}
    assert STUDENT.diff(d) == {}


def test_overrides_are_typed():
    changed = STUDENT.override(["alpha=2", "adaptive_beta=false", "seeds=1,2", "arch=resnet50"])
    assert (changed.alpha, changed.adaptive_beta, changed.seeds, changed.arch) == (2.0, False, (1, 2), "resnet50")
    with pytest.raises(ConfigError, match="override 'lr=x': 'lr' must be a finite number, got 'x'"):
        STUDENT.override(["lr=x"])
    with pytest.raises(ConfigError, match="override 'teacher=foo': 'teacher' is a section; set one of its keys"):
        STUDENT.override(["teacher=foo"])
    with pytest.raises(ConfigError, match="override 'lr': expected KEY=VALUE with KEY one of \\['role'"):
        STUDENT.override(["lr"])
    with pytest.raises(ConfigError, match="override 'nope=1': unknown key 'nope'; valid keys: "):
        STUDENT.override(["nope=1"])


def test_override_reaches_nested_teachers_and_validates():
    cfg = STUDENT.override(["alpha=2", "teacher.epochs=5", "teacher.teacher.epochs=2"])
    assert (cfg.alpha, cfg.teacher.epochs, cfg.teacher.teacher.epochs) == (2.0, 5, 2)
    assert cfg.teacher.teacher.lr == STUDENT.teacher.teacher.lr  # nothing else changed
    with pytest.raises(ConfigError, match=re.escape("config field 'teacher.teacher.lr' = -1.0: must be in (0, 10]")):
        STUDENT.override(["teacher.teacher.lr=-1"])
    with pytest.raises(ConfigError, match=re.escape("config field 'lr' = -0.5: must be in (0, 10]")):
        STUDENT.override(["lr=-0.5"])
    with pytest.raises(ConfigError, match="'lr' has no sub-keys"):
        STUDENT.override(["lr.x=1"])


def test_evaluation_recipe_and_results_group_come_from_the_config():
    cfg = SMOKE.student_config("lw_supcrd", epochs=3, accum_steps=2, schedule="constant")
    assert cfg.evaluation == EvalConfig(knn_k=SMOKE.knn_k, probe_iterations=SMOKE.probe_iterations)
    recipe = cfg.recipe
    assert (recipe.epochs, recipe.batch_size, recipe.accum_steps, recipe.schedule, recipe.lr, recipe.seed) == \
        (3, SMOKE.batch_size, 2, "constant", SMOKE.student_lr, 42)
    assert cfg.results_group == "resnet18_digits" and SMOKE.teacher_config().results_group == "resnet50_digits"
    assert RunConfig().probe_iterations == 100
    assert cfg.views_preset == "supcon" and SMOKE.student_config("kd").views_preset == "standard"
    assert cfg.replace(augment="moco").views_preset == "moco"


def test_each_reading_of_the_write_ups_is_a_switch_with_its_own_run_name():
    cifar = PROFILES["cifar100"]
    stem = "student_alpha_1.0_beta_10.0_temp_0.07"
    readings = {"adaptive_beta_source": ("student", "_studentbeta", ", student p"),
                "positives": ("instance", "_instancepos", ", instance pos."),
                "positive_terms": ("pooled", "_pooledpos", ", pooled pos.")}
    for field, (value, suffix, label) in readings.items():
        cfg = cifar.student_config("lw_supcrd", **{field: value})
        assert cfg.name == f"{stem}{suffix}_resnet18_cifar100" and cfg.label.endswith(label)
        with pytest.raises(ConfigError, match=f"'{field}' = '{value}': is read only by lw_supcrd, hybrid students"):
            cifar.student_config("crd", **{field: value})


def test_the_literal_bank_is_a_named_switch_of_runs_with_a_bank():
    cifar = PROFILES["cifar100"]
    cfg = cifar.student_config("lw_supcrd", recipe="bank_ablation", bank_k=4096, bank_literal=True)
    assert cfg.name == "student_lwsupcrd_bank4096_banklit_resnet18_cifar100"
    assert cfg.label.endswith(", literal bank (ablation)")
    with pytest.raises(ConfigError, match="'bank_literal' = True: is a reading of the memory bank"):
        cifar.student_config("lw_supcrd", bank_literal=True)


def test_a_field_added_since_a_run_was_saved_counts_as_its_default():
    stored = STUDENT.to_dict()
    del stored["positive_terms"], stored["teacher"]["bank_literal"]  # as saved before those fields existed
    assert STUDENT.diff(stored) == {}
    assert STUDENT.replace(positive_terms="pooled").diff(stored) == {"positive_terms": ("each", "pooled")}
