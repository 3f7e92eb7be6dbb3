"""The command line: bad input exits with one line naming the field or the fix."""

import subprocess
import sys
import urllib.error

import pytest

from desupcon.__main__ import main
from desupcon.core.errors import DatasetUnavailableError
from desupcon.images.datasets import load_dataset
from desupcon.methods.distill.registry import runnable
from desupcon.study.profiles import CONFIGS

SMOKE_YAML = CONFIGS / "moco_v3_smoke.yaml"


@pytest.mark.parametrize("argv,message", [
    (["train", "teacher", "--profile", "huge"], "unknown profile 'huge'"),
    (["train", "teacher", "--profile", "smoke", "--set", "arch=resnet34"], "'arch' = 'resnet34': must be one of"),
    (["train", "undistilled", "--profile", "smoke", "--set", "lr=-0.001"], "'lr' = -0.001: must be in (0, 10]"),
    (["train", "byol", "--profile", "smoke"], f"unknown run 'byol': choose one of {runnable()}"),
    (["train", "lw_supcrd", "--profile", "smoke", "--set", "teacher.teacher.lr=-1"],
     "config field 'teacher.teacher.lr' = -1.0: must be in (0, 10]"),
    (["train", "undistilled", "--profile", "smoke", "--set", "nope=1"], "override 'nope=1': unknown key 'nope'"),
    (["train", "undistilled", "--profile", "smoke", "--set", "margin=0.3"], "override 'margin=0.3': unknown key"),
    (["train", str(CONFIGS / "nope.yaml")], f"config file {CONFIGS / 'nope.yaml'} not found; configs in"),
    (["train", str(SMOKE_YAML), "--set", "train.nope=1"], "override 'train.nope=1': unknown key"),
    (["pretrain", str(SMOKE_YAML), "--set", "train.epochs=0"],
     "config field 'train.epochs' = 0: must be >= 1"),
])
def test_bad_input_is_one_line_naming_the_field(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message in err and "\n" not in err


def test_missing_dataset_without_network(monkeypatch, tmp_path, capsys):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("network unreachable")

    monkeypatch.setenv("DESUPCON_DATA", str(tmp_path / "data"))
    monkeypatch.setattr("torchvision.datasets.cifar.download_and_extract_archive", offline)
    with pytest.raises(DatasetUnavailableError, match="could not be downloaded .*set DESUPCON_DATA.*DESUPCON_PROFILE=smoke"):
        load_dataset("cifar100", train=True)
    assert main(["train", "teacher", "--profile", "cifar100"]) == 2
    err = capsys.readouterr().err.strip()
    assert "dataset 'cifar100' is not in" in err and "\n" not in err


@pytest.mark.slow
def test_module_entry_point_runs():
    out = subprocess.run([sys.executable, "-m", "desupcon", "--help"], capture_output=True, text=True, check=True)
    assert "reproduce" in out.stdout and "train" in out.stdout and "pretrain" in out.stdout


@pytest.mark.slow
def test_train_help_lists_the_registry_runs():
    from desupcon.methods.distill.registry import runnable

    out = subprocess.run([sys.executable, "-m", "desupcon", "train", "--help"], capture_output=True, text=True,
                         check=True)
    assert all(run in " ".join(out.stdout.split()) for run in runnable()) and "YAML" in out.stdout
