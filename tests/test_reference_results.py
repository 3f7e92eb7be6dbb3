"""The reference (published CIFAR-100) numbers sit only beside the configurations that produced them.

Each row of ``REFERENCE_RESULTS`` must be the name of a ``cifar100`` run the notebooks train, and that
run's config must be the one ``../shared/seeds/004_*`` states for the table the number comes from.
"""

import dataclasses

import pytest

from desupcon.analysis.reference_results import REFERENCE_RESULTS, reference_for
from desupcon.methods.distill.config import RunConfig
from desupcon.study import experiments
from desupcon.study.profiles import PROFILES

CIFAR, SMOKE = PROFILES["cifar100"], PROFILES["smoke"]

# 004_*: "Training: 50 epochs, batch size 128, Adam optimizer (lr=1e-3)"; no weight decay or schedule is
# stated for the baselines and sweeps; the bank ablation: "Batch=128, WD=1e-4, 50 epochs with cosine
# annealing", "Sample K=4,096 negatives", "momentum=0.5", "4,223 total negatives (127 in-batch + 4,096 bank)".
STUDENT = dict(role="student", arch="resnet18", dataset="cifar100", epochs=50, batch_size=128, optimizer="adam",
               lr=1e-3)
SWEEPS = dict(STUDENT, weight_decay=0.0, schedule="constant", bank_k=0)
ABLATION = dict(STUDENT, weight_decay=1e-4, schedule="cosine", bank_momentum=0.5, bank_positives=False)
LW = dict(alpha=1.0, beta=10.0, temperature=0.07, adaptive_beta=True, adaptive_beta_source="teacher",
          positives="class")
_S = "_resnet18_cifar100"
WRITE_UP = {
    "teacher_resnet50_cifar100": dict(role="teacher", arch="resnet50", dataset="cifar100"),
    "teacher_resnet50_cifar100_with_projection": dict(role="projection", arch="resnet50", proj_dim=64),
    f"student_undistilled{_S}": dict(SWEEPS, method="undistilled"),
    f"student_baseline_supcon{_S}": dict(SWEEPS, method="supcon", temperature=0.07),
    f"student_baseline_crd{_S}": dict(SWEEPS, method="crd", temperature=0.07),
    **{f"student_alpha_{a}_beta_{b}_temp_{t}{_S}": dict(SWEEPS, method="lw_supcrd", **dict(LW, alpha=a, beta=b,
                                                                                            temperature=t))
       for a, b, t in [(1.0, 10.0, 0.07), (2.0, 10.0, 0.07), (5.0, 10.0, 0.07), (10.0, 10.0, 0.07),
                       (1.0, 1.0, 0.07), (1.0, 5.0, 0.07), (1.0, 12.0, 0.07), (1.0, 10.0, 0.05)]},
    **{f"student_hybrid_lambda_{lam}_alpha_1.0_beta_10.0_temp_0.07{_S}": dict(SWEEPS, method="hybrid",
                                                                             hybrid_lambda=lam, **LW)
       for lam in (0.3, 0.5, 0.7, 0.9)},
    f"student_baseline_crd_nobank{_S}": dict(ABLATION, method="crd", bank_k=0, temperature=0.07),
    f"student_baseline_crd_bank4096{_S}": dict(ABLATION, method="crd", bank_k=4096, temperature=0.07),
    f"student_lwsupcrd_nobank{_S}": dict(ABLATION, method="lw_supcrd", bank_k=0, **LW),
    f"student_lwsupcrd_bank4096{_S}": dict(ABLATION, method="lw_supcrd", bank_k=4096, **LW),
}


def study(profile):
    return {cfg.name: cfg for grid in experiments.GRIDS for cfg in experiments.grid(grid, profile)}


def test_every_reference_row_is_a_run_of_the_study_with_the_write_up_s_config():
    runs = study(CIFAR)
    assert sorted(REFERENCE_RESULTS) == sorted(WRITE_UP)
    for name, stated in WRITE_UP.items():
        assert name in runs, f"no cifar100 run is named {name}"
        cfg = runs[name]
        assert {k: getattr(cfg, k) for k in stated} == stated, name
        assert cfg.seed == 42, name  # the write-ups' seed comes first (the headline adds more)
        assert reference_for(cfg.to_dict()) is REFERENCE_RESULTS[name]


def test_the_two_no_bank_lw_supcrd_numbers_belong_to_two_runs():
    sweep = CIFAR.student_config("lw_supcrd")
    ablation = CIFAR.student_config("lw_supcrd", recipe="bank_ablation")
    assert sweep.name != ablation.name
    assert reference_for(sweep.to_dict())["test_acc"] == 73.35
    assert reference_for(ablation.to_dict())["test_acc"] == 74.76


def test_notebook_04_runs_the_four_ablation_configurations_and_two_labelled_variants():
    runs = experiments.grid("04_memory_bank_ablation", CIFAR)
    assert [cfg.name for cfg in runs] == [f"student_baseline_crd_nobank{_S}", f"student_baseline_crd_bank4096{_S}",
                                          f"student_lwsupcrd_nobank{_S}", f"student_lwsupcrd_bank4096{_S}",
                                          f"student_lwsupcrd_bank4096_bankpos{_S}", f"student_lwsupcrd_bank4096_banklit{_S}"]
    positives, literal = runs[-2:]
    assert positives.bank_positives and reference_for(positives.to_dict()) is None
    assert literal.bank_literal and reference_for(literal.to_dict()) is None


@pytest.mark.parametrize("changes", [dict(positives="instance"), dict(adaptive_beta_source="student"),
                                     dict(adaptive_beta=False), dict(lr=3e-3), dict(weight_decay=5e-4)])
def test_no_reference_beside_a_variant_or_another_recipe(changes):
    cfg = CIFAR.student_config("lw_supcrd", **changes)
    assert reference_for(cfg.to_dict()) is None, cfg.name


def test_a_smoke_run_shows_the_reference_of_its_cifar100_twin_only():
    twin = {c.reference_name for c in study(CIFAR).values() if c.name in REFERENCE_RESULTS}
    for name, cfg in study(SMOKE).items():
        ref = reference_for(cfg.to_dict())
        expected = dataclasses.replace(cfg, dataset="cifar100", bank_k=4096 if cfg.bank_k else 0).reference_name
        assert (ref is not None) == (expected in twin), name


def test_a_moco_run_and_a_config_dict_round_trip():
    assert reference_for(SMOKE.moco_config().to_dict()) is None
    cfg = CIFAR.student_config("crd", recipe="bank_ablation", bank_k=4096)
    assert RunConfig.from_dict(cfg.to_dict()) == cfg


def test_the_names_table_maps_each_write_up_file_to_a_run_of_the_study():
    import re
    from pathlib import Path

    table = (Path(__file__).resolve().parents[1] / "pth_models" / "README.md").read_text()
    rows = re.findall(r"^\| `([^`]+)` \| `([^`]+)` \|$", table, flags=re.M)
    assert len(rows) == 19
    runs = study(CIFAR)
    for theirs, ours in rows:
        folder, file = ours.rsplit("/", 1)
        stem = file.removesuffix(".pth").removesuffix(".json")
        if stem.startswith("comprehensive_results_"):
            assert stem == f"comprehensive_results_{CIFAR.student_config('supcon').results_group}"
            continue
        assert stem in runs, ours
        assert folder in ("pth_models", "json_results/training_logs") and theirs.startswith(folder.split("/")[0])
        if theirs.startswith("pth_models/"):
            assert theirs == ours  # every checkpoint keeps the write-ups' name
