"""The command line: bad input exits with one line naming the field or the fix."""

import os
import subprocess
import sys
import urllib.error

import pytest

from desupcon.__main__ import main
from desupcon.core.errors import ConfigError, DatasetUnavailableError
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


RUN_CLI = ("import runpy, sys; sys.argv = ['desupcon', *sys.argv[1:]]\ntry:\n    runpy.run_module('desupcon', "
           "run_name='__main__')\nexcept SystemExit as end:\n    code = end.code\nprint('torch imported:', 'torch' in sys.modules)")


@pytest.mark.slow
def test_help_and_mistakes_are_answered_without_importing_torch(tmp_path):
    """Once the command line's index is built (the first call that needs it), a typo costs no torch import."""
    from desupcon.methods.distill.registry import runnable

    env = {**os.environ, "DESUPCON_HOME": str(tmp_path / "home"), "XDG_CACHE_HOME": str(tmp_path / "cache")}
    cli = lambda *argv: subprocess.run([sys.executable, "-c", RUN_CLI, *argv], env=env, capture_output=True, text=True)
    help_text = cli("train", "--help")
    assert "YAML" in help_text.stdout and help_text.stdout.endswith("torch imported: False\n")  # no index needed
    assert cli("train", "nosuch").stdout.endswith("torch imported: True\n")  # builds the index
    for argv, error in ((["train", "nosuch"], f"unknown run 'nosuch': choose one of {runnable()}"),
                        (["train", "crd", "--set", "nosuch=1"], "override 'nosuch=1': unknown key 'nosuch'; valid keys: ["),
                        (["train", "crd", "--set", "lr=abc"], "override 'lr=abc': 'lr' must be a finite number, got 'abc'"),
                        (["train", "crd", "--set", "epochs=0"], "config field 'epochs' = 0: must be >= 1 and <= 1,000,000")):
        done = cli(*argv)
        assert done.stderr.startswith(f"error: {error}") and done.stderr.count("\n") == 1, done.stderr
        assert done.stdout.endswith("torch imported: False\n"), argv


def test_the_index_answers_as_the_full_config_build_does(monkeypatch, tmp_path):
    """Each mistake the index answers gets the message building the config would give; valid input passes."""
    from desupcon.core import cli_index
    from desupcon.study.profiles import PROFILES, cli_index as build

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    builds = []
    index = lambda: cli_index.load(lambda: builds.append(1) or build())
    first = index()
    assert index() == first and len(builds) == 1  # cached
    monkeypatch.setattr(cli_index, "source_fingerprint", lambda: "an edited package")
    assert index()["fingerprint"] == "an edited package" and len(builds) == 2  # rebuilt for other source
    smoke = PROFILES["smoke"]
    mistakes = [("nosuch", []), ("crd", ["nosuch=1"]), ("crd", ["lr=abc"]), ("crd", ["epochs=1.5"]),
                ("crd", ["seeds=1,-4"]), ("crd", ["teacher.epochs=x"]), ("lw_supcrd", ["alpha=x"]),
                ("crd", ["epochs"]), ("crd", ["teacher.nosuch=1"]), ("fitnets", ["hint_weight=heavy"])]
    for run, pairs in mistakes:
        with pytest.raises(ConfigError) as full:
            smoke.recipe(run).override(pairs)
        with pytest.raises(ConfigError) as fast:
            cli_index.check_run(first, run, pairs)
        assert str(fast.value) == str(full.value), (run, pairs)
    cli_index.check_run(first, "lw_supcrd", ["alpha=2", "teacher.epochs=3", "seeds=1,2", "dataset=digits"])
