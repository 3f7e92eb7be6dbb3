"""Cluster sweeps through submitit: tested on CPU with submitit's local executor (real training, tiny runs)."""

import pytest

pytest.importorskip("submitit")

from desupcon.core.artefacts import load_checkpoint
from desupcon.core.paths import checkpoint_path
from desupcon.study.profiles import PROFILES
from desupcon.study.slurm import submit_sweep, waves

SMOKE = PROFILES["smoke"]
TINY = dict(arch="resnet18", width=4, epochs=1, probe_iterations=2, knn_k=5)
TEACHER = SMOKE.teacher_config().replace(**TINY)
PROJECTION = SMOKE.projection_config().replace(teacher=TEACHER, **TINY)
STUDENTS = [SMOKE.student_config("crd", teacher=PROJECTION, **TINY), SMOKE.student_config("undistilled", **TINY)]


def test_waves_put_every_teacher_before_its_students():
    crd, undistilled = STUDENTS  # the undistilled student needs no teacher: it starts with the teacher
    assert [[cfg.name for cfg in wave] for wave in waves(STUDENTS)] == [
        [TEACHER.name, undistilled.name], [PROJECTION.name], [crd.name]]


@pytest.mark.slow
def test_local_executor_trains_the_grid_in_waves_and_never_resubmits_a_finished_run(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("DESUPCON_HOME", str(tmp_path))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    rows = submit_sweep(STUDENTS, cluster="local", folder=tmp_path / "slurm", timeout_min=20)
    by_name = {row["name"]: row for row in rows}
    assert [row["status"] for row in rows] == ["trained"] * 4, capsys.readouterr().out
    assert [by_name[cfg.name]["wave"] for cfg in (TEACHER, PROJECTION, *STUDENTS)] == [0, 1, 2, 0]
    for cfg in (TEACHER, PROJECTION, *STUDENTS):
        assert load_checkpoint(checkpoint_path(cfg.name))["complete"], cfg.name
    out = capsys.readouterr().out
    assert "[slurm] wave 0: 2 run(s) submitted as job array" in out and "[slurm] wave 2: 1 run(s)" in out
    again = submit_sweep(STUDENTS, cluster="local", folder=tmp_path / "slurm")
    assert [row["status"] for row in again] == ["cached"] * 4 and "submitted as" not in capsys.readouterr().out
    assert waves(STUDENTS) == []
