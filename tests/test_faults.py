"""Faults that must never give a wrong result: bit rot, divergence, full disks, retrained teachers.

Each test injects one fault, asserts the exact message (one line naming the file or field and the
fix) and that nothing earlier was lost. Training runs are tiny: the smoke profile on 256 digits
training images and one thread.
"""

import argparse
import ast
import re
import shutil
import subprocess
import zipfile
from pathlib import Path

import pytest
import torch
import torch.nn as nn

import desupcon
from desupcon.__main__ import build_parser, main
from desupcon.core import artefacts as store
from desupcon.core.artefacts import atomic_save, atomic_write_json, load_checkpoint, read_json
from desupcon.core.checks import GRAD_NORM_BOUND, LOSS_BOUND, WEIGHT_BOUND
from desupcon.core.errors import ArtefactWriteError, CheckpointError, ConfigError, DivergenceError, StaleRunError
from desupcon.core.paths import checkpoint_path, comprehensive_path, log_path
from desupcon.images.datasets import Data, ImageDataset, load_splits
from desupcon.engine import evaluate, trainer as engine
from desupcon.engine.evaluate import EvalConfig
from desupcon.methods.distill import registry
from desupcon.methods.distill.task import DistillationTask, load_model
from desupcon.methods.ssl.config import MocoConfig
from desupcon.study.profiles import PROFILES
from desupcon.study.train import train

SMOKE = PROFILES["smoke"]
pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]


@pytest.fixture(scope="module")
def tiny():
    """256 training images (4 steps of 64 per epoch) and the whole test split, on the CPU."""
    tr, te = load_splits("digits")
    return Data(ImageDataset(tr.name, tr.images[:256].clone(), tr.labels[:256].clone(), tr.num_classes,
                             tr.mean, tr.std), te)


def student(**changes):
    return SMOKE.student_config("undistilled", **{"epochs": 2, "probe_iterations": 3, **changes})


def distilled(**changes):
    """A CRD student on a one-epoch teacher and projection head (every run of the chain is tiny)."""
    cfg = SMOKE.student_config("crd", epochs=1, probe_iterations=2, **changes)
    return cfg.override(["teacher.epochs=1", "teacher.teacher.epochs=1", "teacher.probe_iterations=2",
                         "teacher.teacher.probe_iterations=2"])


def temp_files(root: Path) -> list[Path]:
    return sorted(root.rglob("*.tmp")) if root.exists() else []


def flip_bytes_in_largest_record(path: Path) -> str:
    """Flip 8 bytes in the middle of the checkpoint's largest tensor record; return the record's name."""
    with zipfile.ZipFile(path) as archive:
        record = max(archive.infolist(), key=lambda info: info.file_size)
    data = bytearray(path.read_bytes())
    header = record.header_offset  # the local header: 30 bytes, then the name and the extra field
    name_length, extra_length = (int.from_bytes(data[header + i:header + i + 2], "little") for i in (26, 28))
    middle = header + 30 + name_length + extra_length + record.file_size // 2
    data[middle:middle + 8] = bytes(b ^ 0xFF for b in data[middle:middle + 8])
    path.write_bytes(bytes(data))
    return record.filename


# ---------------------------------------------------------------- integrity


def test_bit_rot_in_a_checkpoint_is_refused_and_never_loaded(tiny, home):
    cfg = student(epochs=1, seeds=(21,))
    name, path = cfg.run_name(21), checkpoint_path(cfg.run_name(21))
    first = train(cfg, data=tiny)
    record = flip_bytes_in_largest_record(path)
    damaged = path.read_bytes()
    torch.load(path, weights_only=True)  # torch itself loads the damaged weights without a word
    expected = (f"checkpoint {path} is damaged: its record '{record}' fails its CRC-32 checksum (bit rot or a bad "
                f"copy), so it was not loaded; retrain it with FORCE_RETRAIN=True (or --force-retrain)")
    for attempt in (lambda: load_checkpoint(path), lambda: train(cfg, data=tiny), lambda: load_model(cfg, seed=21)):
        with pytest.raises(CheckpointError) as err:
            attempt()
        assert str(err.value).startswith(expected) and len(str(err.value).splitlines()) == 1, str(err.value)
    assert path.read_bytes() == damaged  # never overwritten without being asked
    again = train(cfg, data=tiny, force_retrain=True)  # the documented fix
    assert load_checkpoint(path)["complete"] and again["mean"]["probe_top1"] == first["mean"]["probe_top1"]


def test_a_student_never_trains_on_a_damaged_teacher(tiny, home):
    cfg = distilled()
    train(cfg.teacher, data=tiny)
    teacher_path = checkpoint_path(cfg.teacher.teacher.name)
    flip_bytes_in_largest_record(teacher_path)
    with pytest.raises(CheckpointError, match=re.escape(f"checkpoint {teacher_path} is damaged")):
        train(cfg, data=tiny)
    assert not checkpoint_path(cfg.name).exists()  # nothing was trained on it


def test_bit_rot_in_json_artefacts_is_refused(tiny, home, capsys):
    cfg = student(epochs=1, seeds=(22,))
    train(cfg, data=tiny)
    log, results = log_path(cfg.run_name(22)), comprehensive_path(cfg.results_group)
    for path in (log, results):
        text = path.read_text()
        number = re.search(r'"test_acc": (\d)', text)
        path.write_text(text[:number.start(1)] + str((int(number[1]) + 1) % 10) + text[number.end(1):])  # valid JSON
        with pytest.raises(CheckpointError) as err:
            read_json(path)
        assert str(err.value).startswith(f"{path} fails its SHA-256 checksum: its content changed after it was "
                                         f"written (bit rot, a bad copy or a hand edit): "), str(err.value)
    damaged = results.read_bytes()
    capsys.readouterr()
    with pytest.raises(CheckpointError, match=re.escape(f"{results} fails its SHA-256 checksum")):
        train(cfg, data=tiny)  # the cached run records its summary: the damaged results file is left as it is
    assert results.read_bytes() == damaged
    out = capsys.readouterr().out  # while the damaged log of the cached run was rewritten from its checkpoint
    assert (f"[cache] {cfg.run_name(22)}: its training log {log} was damaged (fails its SHA-256 checksum: its "
            f"content changed after it was written (bit rot, a bad copy or a hand edit): delete it or restore it "
            f"from a backup: its run rewrites it when it trains again); rewritten from the checkpoint") in out, out
    assert read_json(log)["results"] == load_checkpoint(checkpoint_path(cfg.run_name(22)))["results"]
    results.unlink()  # the documented fix for the results file: it is rebuilt from the cached runs
    train(cfg, data=tiny)
    assert set(read_json(results)) == {cfg.name}
    path = atomic_write_json({"a": 1}, home / "plain.json")
    path.write_text('{"a": 1}')  # valid JSON without the checksum: not ours, or edited
    with pytest.raises(CheckpointError, match="has no checksum"):
        read_json(path)


def test_a_missing_or_truncated_log_of_a_cached_run_is_rewritten(tiny, home, capsys):
    cfg = student(epochs=1, seeds=(23,))
    train(cfg, data=tiny)
    log = log_path(cfg.run_name(23))
    whole = read_json(log)
    log.unlink()
    capsys.readouterr()
    train(cfg, data=tiny)
    assert (f"[cache] {cfg.run_name(23)}: its training log {log} was missing; rewritten from the checkpoint"
            in capsys.readouterr().out)
    assert read_json(log) == whole
    log.write_text(log.read_text()[:50])
    train(cfg, data=tiny)
    assert "was damaged (is not valid JSON" in capsys.readouterr().out and read_json(log) == whole


def test_a_checkpoint_with_only_format_and_config_names_the_missing_keys(home):
    path = home / "pth_models" / "cut.pth"
    atomic_save({"format": 1, "config": student().to_dict()}, path)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path)
    assert str(err.value).startswith(f"checkpoint {path} lacks the keys ['run_name', 'complete', 'epoch', "
                                     f"'history', 'model', 'optimizer', 'rng'] of a desupcon checkpoint")


# ---------------------------------------------------------------- lineage


def test_a_changed_teacher_makes_its_students_stale_and_force_retrain_cascades(tiny, home, capsys):
    cfg = distilled()
    first = train(cfg, data=tiny)
    teacher, projection = cfg.teacher.teacher, cfg.teacher
    lineage = read_json(log_path(cfg.name))["lineage"]
    assert lineage["teacher"]["run"] == projection.name and len(lineage["teacher"]["fingerprint"]) == 64
    assert set(lineage) == {"teacher", "data.train", "data.test"} and len(lineage["data.train"]["fingerprint"]) == 64

    # the teacher's file now holds other weights (another GPU run, a copy from elsewhere): every run on it is stale
    path = checkpoint_path(teacher.name)
    ckpt = load_checkpoint(path)
    ckpt["model"]["classifier.bias"] += 0.01
    atomic_save(ckpt, path)
    student_bytes = checkpoint_path(cfg.name).read_bytes()
    with pytest.raises(StaleRunError) as err:
        train(cfg, data=tiny)
    message = str(err.value)
    assert message.startswith(f"cached run {checkpoint_path(projection.name)} was built from another teacher: "
                              f"teacher run {teacher.name} had fingerprint "), message
    assert message.endswith("now; retrain it with --force-retrain (FORCE_RETRAIN=True in a notebook), or delete the file")
    assert checkpoint_path(cfg.name).read_bytes() == student_bytes  # nothing overwritten

    capsys.readouterr()
    train(teacher, data=tiny, force_retrain=True)  # retraining the teacher retrains what was built on it
    out = capsys.readouterr().out
    assert f"[cascade] {projection.name}: built on {teacher.name}, which was retrained; retraining it" in out
    assert f"[cascade] {cfg.name}: built on {projection.name}, which was retrained; retraining it" in out
    assert f"[done] {cfg.name}" in out
    again = train(cfg, data=tiny)  # now consistent: loaded from the cache
    assert f"[cache] {cfg.name}: loaded" in capsys.readouterr().out
    assert again["mean"]["probe_top1"] == first["mean"]["probe_top1"]  # the CPU retrain is deterministic


# ---------------------------------------------------------------- divergence


def test_an_exploding_loss_stops_training_and_keeps_the_good_epoch(tiny, home, monkeypatch):
    cfg = student(seeds=(24,))
    name, path = cfg.run_name(24), checkpoint_path(cfg.run_name(24))
    real_f, calls = registry.F, []

    class ExplodesInEpoch2:
        def __getattr__(self, attr):
            return getattr(real_f, attr)

        @staticmethod
        def cross_entropy(*args, **kwargs):
            calls.append(1)
            loss = real_f.cross_entropy(*args, **kwargs)
            return loss * 1e7 if len(calls) == 6 else loss  # epoch 2, step 2: huge but finite

    monkeypatch.setattr(registry, "F", ExplodesInEpoch2())
    with pytest.raises(DivergenceError) as err:
        train(cfg, data=tiny)
    message = str(err.value)
    assert re.match(rf"{re.escape(name)}: the loss became [\d.e+]+ \(bound 1e\+06\) at epoch 2, step 2 \(last good "
                    rf"loss [\d.]+ at step 1\); training stopped; likely causes: a learning rate that is too high",
                    message), message
    assert message.endswith(f"the last good checkpoint {path} (epoch 1) is kept, and a rerun resumes from it")
    ckpt = load_checkpoint(path)
    assert ckpt["epoch"] == 1 and not ckpt["complete"]


def test_exploded_weights_are_never_saved_nor_marked_complete(tiny, home, monkeypatch):
    cfg = student(epochs=1, seeds=(25,))
    name, path = cfg.run_name(25), checkpoint_path(cfg.run_name(25))
    real_step, steps = engine.Trainer.step, []

    def last_update_explodes(self, idx):
        out = real_step(self, idx)
        steps.append(1)
        if len(steps) == 4:  # the epoch's last update: weights of 1e30, while that step's loss was still fine
            with torch.no_grad():
                self.task.parameters()[0].mul_(1e30)
        return out

    monkeypatch.setattr(engine.Trainer, "step", last_update_explodes)
    with pytest.raises(DivergenceError) as err:
        train(cfg, data=tiny)
    assert str(err.value) == (f"{name}: a weight became {err.value.args[0].split('became ')[1].split(' ')[0]} "
                              f"(bound {WEIGHT_BOUND:g}) in epoch 1; training stopped before the epoch was saved; "
                              f"{DistillationTask.divergence_advice}; no checkpoint of this run exists yet ({path}), so a rerun starts "
                              f"from the beginning")
    assert not path.exists() and not log_path(name).exists()


def test_the_gradient_norm_bound_and_fp16():
    losses = torch.ones(3)
    with pytest.raises(DivergenceError, match=r"run: the gradient norm became 1e\+07 \(bound 1e\+06\) at epoch 1, "
                                              r"step 2 \(last good loss 1.0000 at step 1\)"):
        engine.check_divergence(losses, torch.tensor([1.0, 1e7, 1.0]), 0, "run")
    with pytest.raises(DivergenceError, match="the gradient norm became nan"):
        engine.check_divergence(losses, torch.tensor([1.0, float("nan"), 1.0]), 0, "run")
    engine.check_divergence(losses, torch.tensor([1.0, float("inf"), 1.0]), 0, "run", fp16=True)  # the scaler skips it
    engine.check_divergence(torch.full((3,), LOSS_BOUND), torch.full((3,), GRAD_NORM_BOUND), 0, "run")  # at the bound


class NaNEncoder(nn.Module):
    def forward(self, x):
        f = torch.full((x.shape[0], 4), float("nan"))
        return f, f


def test_non_finite_features_reach_neither_the_evaluation_nor_a_plot(tiny, home, monkeypatch):
    with pytest.raises(DivergenceError, match="some run: evaluation: 1024 of 1024 values of the train features are "
                                              "NaN or infinite; the network diverged"):
        evaluate.evaluate_encoder(NaNEncoder(), tiny, EvalConfig(), 0, where="some run: evaluation")
    from desupcon.analysis import plots
    with pytest.raises(ValueError, match="hold 40 NaN or infinite values: a diverged network is not plotted"):
        plots.plot_tsne(torch.full((10, 4), float("nan")), torch.arange(10), home / "t.png")

    cfg = student(epochs=1, seeds=(26,))
    name, path = cfg.run_name(26), checkpoint_path(cfg.run_name(26))
    from desupcon.methods.distill.task import DistillationTask
    monkeypatch.setattr(DistillationTask, "encoder", lambda self: NaNEncoder())
    with pytest.raises(DivergenceError) as err:
        train(cfg, data=tiny)
    assert str(err.value).startswith(f"{name}: evaluation after epoch 1: ")
    assert str(err.value).endswith(f"the last good checkpoint {path} (epoch 1) is kept, and a rerun resumes from it")
    assert not load_checkpoint(path)["complete"]  # never marked complete


@pytest.mark.parametrize("field", ["lr", "weight_decay", "temperature", "alpha", "beta", "kd_temperature",
                                   "kd_weight", "hybrid_lambda", "bank_momentum", "sgd_momentum"])
@pytest.mark.parametrize("value", [float("inf"), float("-inf"), float("nan"), 1e6])
def test_validation_rejects_non_finite_and_out_of_range_hyperparameters(field, value):
    with pytest.raises(ConfigError) as err:
        student().replace(**{field: value})
    assert str(err.value).startswith(f"config field '{field}' = {value!r}: must be "), str(err.value)


@pytest.mark.parametrize("key", ["train.base_lr", "train.weight_decay", "train.temperature", "train.momentum",
                                 "eval.knn_temperature"])
@pytest.mark.parametrize("value", ["inf", "nan", "1e6"])
def test_moco_validation_rejects_non_finite_and_out_of_range_values(key, value):
    with pytest.raises(ConfigError, match=re.escape(f"config field '{key}' = {float(value)!r}: must be ")):
        MocoConfig().override([f"{key}={value}"])


# ---------------------------------------------------------------- full disks and permissions


def _tmpfs(folder: Path, size: str) -> bool:
    folder.mkdir(parents=True)
    return subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                          capture_output=True).returncode == 0


def test_a_full_disk_names_the_file_and_the_bytes_and_the_run_resumes_after_space_is_freed(tiny, tmp_path,
                                                                                          monkeypatch, capsys):
    """A real full file system: a 40 MB tmpfs (skipped where mounting is not allowed)."""
    root = tmp_path / "small_disk"
    if not _tmpfs(root, "40m"):
        pytest.skip("mounting a tmpfs needs root and CAP_SYS_ADMIN")
    try:
        monkeypatch.setenv("DESUPCON_HOME", str(root))
        cfg = student(seeds=(27,))
        name, path = cfg.run_name(27), checkpoint_path(cfg.run_name(27))
        real_save, filler = engine._save, root / "filler.bin"

        def fill_the_disk_after_epoch_1(*args, **kwargs):
            real_save(*args, **kwargs)
            if not filler.exists():  # leave 1 MB: less than the next checkpoint
                filler.write_bytes(b"\0" * (shutil.disk_usage(root).free - 2 ** 20))

        monkeypatch.setattr(engine, "_save", fill_the_disk_after_epoch_1)
        epoch_1 = None
        with pytest.raises(ArtefactWriteError) as err:
            train(cfg, data=tiny)
        message = str(err.value)
        assert re.fullmatch(rf"cannot write {re.escape(str(path))} \(No space left on device\): [\d,]+ bytes needed, "
                            rf"[\d,]+ bytes free in {re.escape(str(path.parent))}; nothing was lost \({path.name} is "
                            rf"as it was before, no temp file is left\): free space or make the folder writable \(or "
                            rf"set DESUPCON_HOME elsewhere\), then rerun: training resumes from its last checkpoint",
                            message), message
        epoch_1 = load_checkpoint(path)
        assert epoch_1["epoch"] == 1 and temp_files(root) == []
        filler.unlink()  # space freed: the same command resumes
        monkeypatch.setattr(engine, "_save", real_save)
        capsys.readouterr()
        train(cfg, data=tiny)
        assert f"[resume] {name}: from epoch 1 of 2" in capsys.readouterr().out
        assert load_checkpoint(path)["complete"] and temp_files(root) == []
        resumed_from = {"epoch": 1, "fingerprint": store.content_hash(epoch_1["model"])}
        assert read_json(log_path(name))["resumes"] == [resumed_from]  # the run's identity names what it resumed
    finally:
        subprocess.run(["umount", str(root)], capture_output=True)


def test_an_unwritable_output_folder_is_one_line_with_exit_code_2(tiny, home, monkeypatch, capsys):
    def no_permission(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(store.tempfile, "mkstemp", no_permission)
    cfg = student(epochs=1, seeds=(28,))
    with pytest.raises(ArtefactWriteError, match=re.escape(f"cannot write {checkpoint_path(cfg.run_name(28))} "
                                                            f"(Permission denied): ")):
        train(cfg, data=tiny)
    assert main(["train", "undistilled", "--profile", "smoke", "--set", "epochs=1", "probe_iterations=1"]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]  # not tqdm's
    assert len(errors) == 1 and errors[0].startswith("error: cannot write ") and "(Permission denied)" in errors[0]


# ---------------------------------------------------------------- advice that works as written


def _flags_in_messages() -> set[str]:
    """Every ``--flag`` in a string of the package's code (error messages and their advice)."""
    flags = set()
    for source in Path(desupcon.__file__).parent.rglob("*.py"):
        for node in ast.walk(ast.parse(source.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                flags |= set(re.findall(r"(?<![\w-])--[a-z][a-z-]*[a-z](?![\w])", node.value))
    return flags


def test_every_flag_a_message_names_exists_on_the_commands_that_raise_it():
    commands = {name: sub for action in build_parser()._actions if isinstance(action, argparse._SubParsersAction)
                for name, sub in action.choices.items()}
    options = lambda command: {s for a in commands[command]._actions for s in a.option_strings}
    flags = _flags_in_messages()
    assert "--force-retrain" in flags  # the advice of the cache, checkpoint and lineage errors
    for command in ("train", "pretrain"):  # both train runs, so both raise those errors
        assert "--force-retrain" in options(command), command
    every = set().union(*(options(c) for c in commands))
    assert flags <= every, f"flags named in messages but on no command: {sorted(flags - every)}"
