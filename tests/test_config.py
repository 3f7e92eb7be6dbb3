"""Config validation in one place: every bad value is refused before work starts, naming the field."""

import pytest

from desupcon.config import ConfigError, RunConfig, config_diff, parse_overrides, validate
from desupcon.profiles import PROFILES, resolve_profile

SMOKE = PROFILES["smoke"]
STUDENT = SMOKE.student_config("lw_supcrd")

BAD = [  # (changes, words the message must contain)
    (dict(arch="resnet34"), "'arch' = 'resnet34': must be one of"),
    (dict(dataset="imagenet"), "'dataset' = 'imagenet'"),
    (dict(method="simclr"), "'method' = 'simclr'"),
    (dict(role="critic"), "'role' = 'critic'"),
    (dict(optimizer="lion"), "'optimizer' = 'lion'"),
    (dict(augment="randaugment"), "'augment' = 'randaugment'"),
    (dict(lr=-0.1), "'lr' = -0.1: must be > 0"),
    (dict(lr=0.0), "'lr' = 0.0: must be > 0"),
    (dict(lr="1e-3"), "'lr' = '1e-3': must be a number"),
    (dict(weight_decay=-1e-4), "'weight_decay' = -0.0001: must be >= 0"),
    (dict(epochs=0), "'epochs' = 0: must be >= 1"),
    (dict(epochs=2.5), "'epochs' = 2.5: must be an int"),
    (dict(batch_size=1), "'batch_size' = 1: must be >= 2"),
    (dict(temperature=0.0), "'temperature' = 0.0: must be > 0"),
    (dict(temperature=-0.07), "'temperature' = -0.07"),
    (dict(alpha=0.0), "'alpha' = 0.0: must be > 0"),
    (dict(beta=-1.0), "'beta' = -1.0: must be >= 0"),
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
    with pytest.raises(ConfigError, match="memory bank is used only by crd, lw_supcrd and hybrid"):
        SMOKE.student_config("supcon", bank_k=64)


def test_combinations_against_the_data_and_world_size():
    with pytest.raises(ConfigError, match="bank_k \\+ batch_size must be <= the 1437 training images"):
        validate(STUDENT.replace(bank_k=1400), num_train=1437)
    with pytest.raises(ConfigError, match="'batch_size' = 64: must be divisible by the world size 3"):
        validate(STUDENT, world_size=3)
    with pytest.raises(ConfigError, match="exceeds the 50 training images"):
        validate(STUDENT, num_train=50)


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
    assert cifar.student_config("crd", bank_k=4096).name == "student_baseline_crd_temp_0.07_bank4096_resnet18_cifar100"


def test_names_spell_out_what_differs_from_the_profile_recipe():
    smoke = PROFILES["smoke"]
    assert smoke.student_config("undistilled").name == "student_undistilled_resnet18_digits"
    assert smoke.student_config("undistilled", lr=3e-3, epochs=4).name == \
        "student_undistilled_resnet18_digits_epochs_4_lr_0.003"
    assert smoke.student_config("undistilled", lr=smoke.student_lr).name == "student_undistilled_resnet18_digits"
    assert smoke.student_config("lw_supcrd", alpha=2.0, epochs=1).name == \
        "student_alpha_2.0_beta_10.0_temp_0.07_resnet18_digits_epochs_1"
    assert smoke.student_config("kd", temperature=0.5).name == \
        "student_baseline_kd_T_4.0_resnet18_digits_temperature_0.5"  # KD's name does not spell tau
    teacher = smoke.teacher_config().replace(epochs=3)
    assert teacher.name == "teacher_resnet50_digits_epochs_3"
    projection = smoke.projection_config().replace(teacher=teacher)
    assert projection.name == "teacher_resnet50_digits_with_projection_from_teacher_resnet50_digits_epochs_3"
    assert smoke.student_config("crd", teacher=projection).name == \
        f"student_baseline_crd_temp_0.07_resnet18_digits_from_{projection.name}"
    assert smoke.student_config("lw_supcrd", seeds=(1, 2)).name == smoke.student_config("lw_supcrd").name
    assert smoke.student_config("lw_supcrd", epochs=1).seed_name == smoke.student_config("lw_supcrd").name


def test_round_trip_and_diff_name_nested_fields():
    d = STUDENT.to_dict()
    assert RunConfig.from_dict(d) == STUDENT
    changed = STUDENT.replace(lr=0.5, teacher=STUDENT.teacher.replace(epochs=9))
    assert set(config_diff(d, changed.to_dict())) == {"lr", "teacher.epochs"}


def test_overrides_are_typed():
    assert parse_overrides(["alpha=2", "adaptive_beta=false", "seeds=1,2", "arch=resnet50"]) == \
        dict(alpha=2.0, adaptive_beta=False, seeds=(1, 2), arch="resnet50")
    with pytest.raises(ConfigError, match="'x' is not a valid float for field 'lr'"):
        parse_overrides(["lr=x"])
    with pytest.raises(ConfigError, match="expected FIELD=VALUE"):
        parse_overrides(["teacher=foo"])
