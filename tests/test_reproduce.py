"""`python -m desupcon reproduce`: a failing notebook is saved and summarised, the independent ones still run."""

import os
import signal
import subprocess
import sys
import time

import nbformat
import pytest

from desupcon.core.paths import REPOSITORY
from desupcon.study import reproduce as rep


def _notebook(path, *sources):
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(s) for s in sources])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)


def test_fold_carriage_returns_keeps_each_bar_s_final_state():
    text = "run: 0%|  | 0/10\rrun: 50%|# | 5/10\rrun: 100%|##| 10/10\n[done] run: test acc 90%\n"
    assert rep.fold_carriage_returns(text) == "run: 100%|##| 10/10\n[done] run: test acc 90%\n"


@pytest.mark.slow
def test_a_failing_notebook_is_saved_summarised_and_only_its_dependents_are_skipped(tmp_path, monkeypatch, capsys):
    folder = tmp_path / "notebooks"
    folder.mkdir()
    _notebook(folder / "01_teacher.ipynb", "import sys\nprint('[done] teacher: test acc 90.00%')",
              "raise ValueError('no teacher today')", "print('never')")
    _notebook(folder / "02_baselines.ipynb", "print('needs the teacher')")
    _notebook(folder / "05_moco_v3_pretraining.ipynb",
              "import sys, time\nfor i in range(3):\n    sys.stderr.write(f'\\rmoco: {i}/3 [00:01<00:02, 1.0it/s]')\n"
              "print('\\n[done] moco: test acc 50.00%')")
    monkeypatch.setattr(rep, "NOTEBOOKS", ("01_teacher", "02_baselines", "05_moco_v3_pretraining"))
    monkeypatch.setattr(rep, "REPOSITORY", tmp_path)
    with pytest.raises(rep.StudyIncomplete, match="2 of 3 notebooks did not finish: 01_teacher failed "
                                                  r"\(ValueError: no teacher today\); 02_baselines skipped"):
        rep.reproduce(out=tmp_path / "out")
    out = capsys.readouterr().out
    assert "[reproduce] 1/3 01_teacher.ipynb failed" in out and "ValueError: no teacher today" in out
    assert "  [done] teacher: test acc 90.00%" in out  # the kernel's run line, echoed to the terminal
    assert "[reproduce] 2/3 02_baselines.ipynb skipped: it needs 01_teacher" in out
    assert "[reproduce] 3/3 05_moco_v3_pretraining.ipynb done" in out
    failed = nbformat.read(tmp_path / "out" / "01_teacher.ipynb", as_version=4)
    assert failed.cells[1].outputs[0]["ename"] == "ValueError"  # saved as far as it ran
    assert not (tmp_path / "out" / "02_baselines.ipynb").exists()
    moco = nbformat.read(tmp_path / "out" / "05_moco_v3_pretraining.ipynb", as_version=4)
    assert all("\r" not in o.get("text", "") for o in moco.cells[0].outputs)


DRIVER = """
import sys
from pathlib import Path
from desupcon.study import reproduce as rep
rep.NOTEBOOKS, rep.REPOSITORY = ("01_teacher", "02_baselines"), Path(sys.argv[1])
from desupcon.__main__ import main
sys.exit(main(["reproduce", "--out", sys.argv[2]]))
"""


@pytest.mark.slow
def test_ctrl_c_stops_the_running_cell_saves_the_notebook_and_says_how_to_continue(tmp_path):
    """Ctrl-C in a terminal signals the foreground process group (the CLI; the kernel has a session of its own)."""
    folder, out = tmp_path / "notebooks", tmp_path / "out"
    folder.mkdir()
    _notebook(folder / "01_teacher.ipynb", "print('[done] first: test acc 90.00%')",
              "import time\ntry:\n    for i in range(600):\n        print('step', i, flush=True)\n        time.sleep(0.1)\n"
              "except KeyboardInterrupt:\n    print('[interrupted] second: resumes from epoch 3', flush=True)\n    raise",
              "print('never')")
    _notebook(folder / "02_baselines.ipynb", "print('never either')")
    (tmp_path / "driver.py").write_text(DRIVER)
    cli = subprocess.Popen([sys.executable, str(tmp_path / "driver.py"), str(tmp_path), str(out)], cwd=REPOSITORY,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    seen = ""
    while "[done] first" not in seen:  # the kernel runs the cells (the run line is echoed as it arrives)
        line = cli.stdout.readline()
        assert line, f"the CLI ended early: {cli.wait()} {cli.stderr.read()}"
        seen += line
    time.sleep(1)
    os.killpg(cli.pid, signal.SIGINT)
    stdout, stderr = cli.communicate(timeout=120)
    copy = out / "01_teacher.ipynb"
    assert cli.returncode == 130, stderr
    assert stderr.strip().splitlines() == [
        f"[interrupted] reproduce: finished no notebook; interrupted 01_teacher (saved as far as it ran: {copy}); "
        f"continue with: python -m desupcon reproduce --only 01 02 (finished runs load from the cache, an interrupted "
        f"run resumes from its last saved epoch)"]
    assert "Traceback" not in stdout and "  [interrupted] second: resumes from epoch 3" in stdout
    saved = nbformat.read(copy, as_version=4)
    assert saved.cells[1].outputs[-1]["ename"] == "KeyboardInterrupt"
    assert "step 0" in "".join(o.get("text", "") for o in saved.cells[1].outputs) and not saved.cells[2].outputs
    assert not (out / "02_baselines.ipynb").exists()
