"""Tables, captions and the missing-runs note of desupcon.analysis.report."""

from desupcon.analysis import report
from desupcon.study import experiments
from desupcon.study.profiles import PROFILES

SMOKE = PROFILES["smoke"]


def _summary(cfg, accs, alignment=0.5, uniformity=-2.0):
    return dict(name=cfg.name, config=cfg.to_dict(), seeds=list(range(len(accs))), method=cfg.method, role=cfg.role,
                runs=[dict(test_acc=a) for a in accs],
                mean=dict(test_acc=sum(accs) / len(accs), alignment=alignment, uniformity=uniformity))


def test_a_partly_trained_study_shows_what_exists_and_names_how_to_train_the_rest():
    configs = [SMOKE.teacher_config(), SMOKE.student_config("supcon"),
               SMOKE.student_config("lw_supcrd", recipe="bank_ablation", bank_k=SMOKE.bank_k)]
    results = {configs[1].name: _summary(configs[1], [90.0])}
    present, missing = report.recorded(configs, results)
    assert [s["name"] for s in present] == [configs[1].name] and missing == [configs[0], configs[2]]
    note = report.missing_note(missing)
    assert note.startswith("**2 run(s) not trained yet**")
    assert f"`{configs[0].name}` (Teacher): run `notebooks/01_teacher.ipynb` or " \
           f"`python -m desupcon sweep 01_teacher --profile smoke`" in note
    assert "04_memory_bank_ablation" in note and "LW-SupCRD α=1 β=10 + bank 512 (ablation)" in note
    assert report.missing_note([]) == ""


def test_study_points_and_caption_name_the_data_profile_and_seeds():
    supcon, lw = SMOKE.student_config("supcon"), experiments.headline(SMOKE)
    summaries = [_summary(lw, [91.0, 92.0]), _summary(supcon, [90.0])]
    points = report.study_points(summaries)
    assert [p["label"] for p in points] == ["LW-SupCRD α=1 β=10", "SupCon"]
    assert points[0]["accs"] == [91.0, 92.0] and points[0]["test_acc"] == 91.5
    assert report.caption(summaries) == "Data: digits test split (smoke profile); 1–2 seeds per run; 2 runs."
    assert report.caption(summaries, "Curves: each run's first seed.", split="train") == (
        "Data: digits train split (smoke profile); 1–2 seeds per run; 2 runs. Curves: each run's first seed.")


def test_reference_points_are_labelled_as_the_cifar100_twin_and_listed_once():
    runs = [SMOKE.student_config("crd", recipe="bank_ablation", bank_k=SMOKE.bank_k), experiments.headline(SMOKE),
            SMOKE.student_config("lw_supcrd", positives="instance"), SMOKE.student_config("kd")]
    summaries = [_summary(cfg, [90.0]) for cfg in runs] + [_summary(experiments.headline(SMOKE), [91.0])]
    assert report.reference_points(summaries) == [
        dict(label="CRD + bank 4096 (ablation)", test_acc=69.56, alignment=0.8098, uniformity=-2.0739),
        dict(label="LW-SupCRD α=1 β=10", test_acc=73.35, alignment=1.1990, uniformity=-3.7104)]


def test_tables_show_probe_and_head_and_keep_reference_numbers_off_rows_of_other_data():
    cifar = PROFILES["cifar100"]
    for profile in (SMOKE, cifar):
        runs = [_summary(profile.student_config(m), [80.0]) for m in ("supcon", "undistilled")]
        for s in runs:
            s["std"] = {}
            s["mean"].update(train_acc=95.0, gap=15.0, head_top1=78.0)
        lines = report.table(runs).splitlines()
        assert lines[0].startswith("| run | seeds | test_acc | train_acc | gap | head_top1 |")
        if profile is SMOKE:  # digits rows carry no CIFAR-100 number; the twins' come in their own table
            assert all("69.08" not in line for line in lines[:4]) and "reference" not in lines[0]
            assert "Reference (the write-ups' published CIFAR-100 numbers, not digits)" in lines[5]
            assert lines[-2:] == ["| SupCon | 69.08 | 0.4377 | -2.567 |", "| Undistilled | 67.93 | other space | other space |"]
        else:  # CIFAR-100 rows: the reference beside ours, geometry only where measured in the same space
            assert "reference test_acc (vs our probe)" in lines[0] and len(lines) == 4
            assert lines[2].endswith("| 69.08 | 0.4377 | -2.567 |")
            assert lines[3].endswith("| 67.93 | other space | other space |")
