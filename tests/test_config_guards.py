"""Inputs you can trust: hostile YAML, out-of-range values and launchers with nothing to launch on are refused
with one line, before any work.

YAML faults are real files (the smoke config with one line changed); ranges go through ``Config.override`` and
``load_config`` as ``--set`` and a YAML file would; a few CLI calls check the exit status and the one line.
"""

import contextlib
import re
import subprocess
import sys
import tracemalloc
from pathlib import Path
from types import SimpleNamespace

import pytest

from desupcon.core.config import shown
from desupcon.core.errors import ConfigError
from desupcon.core.paths import checkpoint_path
from desupcon.engine import memory
from desupcon.methods.ssl.config import load_config
from desupcon.study.profiles import PROFILES
from desupcon.study.slurm import check_slurm, submit_sweep, task_error
from desupcon.study.sweep import SweepError, error_line

REPOSITORY = Path(__file__).resolve().parents[1]
SMOKE_YAML = REPOSITORY / "configs" / "moco_v3_smoke.yaml"
SMOKE = PROFILES["smoke"]
CRD = SMOKE.recipe("crd")
TINY = dict(arch="resnet18", width=4, epochs=1, probe_iterations=2, knn_k=5)


def smoke_with(tmp_path, old: str, new: str, name: str = "x.yaml") -> tuple[Path, int]:
    """The smoke config with the line ``old`` replaced by ``new`` (several lines allowed), and the line number of ``new``."""
    text = SMOKE_YAML.read_text()
    assert text.count(old) == 1, old
    path = tmp_path / name
    path.write_text(text.replace(old, new))
    return path, text[:text.index(old)].count("\n") + 1


def refusal(path, *overrides) -> str:
    """The one-line message ``load_config`` refuses ``path`` with."""
    with pytest.raises(ConfigError) as err:
        load_config(path, overrides)
    message = str(err.value)
    assert "\n" not in message and len(message) < 400, message
    return message


@contextlib.contextmanager
def peak_memory():
    """The most Python allocated inside the block (``.bytes``, set at its end): the work done, not the time taken."""
    peak = SimpleNamespace(bytes=0)
    tracemalloc.start()
    try:
        yield peak
    finally:
        peak.bytes = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()


# 1 KB of nested aliases: expanded, eval.knn_k would hold 9**8 = 43 million strings
BILLION_LAUGHS = "  knn_k: {a: &a [lol,lol,lol,lol,lol,lol,lol,lol,lol],\n" + "".join(
    f"    {c}: &{c} [{', '.join(['*' + p] * 9)}]" + (",\n" if c != "i" else "}") for p, c in zip("abcdefgh", "bcdefghi"))


def test_nested_aliases_are_refused_at_once_without_expanding(tmp_path):
    path, line = smoke_with(tmp_path, "  knn_k: 200", BILLION_LAUGHS)
    assert path.stat().st_size < 3000
    with peak_memory() as peak:
        message = refusal(path)
    assert peak.bytes < 8 * 2 ** 20  # expanded, the aliases alone would take gigabytes
    assert message == (f"{path}, line {line}, column 14: YAML anchors and aliases are not allowed in a config; "
                       f"write the value out")


def test_an_anchor_alone_and_a_merge_key_are_refused_too(tmp_path):
    path, line = smoke_with(tmp_path, "  epochs: 20\n", "  epochs: &n 20\n")
    assert refusal(path).startswith(f"{path}, line {line}, column 11: YAML anchors and aliases are not allowed")
    path, line = smoke_with(tmp_path, "  epochs: 20\n", "  <<: {epochs: 5}\n  epochs: 20\n")  # merges need no alias
    assert refusal(path) == f"{path}, line {line}, column 3: YAML merge keys (<<) are not allowed in a config; " \
                            f"write the keys out"


def test_a_key_given_twice_is_refused_naming_both_lines(tmp_path):
    path, line = smoke_with(tmp_path, "  seed: 42\n", "  seed: 42\n  epochs: 3\n")
    first = SMOKE_YAML.read_text().splitlines().index("  epochs: 20") + 1
    assert refusal(path) == f"{path}, line {line + 1}, column 3: duplicate key 'epochs' (first at line {first}); " \
                            f"keep one of them"
    path, _ = smoke_with(tmp_path, "model:\n", "train: {}\nmodel:\n", "section.yaml")  # a whole section twice
    assert "duplicate key 'train' (first at line" in refusal(path)


def test_a_syntax_error_is_one_line_with_the_file_line_and_column(tmp_path):
    path, line = smoke_with(tmp_path, "  epochs: 20\n", "  epochs: [20\n")
    message = refusal(path)
    assert message.startswith(f"{path}, line {line + 1}, column 13: YAML syntax error: expected ',' or ']'")
    assert f"(while parsing a flow sequence at line {line})" in message and "<unicode string>" not in message
    path, line = smoke_with(tmp_path, "  seed: 42\n", "  seed: 42\n\tamp: true\n", "tab.yaml")
    assert refusal(path).startswith(f"{path}, line {line + 1}, column 1: YAML syntax error: found character '\\t'")
    path = tmp_path / "bytes.yaml"
    path.write_bytes(SMOKE_YAML.read_bytes().replace(b"digits", b"dig\xffits", 1))
    position = SMOKE_YAML.read_bytes().index(b"digits") + 3
    assert refusal(path) == f"{path}, position {position}: invalid start byte (255); save the config as plain UTF-8 text"


@pytest.mark.parametrize("tag", ["!!python/object/apply:os.system ['touch {marker}']", "!!python/name:os.system",
                                 "!!python/object/new:list []", "!custom 20"])
def test_python_and_unknown_tags_are_refused(tmp_path, tag):
    marker = tmp_path / "ran"
    path, line = smoke_with(tmp_path, "  epochs: 20\n", f"  epochs: {tag.format(marker=marker)}\n")
    name = tag.split(" ")[0].removesuffix("[]")
    why = " (it would build a Python object)" if name.startswith("!!python") else ""
    assert refusal(path) == (f"{path}, line {line}, column 11: the tag '{name}' is not allowed in a config{why}; "
                             f"write a plain value (a number, string, true/false, list or mapping)")
    assert not marker.exists()


def test_deep_nesting_and_endless_integers_are_refused_not_crashed(tmp_path):
    path, line = smoke_with(tmp_path, "  knn_k: 200", "  knn_k: " + "[" * 5000 + "]" * 5000)
    assert refusal(path).startswith(f"{path}, line {line}, column ")
    assert "values nested deeper than 16 levels" in refusal(path)
    path, line = smoke_with(tmp_path, "  epochs: 20\n", f"  epochs: {'9' * 5000}\n", "digits.yaml")
    assert refusal(path).startswith(f"{path}, line {line}, column 11: the integer '9999")
    assert "has too many digits" in refusal(path)


def test_no_message_shows_an_unbounded_value():
    bomb = ["lol"] * 9
    for _ in range(6):  # 9**7 = 4.8 million strings, sharing 7 lists
        bomb = [bomb] * 9
    with peak_memory() as peak, pytest.raises(ConfigError) as err:
        CRD.replace(knn_k=bomb)
    assert peak.bytes < 8 * 2 ** 20 and len(str(err.value)) < 300  # its repr would take hundreds of MB
    assert str(err.value).startswith("config field 'knn_k' = [[[...], [...], [...], [...], [...], [...], ...], ")
    with pytest.raises(ConfigError) as err:
        CRD.override(["augment=" + "x" * 100_000])
    assert len(str(err.value)) < 400
    assert len(shown(10 ** 5000)) < 60 and len(shown("y" * 10 ** 6)) <= 60 and len(shown(bomb)) <= 123


OUT_OF_RANGE = [  # (override, the message's start); the distillation run's fields, then the MoCo-v3 config's
    ("epochs=1e23", "override 'epochs=1e23': 'epochs' must be an int, got '1e23'; a float is never rounded to an "
                    "int: write an int >= 1 and <= 1,000,000"),
    ("epochs=5.0", "override 'epochs=5.0': 'epochs' must be an int, got '5.0'; a float is never rounded"),
    (f"epochs={10 ** 23}", f"config field 'epochs' = {10 ** 23}: must be >= 1 and <= 1,000,000"),
    ("seeds=-1", "config field 'seeds' = (-1,): must be ints >= 0 and <= 4,294,967,295 (a 32-bit RNG seed"),
    (f"seeds=42,{2 ** 32}", f"config field 'seeds' = (42, {2 ** 32}): must be ints >= 0 and <= 4,294,967,295"),
    ("seeds=1e20", "override 'seeds=1e20': 'seeds': '1e20' is not a comma-separated list of ints; valid: ints >= 0"),
    ("batch_size=1000000000", "config field 'batch_size' = 1000000000: must be >= 2 and <= 65,536"),
    ("accum_steps=0", "config field 'accum_steps' = 0: must be >= 1 and <= 65,536"),
    ("train.epochs=1e23", "override 'train.epochs=1e23': 'train.epochs' must be an int, got '1e23'; a float is "
                          "never rounded to an int: write an int >= 1 and <= 1,000,000"),
    ("train.seed=1e20", "override 'train.seed=1e20': 'train.seed' must be an int, got '1e20'; a float is never "
                        "rounded to an int: write an int >= 0 and <= 4,294,967,295"),
    ("train.seed=-1", f"{SMOKE_YAML}: config field 'train.seed' = -1: must be >= 0 and <= 4,294,967,295"),
    ("data.image_size=100000", f"{SMOKE_YAML}: config field 'data.image_size' = 100000: must be >= 8 and <= 4,096 "
                               f"(pixels per side"),
    ("data.image_size=4", f"{SMOKE_YAML}: config field 'data.image_size' = 4: must be >= 8"),
    ("model.teacher_img_size=8192", f"{SMOKE_YAML}: config field 'model.teacher_img_size' = 8192: must be >= 8"),
    ("train.batch_size=1000000", f"{SMOKE_YAML}: config field 'train.batch_size' = 1000000: must be >= 2 and <= 65,536"),
]


@pytest.mark.parametrize("override,message", OUT_OF_RANGE, ids=[o for o, _ in OUT_OF_RANGE])
def test_out_of_range_overrides_name_the_valid_range(override, message):
    with pytest.raises(ConfigError) as err:
        if override.split("=")[0] in ("train.epochs", "train.seed", "data.image_size", "model.teacher_img_size",
                                      "train.batch_size"):
            load_config(SMOKE_YAML, [override])
        else:
            CRD.override([override])
    assert str(err.value).startswith(message) and "\n" not in str(err.value), str(err.value)


@pytest.mark.parametrize("old,new,message", [
    ("  seed: 42\n", "  seed: -1\n", "config field 'train.seed' = -1: must be >= 0 and <= 4,294,967,295"),
    ("  image_size: 16\n", "  image_size: 100000\n", "config field 'data.image_size' = 100000: must be >= 8 and <= 4,096"),
    ("  epochs: 20\n", "  epochs: 1.0e+23\n", "'train.epochs' must be an int, got 1e+23; a float is never rounded"),
    ("  epochs: 20\n", "  epochs: 1e23\n", "'train.epochs' must be an int, got '1e23'; a float is never rounded"),
    ("  seed: 42\n", "  seed: 100000000000000000000\n", "config field 'train.seed' = 100000000000000000000: must be"),
])
def test_out_of_range_yaml_values_name_the_file_and_range(tmp_path, old, new, message):
    path, _ = smoke_with(tmp_path, old, new)
    assert refusal(path).startswith(f"{path}: {message}")


def test_the_bounds_themselves_are_accepted():
    assert CRD.override(["seeds=0,4294967295", "epochs=1000000", "batch_size=65536"]).seeds == (0, 4294967295)
    cfg = load_config(SMOKE_YAML, ["train.seed=4294967295", "data.image_size=4096", "train.epochs=1000000"])
    assert (cfg.train.seed, cfg.data.image_size, cfg.train.epochs) == (4294967295, 4096, 1000000)


@pytest.mark.parametrize("world_size", [0, -2])
def test_a_world_size_below_one_is_refused_for_every_config(world_size):
    message = f"world size {world_size} (memory --world-size, or torchrun's processes): must be an int >= 1"
    for cfg in (CRD, load_config(SMOKE_YAML)):
        with pytest.raises(ConfigError, match=re.escape(message)):
            memory.per_process_batch(cfg, world_size)


def test_slurm_off_cluster_is_one_line_with_the_fix(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no sbatch, no srun
    fix = ("run the sweep on the cluster's login node, or try the same job arrays here with --launcher slurm-local")
    with pytest.raises(ConfigError, match=re.escape(f"--launcher slurm: this machine has no Slurm (sbatch and srun "
                                                    f"not on PATH); {fix}")):
        submit_sweep([CRD], folder=tmp_path / "slurm")
    assert not (tmp_path / "slurm").exists()
    for command in ("sbatch", "srun"):  # stand-ins: a machine with Slurm's commands passes the check
        (tmp_path / command).write_text("#!/bin/sh\n")
        (tmp_path / command).chmod(0o755)
    check_slurm()


def test_a_failed_task_reports_its_own_error_line():
    err = RuntimeError("Job (task=0) failed during processing with trace:\n----\nTraceback ...\n"
                       "You can check full logs at paths:\n  - /x/1_0_log.err\n  - /x/1_0_log.out")
    stderr = "Traceback (most recent call last):\n  File ...\nValueError: the task's own error\n\n"
    assert task_error(SimpleNamespace(stderr=lambda: stderr), err) == "ValueError: the task's own error"
    assert task_error(SimpleNamespace(stderr=lambda: None), err) == "Job (task=0) failed during processing with trace:"
    assert error_line("x" * 1000).endswith("...") and len(error_line("x" * 1000)) == 303
    assert error_line("") == "no output"


def test_the_cli_runs_slurm_local_through_submitits_local_executor(monkeypatch):
    from desupcon.__main__ import main
    from desupcon.study import slurm

    calls = []
    monkeypatch.setattr(slurm, "submit_sweep", lambda grid, **kwargs: calls.append((grid, kwargs["cluster"])))
    assert main(["sweep", "02_baselines", "--launcher", "slurm-local"]) == 0
    assert main(["sweep", "02_baselines", "--launcher", "slurm"]) == 0
    assert calls == [("02_baselines", "local"), ("02_baselines", "slurm")]


@pytest.mark.slow
def test_a_failed_slurm_local_task_names_its_error(monkeypatch, tmp_path):
    """A real task on submitit's local executor whose run has a corrupted checkpoint (as a bad disk leaves it)."""
    pytest.importorskip("submitit")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    cfg = SMOKE.student_config("undistilled", **TINY)
    path = checkpoint_path(cfg.name)
    path.parent.mkdir(parents=True)
    path.write_bytes(b"PK\x03\x04 cut short by a bad copy")
    with pytest.raises(SweepError) as err:
        submit_sweep([cfg], cluster="local", folder=tmp_path / "slurm", timeout_min=5)
    message = str(err.value)
    assert re.fullmatch(rf"1 of 1 runs failed: {re.escape(cfg.name)}: desupcon\.core\.errors\.CheckpointError: "
                        rf"checkpoint {re.escape(str(path))} .* \(log: .*_log\.err\)", message), message
    assert [row["status"] for row in err.value.rows] == ["failed"]


CLI = [  # (arguments, the start of the one line after "error: ")
    (["train", "crd", "--profile", "smoke", "--set", "seeds=-1"], "config field 'seeds' = (-1,): must be ints >= 0"),
    (["pretrain", str(SMOKE_YAML), "--set", "data.image_size=100000"],
     f"{SMOKE_YAML}: config field 'data.image_size' = 100000: must be >= 8 and <= 4,096"),
    (["memory", "crd", "--profile", "smoke", "--world-size", "0"], "world size 0 (memory --world-size"),
    (["pretrain", "BOMB"], "BOMB, line "),
    (["sweep", "02_baselines", "--launcher", "slurm"], "--launcher slurm: this machine has no Slurm"),
]


@pytest.mark.slow
@pytest.mark.parametrize("argv,message", CLI, ids=[" ".join(a[:2]) for a, _ in CLI])
def test_cli_exits_2_with_one_line(tmp_path, home, argv, message):
    bomb, _ = smoke_with(tmp_path, "  knn_k: 200", BILLION_LAUGHS, "bomb.yaml")
    argv = [str(bomb) if a == "BOMB" else a for a in argv]
    env = {"PATH": str(tmp_path), "DESUPCON_HOME": str(home), "PYTHONPATH": str(REPOSITORY)}
    out = subprocess.run([sys.executable, "-m", "desupcon", *argv], capture_output=True, text=True, env=env,
                         timeout=120)
    assert out.returncode == 2, out.stderr
    assert out.stderr.startswith("error: " + message.replace("BOMB", str(bomb))) and out.stderr.count("\n") == 1
    assert not home.exists()  # nothing was trained or written
