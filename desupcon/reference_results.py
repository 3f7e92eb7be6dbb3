"""The reference results: the earlier study's published CIFAR-100 numbers (the write-ups), keyed by run name.

Shown beside our results, always labelled "reference". The write-ups trained their headline
configuration (alpha=1, beta=10, tau=0.07, no bank) several times and reported 73.35%, 73.19% and
74.76% for it: a spread of about 1.6 points between repeats of one config.
"""

_S = "_resnet18_cifar100"

REFERENCE_RESULTS: dict[str, dict] = {
    "teacher_resnet50_cifar100": dict(test_acc=80.75, alignment=0.5928, uniformity=-3.4649),
    f"student_undistilled{_S}": dict(test_acc=67.93, alignment=0.6631, uniformity=-1.7332),
    f"student_baseline_supcon_temp_0.07{_S}": dict(test_acc=69.08, alignment=0.4377, uniformity=-2.5665),
    f"student_baseline_crd_temp_0.07{_S}": dict(test_acc=68.05, alignment=0.9008, uniformity=-2.2358,
                                               note="68.15% (train 73.70%) in the bank ablation"),
    f"student_baseline_crd_temp_0.07_bank4096{_S}": dict(test_acc=69.56, train_acc=78.57, gap=9.01,
                                                       alignment=0.8098, uniformity=-2.0739),
    f"student_alpha_1.0_beta_10.0_temp_0.07{_S}": dict(test_acc=73.35, alignment=1.1990, uniformity=-3.7104,
                                                     note="also reported: 73.19% (sweeps), 74.76% (bank ablation)"),
    f"student_alpha_1.0_beta_10.0_temp_0.07_bank4096{_S}": dict(test_acc=75.63, train_acc=95.72, gap=20.09,
                                                              alignment=0.8336, uniformity=-3.5073),
    f"student_alpha_2.0_beta_10.0_temp_0.07{_S}": dict(test_acc=71.78, alignment=1.1129, uniformity=-3.6744),
    f"student_alpha_5.0_beta_10.0_temp_0.07{_S}": dict(test_acc=70.67, alignment=1.1589, uniformity=-3.6712),
    f"student_alpha_10.0_beta_10.0_temp_0.07{_S}": dict(test_acc=70.07, alignment=1.2754, uniformity=-3.6728),
    f"student_alpha_1.0_beta_1.0_temp_0.07{_S}": dict(test_acc=70.46, alignment=1.1862, uniformity=-3.6390),
    f"student_alpha_1.0_beta_5.0_temp_0.07{_S}": dict(test_acc=70.63, alignment=1.2487, uniformity=-3.6785),
    f"student_alpha_1.0_beta_12.0_temp_0.07{_S}": dict(test_acc=71.31, alignment=1.2068, uniformity=-3.6654),
    f"student_alpha_1.0_beta_10.0_temp_0.05{_S}": dict(test_acc=68.08, alignment=1.3503, uniformity=-3.6645),
    **{f"student_hybrid_lambda_{lam}_alpha_1.0_beta_10.0_temp_0.07{_S}": dict(
        test_acc=acc, train_acc=train, gap=gap, alignment=align, uniformity=unif)
       for lam, acc, train, gap, align, unif in [(0.3, 72.58, 98.73, 26.15, 0.6043, -3.2880),
                                                 (0.5, 72.07, 98.92, 26.85, 0.5166, -2.9451),
                                                 (0.7, 71.57, 98.25, 26.68, 0.4845, -2.8290),
                                                 (0.9, 70.69, 95.40, 24.71, 0.4394, -2.6273)]},
}


def reference_for(config: dict) -> dict | None:
    """The reference numbers for the CIFAR-100 twin of a distillation run (same method and
    hyperparameters, a bank of 4096 if the run uses one), or ``None`` where the write-ups have no
    such run (e.g. KD, MoCo-v3)."""
    import dataclasses

    from .config import RunConfig

    if "method" not in config:  # a MoCo-v3 run
        return None
    cfg = RunConfig.from_dict(config)
    twin = dataclasses.replace(cfg, dataset="cifar100", bank_k=4096 if cfg.bank_k else 0, teacher=None)
    return REFERENCE_RESULTS.get(twin.reference_name)
