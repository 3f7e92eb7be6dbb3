"""The sweep runner: parallel workers, teachers before students, failures isolated, the run cache reused.

One test trains four tiny students on two CPU workers for real; the scheduling tests replace the
worker with a stand-in that sleeps (and fails where told), so they take a second or two.
"""

import os
import re
import signal
import threading

import pytest

from desupcon.engine.runs import load_results
from desupcon.study import sweep
from desupcon.study.profiles import PROFILES
from desupcon.study.sweep import SweepError, run_sweep

SMOKE = PROFILES["smoke"]
TINY = dict(arch="resnet18", width=4, epochs=1, probe_iterations=2, knn_k=5)
TEACHER = SMOKE.teacher_config().replace(**TINY)
PROJECTION = SMOKE.projection_config().replace(teacher=TEACHER, **TINY)
CRD = SMOKE.student_config("crd", teacher=PROJECTION, **TINY)
STUDENTS = [SMOKE.student_config("undistilled", **TINY)] + [
    SMOKE.student_config("supcon", temperature=t, **TINY) for t in (0.05, 0.07, 0.1)]


def _stand_in_worker(fail_role: str = "none") -> str:
    """Worker code that takes 0.5 s and, for runs of role ``fail_role``, exits 1 with an error line on stderr."""
    return (f"import json, sys, time; time.sleep(0.5); role = json.loads(sys.argv[1])['role']; "
            f"sys.exit('RuntimeError: the stand-in ' + role + ' failed' if role == {fail_role!r} else 0)")


def _schedule(configs, slots=("cpu", "cpu")) -> dict:
    """``{name: Job}`` after scheduling ``configs`` and their teachers on ``slots``."""
    jobs = [sweep.Job(cfg) for cfg in sweep.with_upstream(configs)]
    sweep._schedule(jobs, list(slots), threads=1)
    return {job.cfg.name: job for job in jobs}


def _overlap(a, b) -> bool:
    return a["start"] < b["end"] and b["start"] < a["end"]


@pytest.mark.slow
def test_two_workers_train_at_once_and_a_second_sweep_launches_nothing(monkeypatch, home):
    rows = run_sweep(STUDENTS, ["cpu", "cpu"])
    assert [row["status"] for row in rows] == ["trained"] * 4 and {row["device"] for row in rows} == {"cpu"}
    assert any(_overlap(a, b) for a in rows for b in rows if a is not b)
    assert [row["name"] for row in rows] == [cfg.name for cfg in STUDENTS]
    assert {row["name"] for row in rows} <= set(load_results(STUDENTS[0].results_group))  # every run recorded
    assert STUDENTS[0].results_group == "resnet18_digits"
    assert not (home / "plots").exists()  # training draws nothing (figures: desupcon.analysis.figures.draw_run)
    monkeypatch.setattr(sweep.subprocess, "Popen", lambda *args, **kwargs: pytest.fail("a worker was launched"))
    assert [row["status"] for row in run_sweep(STUDENTS, ["cpu", "cpu"])] == ["cached"] * 4


def test_teachers_train_once_before_their_students(monkeypatch):
    monkeypatch.setattr(sweep, "WORKER", _stand_in_worker())
    jobs = _schedule([CRD, STUDENTS[0]])
    teacher, projection, crd, other = (jobs[cfg.name].row() for cfg in (TEACHER, PROJECTION, CRD, STUDENTS[0]))
    assert len(jobs) == 4 and all(row["status"] == "trained" for row in (teacher, projection, crd, other))
    assert teacher["end"] <= projection["start"] and projection["end"] <= crd["start"]
    assert _overlap(teacher, other)  # a run without a teacher does not wait for one


def test_a_failed_run_fails_its_students_and_leaves_the_others(monkeypatch):
    monkeypatch.setattr(sweep, "WORKER", _stand_in_worker(fail_role="projection"))
    jobs = _schedule([CRD, *STUDENTS[:2]])
    assert {name: job.status for name, job in jobs.items()} == {
        TEACHER.name: "trained", PROJECTION.name: "failed", CRD.name: "failed",
        STUDENTS[0].name: "trained", STUDENTS[1].name: "trained"}
    assert jobs[CRD.name].start is None  # never launched


def test_a_sweep_with_failed_runs_raises_naming_them(monkeypatch, capsys):
    monkeypatch.setattr(sweep, "WORKER", _stand_in_worker(fail_role="teacher"))
    with pytest.raises(SweepError) as err:
        run_sweep([CRD], ["cpu"])
    assert re.fullmatch(rf"3 of 3 runs failed: {TEACHER.name}: RuntimeError: the stand-in teacher failed \(log: \S+\); "
                        rf"{PROJECTION.name}: its teacher failed; {CRD.name}: its teacher failed", str(err.value))
    assert re.search(rf"{PROJECTION.name} +failed", capsys.readouterr().out)  # the summary table


def test_ctrl_c_stops_the_workers_and_says_what_finished_and_how_to_continue(monkeypatch):
    monkeypatch.setattr(sweep, "WORKER", "import time; time.sleep(120)")
    timer = threading.Timer(2.0, os.kill, (os.getpid(), signal.SIGINT))  # Ctrl-C while two runs are running
    timer.start()
    try:
        with pytest.raises(KeyboardInterrupt) as err:
            run_sweep(STUDENTS, ["cpu", "cpu"])
    finally:
        timer.cancel()
    running = ", ".join(cfg.name for cfg in STUDENTS[:2])
    assert str(err.value) == (f"[interrupted] sweep: 0 of 4 runs finished, 2 interrupted ({running}: each resumes from "
                              f"its last saved epoch), 2 not started; continue with the same command (python -m "
                              f"desupcon sweep GRID ...): finished runs load from the cache")
