"""``sweep`` refuses, before anything starts, CUDA device ids this machine lacks and unknown grids:
one ``error:`` line and exit status 2 (``torch.cuda.device_count`` is monkeypatched: no GPU here)."""

import pytest
import torch

from desupcon.__main__ import main
from desupcon.core.errors import ConfigError
from desupcon.study import sweep
from desupcon.study.experiments import GRIDS


@pytest.fixture
def nothing_starts(monkeypatch):
    """Fail the test if the sweep gets as far as a download or a worker."""
    monkeypatch.setattr(sweep, "_download", lambda datasets: pytest.fail("the sweep started (download)"))
    monkeypatch.setattr(sweep.subprocess, "Popen", lambda *args, **kwargs: pytest.fail("a worker was launched"))


def _error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


def test_gpu_ids_on_a_machine_without_cuda(monkeypatch, capsys, nothing_starts):
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    assert main(["sweep", "03_lw_supcrd_sweeps", "--gpus", "0", "--profile", "smoke"]) == 2
    line = _error_line(capsys)
    assert "(--gpus) 0:" in line and "no CUDA device" in line and "--gpus cpu,cpu" in line


def test_missing_gpu_ids_are_named_with_the_count(monkeypatch, capsys, nothing_starts):
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert main(["sweep", "03_lw_supcrd_sweeps", "--gpus", "0,1,2,3", "--profile", "smoke"]) == 2
    line = _error_line(capsys)
    assert "(--gpus) 2,3:" in line and "2 CUDA devices (ids 0-1)" in line and "--gpus 0,1" in line
    assert "--gpus cpu,cpu" in line


def test_existing_gpus_and_cpu_entries_pass_the_check(monkeypatch):
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    sweep._check_devices(["0", "1", "cpu"])
    monkeypatch.setattr(torch.cuda, "device_count", lambda: pytest.fail("CUDA queried for CPU workers"))
    sweep._check_devices(["cpu", "cpu"])


def test_unknown_grid_lists_the_valid_ones(monkeypatch, capsys, nothing_starts):
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    assert main(["sweep", "05_no_such_grid", "--gpus", "cpu,cpu", "--profile", "smoke"]) == 2
    line = _error_line(capsys)
    assert "'05_no_such_grid'" in line and all(name in line for name in GRIDS)
    with pytest.raises(ConfigError, match="unknown: choose one of"):
        sweep.run_sweep("nope.ipynb", ["cpu"], profile="smoke")
