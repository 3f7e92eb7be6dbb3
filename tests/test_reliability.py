"""Reliability: no lost work, no stale results, no unsafe loads.

* a run killed with SIGKILL at random points resumes to bit-identical weights, history and results;
* artefact writes are atomic (a failing write keeps the previous file, leaves no temp file, and
  raises ``ArtefactWriteError`` naming the file, the bytes needed and the free space);
* truncated checkpoints and JSON files raise ``CheckpointError`` naming the file and the fix;
* a cached checkpoint with a different config is never loaded (``StaleRunError`` names the fields);
* a NaN loss stops training with ``DivergenceError`` and keeps the last good checkpoint;
* checkpoints load with ``weights_only=True``: a pickle carrying code is refused, never run;
* a bad config is refused before any file is written.

Training runs use the smoke profile on a slice of the digits training split (the whole test split)
and one thread, so they take a second or two on a CPU.
"""

import ast
import dataclasses
import inspect
import json
import os
import pickle
import random
import re
import shlex
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
import torch

import desupcon
from desupcon.core import artefacts as store
from desupcon.core.artefacts import atomic_save, atomic_write_json, load_checkpoint, read_json, update_json
from desupcon.core.errors import ArtefactWriteError, CheckpointError, ConfigError, DivergenceError, StaleRunError
from desupcon.core.paths import checkpoint_path, comprehensive_path, log_path
from desupcon.engine import trainer as engine
from desupcon.engine.runs import load_results, record
from desupcon.methods.distill import registry
from desupcon.methods.distill.task import load_model
from desupcon.study.profiles import PROFILES
from desupcon.study.train import train

SMOKE = PROFILES["smoke"]
WALL_CLOCK = {"seconds", "train_seconds"}  # the only fields allowed to differ between two identical runs
pytestmark = pytest.mark.slow


def small_data(n_train):
    """The first ``n_train`` digits training images (the whole test split), on the CPU."""
    from desupcon.images.datasets import Data, ImageDataset, load_splits

    tr, te = load_splits("digits")
    return Data(ImageDataset(tr.name, tr.images[:n_train].clone(), tr.labels[:n_train].clone(), tr.num_classes,
                             tr.mean, tr.std), te)


RUNNER = textwrap.dedent(inspect.getsource(small_data)) + textwrap.dedent("""
    import json, sys
    import torch
    torch.set_num_threads(1)
    from desupcon.methods.distill.config import RunConfig
    from desupcon.study.train import train
    train(RunConfig.from_dict(json.loads(sys.argv[1])), data=small_data(int(sys.argv[2])))
""")


@pytest.fixture(scope="module")
def tiny():
    """256 training images: 4 steps of 64 per epoch."""
    return small_data(256)


def tiny_student(**changes):
    return SMOKE.student_config("undistilled", **{"epochs": 2, "probe_iterations": 3, **changes})


def temp_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*.tmp")) if root.exists() else []


def assert_same(a, b, where="checkpoint"):
    """Recursive equality: tensors with ``torch.equal`` (bit-identical), wall-clock fields skipped."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape, where
        assert torch.equal(a, b), f"{where} differs (max abs diff {(a.double() - b.double()).abs().max().item()})"
    elif isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b), f"{where}: keys {sorted(set(a) ^ set(b))} differ"
        for k in a:
            if k not in WALL_CLOCK:
                assert_same(a[k], b[k], f"{where}[{k!r}]")
    elif isinstance(a, (list, tuple)):
        assert isinstance(b, (list, tuple)) and len(a) == len(b), f"{where}: lengths differ"
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{where}[{i}]")
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


# ---------------------------------------------------------------- 1. resume after SIGKILL


def _logged(run_name: str, home: Path) -> list:
    """The epochs in a run's JSON log so far (written atomically right after each epoch checkpoint)."""
    try:
        return json.loads((home / "json_results" / "training_logs" / f"{run_name}.json").read_text())["epochs"]
    except (FileNotFoundError, json.JSONDecodeError, KeyError):
        return []


def _runner(cfg, n_train, home: Path, tmp_path: Path):
    """The command and environment that train ``cfg`` (one thread) in a fresh Python process."""
    script = tmp_path / "runner.py"
    script.write_text(RUNNER)
    env = {**os.environ, "DESUPCON_HOME": str(home), "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    return [sys.executable, str(script), json.dumps(cfg.to_dict()), str(n_train)], env


def _kill_and_resume(cfg, n_train, home: Path, rng: random.Random, tmp_path: Path):
    """Train ``cfg`` in subprocesses killed (SIGKILL) twice at random points, then run it to the end.

    Each killed process is waited for until one more epoch checkpoint than it started from exists,
    then killed after a random part of an epoch (mid-epoch, mid-save or mid-evaluation); the epoch's
    length is the one the run logged.
    Returns the processes' outputs and the kill points for the failure messages.
    """
    args, env = _runner(cfg, n_train, home, tmp_path)
    name, points, outputs = cfg.name, [], []
    for attempt in range(3):
        start_epoch = len(_logged(name, home))
        proc = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        if attempt < 2:
            deadline = time.time() + 300
            while proc.poll() is None and len(_logged(name, home)) <= start_epoch and time.time() < deadline:
                time.sleep(0.02)
            delay = rng.uniform(0.0, 0.9) * (_logged(name, home) or [{"seconds": 1.0}])[-1]["seconds"]
            time.sleep(delay)
            killed = proc.poll() is None
            if killed:
                proc.send_signal(signal.SIGKILL)
            points.append(f"attempt {attempt + 1}: epoch {len(_logged(name, home))} logged + {delay:.2f}s "
                          f"({'killed' if killed else 'had finished'})")
        out, _ = proc.communicate(timeout=300)
        outputs.append(out)
        if attempt < 2 and proc.returncode == -signal.SIGKILL:
            continue
        assert proc.returncode == 0, f"{points}\n{out[-3000:]}"
    return outputs, points


@pytest.mark.parametrize("method", ["undistilled", "lw_supcrd"])
def test_resume_after_sigkill_is_bit_identical(method, tmp_path, monkeypatch):
    n_train = 384  # 6 steps of 64 per epoch
    if method == "undistilled":
        cfg = SMOKE.student_config("undistilled", epochs=3, probe_iterations=2)
    else:  # a memory bank (its state is part of the checkpoint) and the adapting teacher head
        cfg = SMOKE.student_config("lw_supcrd", epochs=3, probe_iterations=2, bank_k=32, temperature=0.1)
    teachers = tmp_path / "teachers"
    if cfg.teacher is not None:  # teacher + projection head on the same images (a run's inputs are its whole chain's)
        with monkeypatch.context() as mp:
            mp.setenv("DESUPCON_HOME", str(teachers))
            train(cfg.teacher, data=small_data(n_train))
    homes = {}
    for kind in ("reference", "killed"):
        homes[kind] = tmp_path / kind
        if cfg.teacher is not None:  # a copy of both in each home (never retrained there)
            (homes[kind] / "pth_models").mkdir(parents=True)
            for t in (cfg.teacher.teacher, cfg.teacher):
                shutil.copy(teachers / "pth_models" / f"{t.name}.pth", homes[kind] / "pth_models")

    # the uninterrupted reference, alongside and also in a fresh process (same code, same settings)
    args, env = _runner(cfg, n_train, homes["reference"], tmp_path)
    reference = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seed = random.randrange(10 ** 6)
    try:
        outputs, points = _kill_and_resume(cfg, n_train, homes["killed"], random.Random(seed), tmp_path)
    finally:
        ref_out, _ = reference.communicate(timeout=300)
    assert reference.returncode == 0, ref_out[-3000:]
    context = f"kill points (random seed {seed}): {points}"
    assert "killed" in points[0], context  # the first process is always killed mid-run
    assert re.search(rf"\[resume\] {re.escape(cfg.name)}: from epoch [1-3] of 3", outputs[1]), \
        context + outputs[1][-2000:]
    if cfg.teacher is not None:  # the copied teacher was reused, not retrained
        assert f"[cache] {cfg.teacher.name}: loaded" in outputs[-1]

    monkeypatch.setenv("DESUPCON_HOME", str(homes["reference"]))
    ref_ckpt = load_checkpoint(checkpoint_path(cfg.name))
    monkeypatch.setenv("DESUPCON_HOME", str(homes["killed"]))
    resumed_ckpt = load_checkpoint(checkpoint_path(cfg.name))
    assert resumed_ckpt["complete"] and resumed_ckpt["epoch"] == 3
    # the resumed run's identity names the epochs it resumed from (a resume killed before its next save is
    # not kept); the uninterrupted one has none
    announced = {int(e) for out in outputs for e in re.findall(rf"\[resume\] {re.escape(cfg.name)}: from epoch (\d)", out)}
    resumed_from = [r["epoch"] for r in resumed_ckpt.pop("resumes")]
    assert resumed_from and set(resumed_from) <= announced and resumed_from == sorted(resumed_from), context
    assert ref_ckpt.pop("resumes") == [], context
    # model, optimiser, scheduler, RNG states, bank, teacher head, history and results: bit-identical
    assert_same(resumed_ckpt, ref_ckpt, context)
    assert_same(read_json(log_path(cfg.name))["results"], ref_ckpt["results"], "logged results")
    if cfg.bank_k:
        assert "bank" in resumed_ckpt and "teacher_head" in resumed_ckpt
    assert temp_files(homes["killed"]) == [], "a killed save left its temp file behind"


# ---------------------------------------------------------------- 2. atomic artefacts, truncated files


def test_failed_write_keeps_the_previous_checkpoint_and_leaves_no_temp_file(tiny, home, monkeypatch, capsys,
                                                                            one_thread):
    cfg = tiny_student(seeds=(7,))
    name, path = cfg.run_name(7), checkpoint_path(cfg.run_name(7))
    real_write, calls, before = store._write_file, [], {}

    def disk_full_on_second_checkpoint(fd, data):
        calls.append(bytes(data[:2]) == b"PK")
        if sum(calls) == 2:  # epoch 2's checkpoint: half written, then the disk is full
            before["bytes"], before["size"] = path.read_bytes(), len(data)
            os.write(fd, bytes(data[: len(data) // 2]))
            raise OSError(28, "No space left on device")
        return real_write(fd, data)

    monkeypatch.setattr(store, "_write_file", disk_full_on_second_checkpoint)
    with pytest.raises(ArtefactWriteError) as err:
        train(cfg, data=tiny)
    message = str(err.value)
    assert message.startswith(f"cannot write {path} (No space left on device): {before['size']:,} bytes needed, ")
    assert "bytes free in" in message and "nothing was lost" in message and len(message.splitlines()) == 1
    assert path.read_bytes() == before["bytes"]  # the epoch-1 checkpoint is intact ...
    ckpt = load_checkpoint(path)
    assert ckpt["epoch"] == 1 and not ckpt["complete"]
    assert temp_files(home) == []  # ... and no half-written temp file is left

    monkeypatch.setattr(store, "_write_file", real_write)
    capsys.readouterr()
    train(cfg, data=tiny)
    assert f"[resume] {name}: from epoch 1 of 2" in capsys.readouterr().out
    assert load_checkpoint(path)["complete"]

    # the same for a JSON artefact: the write callback fails half-way
    log = log_path(name)
    previous = log.read_bytes()

    def half_then_fail(fd, data):
        os.write(fd, bytes(data[: len(data) // 2]))
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(store, "_write_file", half_then_fail)
    with pytest.raises(ArtefactWriteError, match=re.escape(f"cannot write {log} (No space left on device)")):
        atomic_write_json({"run_name": name, "complete": False}, log)
    assert log.read_bytes() == previous and read_json(log)["complete"]
    assert temp_files(home) == []


def test_leftover_temp_file_of_a_killed_writer_is_removed(home):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    path = home / "pth_models" / "run.pth"
    atomic_save({"format": 1, "config": {}}, path)
    stale = path.parent / f".run.pth.{store._host()}-{dead.pid}.abcd1234.tmp"  # left by a SIGKILLed writer
    stale.write_bytes(b"half")
    mine = path.parent / f".run.pth.{store._host()}-{os.getpid()}.efgh5678.tmp"  # a live writer's: kept
    mine.write_bytes(b"in progress")
    other = path.parent / ".other.pth.otherhost-1.ijkl9012.tmp"  # another file's or another host's: kept
    other.write_bytes(b"x")
    atomic_save({"format": 1, "config": {}, "v": torch.ones(2)}, path)
    assert not stale.exists() and mine.exists() and other.exists()
    assert torch.equal(torch.load(path, weights_only=True)["v"], torch.ones(2))  # the new version, whole
    plain = home / "plain"
    plain.write_bytes(b"")  # artefacts get the permissions of any new file, not mkstemp's 0o600
    assert path.stat().st_mode & 0o777 == plain.stat().st_mode & 0o777


def test_truncated_checkpoint_names_the_file_and_force_retrain_replaces_it(tiny, home, monkeypatch, capsys,
                                                                          one_thread):
    cfg = tiny_student(seeds=(8,))
    name, path = cfg.run_name(8), checkpoint_path(cfg.run_name(8))
    first = train(cfg, data=tiny)
    whole = path.read_bytes()
    for cut in (whole[: len(whole) // 2], whole[:0], whole[len(whole) // 2:]):
        path.write_bytes(cut)
        with pytest.raises(CheckpointError) as err:
            load_checkpoint(path)
        message = str(err.value)
        assert str(path) in message and "truncated or corrupted" in message, message
        assert "FORCE_RETRAIN=True" in message and "--force-retrain" in message
        assert len(message.splitlines()) == 1 and len(message) < 600, message
    with pytest.raises(CheckpointError, match=re.escape(str(path))):
        train(cfg, data=tiny)  # never silently retrained over, never half-loaded
    with pytest.raises(CheckpointError, match="truncated or corrupted"):
        load_model(cfg, seed=8)

    capsys.readouterr()
    again = train(cfg, data=tiny, force_retrain=True)
    assert f"[done] {name}" in capsys.readouterr().out
    assert load_checkpoint(path)["complete"]
    assert_same(again["runs"], first["runs"])  # a retrain from scratch is deterministic too


def test_truncated_json_raises_naming_the_file_and_record_never_drops_other_runs(tiny, home, one_thread):
    cfg = tiny_student(epochs=1, seeds=(9,))
    summary = train(cfg, data=tiny)
    log = log_path(cfg.run_name(9))
    log.write_text(log.read_text()[:100])
    with pytest.raises(CheckpointError) as err:
        read_json(log)
    assert str(log) in str(err.value) and "truncated or corrupted" in str(err.value)

    group = cfg.results_group
    assert group == summary["group"] == "resnet18_digits"
    results = comprehensive_path(group)
    assert results == home / "json_results" / "comprehensive_results_resnet18_digits.json"
    other = dict(summary, name="another_run")
    record(other)
    assert set(load_results(group)) == {cfg.name, "another_run"}
    results.write_bytes(results.read_bytes()[:-40])
    corrupted = results.read_bytes()
    for fail in (lambda: record(summary), lambda: load_results(group),
                 lambda: train(cfg, data=tiny)):  # the cached run records its summary again
        with pytest.raises(CheckpointError) as err:
            fail()
        assert str(results) in str(err.value) and "truncated or corrupted" in str(err.value)
        assert "rebuilt" in str(err.value)
    assert results.read_bytes() == corrupted  # left as it was: the other runs' summaries are not dropped
    results.write_bytes(b"\xff\xfe not even text")
    with pytest.raises(CheckpointError, match="truncated or corrupted"):
        read_json(results)
    results.write_text("[1, 2]")
    with pytest.raises(CheckpointError, match="not a JSON object"):
        read_json(results)

    results.unlink()  # the documented fix: delete it, it is rebuilt from the cached runs
    train(cfg, data=tiny)
    assert set(load_results(group)) == {cfg.name}


def test_concurrent_updates_of_a_shared_json_file_drop_nothing(home):
    path = home / "json_results" / "comprehensive_results_x.json"

    def add(key):
        def update(everything):
            time.sleep(0.002)  # widen the read-modify-write window
            return {**everything, key: key}
        return update

    def writer(w):
        for i in range(15):
            update_json(path, add(f"{w}-{i}"))

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(read_json(path)) == 60 and temp_files(home) == []


def test_json_artefacts_stay_valid_with_non_finite_numbers(home):
    path = atomic_write_json({"loss": float("nan"), "x": [float("inf"), 1.0]}, home / "a.json")
    assert read_json(path) == {"loss": "nan", "x": ["inf", 1.0]}


# ---------------------------------------------------------------- 3. stale-cache guard


@pytest.mark.parametrize("changes,fields", [
    ({"dataset": "cifar10"}, ["dataset: cached 'cifar10' vs requested 'digits'"]),
    ({"profile": "cifar100"}, ["profile: cached 'cifar100' vs requested 'smoke'"]),
    ({"profile": "cifar100", "dataset": "cifar100", "epochs": 50},
     ["dataset: cached 'cifar100'", "epochs: cached 50 vs requested 1", "profile: cached 'cifar100'"]),
])
def test_checkpoint_with_another_config_is_never_loaded(changes, fields, tiny, home, one_thread):
    cfg = tiny_student(epochs=1, seeds=(10,))
    path = checkpoint_path(cfg.run_name(10))
    train(cfg, data=tiny)
    ckpt = torch.load(path, weights_only=True)  # edit the stored config of a copy, put it back
    ckpt["config"].update(changes)
    atomic_save(ckpt, path)
    edited = path.read_bytes()
    for attempt in (lambda: train(cfg, data=tiny), lambda: load_model(cfg, seed=10)):
        with pytest.raises(StaleRunError) as err:
            attempt()
        message = str(err.value)
        assert str(path) in message and "FORCE_RETRAIN=True" in message, message
        for field in fields:
            assert field in message, message
        assert message.count(" vs requested ") == len(changes), message  # only the differing fields
    assert path.read_bytes() == edited  # never overwritten without being asked


# ---------------------------------------------------------------- 4. NaN / Inf guard


def test_nan_loss_stops_with_a_clear_error_and_keeps_the_last_good_checkpoint(tiny, home, monkeypatch, capsys,
                                                                               one_thread):
    cfg = tiny_student(seeds=(11,))
    name, path = cfg.run_name(11), checkpoint_path(cfg.run_name(11))
    steps, bad_step = 4, 3  # NaN from step 3 of epoch 2
    real_f, calls, seen = registry.F, [], {}  # the undistilled loss is registry._cross_entropy

    class NaNFromEpoch2:
        def __getattr__(self, attr):
            return getattr(real_f, attr)

        @staticmethod
        def cross_entropy(*args, **kwargs):
            loss = real_f.cross_entropy(*args, **kwargs)
            calls.append(loss.item())
            if len(calls) == steps + bad_step:
                seen["checkpoint"] = path.read_bytes()
            return loss * float("nan") if len(calls) >= steps + bad_step else loss

    monkeypatch.setattr(registry, "F", NaNFromEpoch2())
    with pytest.raises(DivergenceError) as err:
        train(cfg, data=tiny)
    message = str(err.value)
    last_finite = calls[steps + bad_step - 2]
    assert f"{name}: the loss became nan at epoch 2, step {bad_step}" in message, message
    assert f"last good loss {last_finite:.4f} at step {bad_step - 1}" in message, message
    for cause in ("temperature", "learning rate", "memory bank"):
        assert cause in message, message
    assert f"the last good checkpoint {path} (epoch 1) is kept, and a rerun resumes from it" in message, message
    assert path.read_bytes() == seen["checkpoint"]  # the epoch-1 checkpoint is untouched and loadable
    ckpt = load_checkpoint(path)
    assert ckpt["epoch"] == 1 and not ckpt["complete"]
    assert all(torch.isfinite(t).all() for t in ckpt["model"].values() if t.is_floating_point())

    monkeypatch.setattr(registry, "F", real_f)  # the cause is fixed: rerun
    capsys.readouterr()
    summary = train(cfg, data=tiny)
    assert f"[resume] {name}: from epoch 1 of 2" in capsys.readouterr().out
    ckpt = load_checkpoint(path)
    assert ckpt["complete"] and ckpt["epoch"] == 2 and summary["runs"][0] == ckpt["results"]


def test_nan_in_the_first_step_of_an_epoch_is_caught():
    with pytest.raises(DivergenceError, match="the loss became inf at epoch 3, step 1 \\(last good loss none"):
        engine.check_divergence(torch.tensor([float("inf"), 1.0]), torch.ones(2), 2, "run")


# ---------------------------------------------------------------- 5. security: the safe loader


class RunsAShellCommand:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {shlex.quote(str(self.marker))}",)


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize("how", ["torch.save", "pickle protocol 2", "pickle protocol 4"])
def test_checkpoint_carrying_code_is_refused_and_never_run(how, tiny, home, tmp_path):
    marker = tmp_path / "PWNED"
    cfg = tiny_student(seeds=(12,))
    path = checkpoint_path(cfg.run_name(12))
    path.parent.mkdir(parents=True)
    payload = {"format": 1, "config": cfg.for_seed(12).to_dict(), "x": RunsAShellCommand(marker)}
    if how == "torch.save":
        torch.save(payload, path)
    else:
        path.write_bytes(pickle.dumps(payload, protocol=int(how[-1])))
    for attempt in (lambda: load_checkpoint(path), lambda: train(cfg, data=tiny),
                    lambda: load_model(cfg, 12)):
        with pytest.raises(CheckpointError) as err:
            attempt()
        message = str(err.value)
        assert str(path) in message and "safe loader" in message and "weights_only=True" in message, message
        assert "FORCE_RETRAIN=True" in message
        assert "weights_only` set to `False` will likely succeed" not in message  # no advice to run the code
        assert not marker.exists()
    # the control: an unsafe load of the same file really runs the command
    if how == "torch.save":
        torch.load(path, weights_only=False)
    else:
        pickle.loads(path.read_bytes())
    assert marker.exists()


def test_every_torch_load_in_the_package_uses_the_safe_loader():
    package = Path(desupcon.__file__).parent
    loads = []
    for source in sorted(package.rglob("*.py")):
        tree = ast.parse(source.read_text(), filename=str(source))
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            call = ast.unparse(node.func)
            where = f"{source.relative_to(package.parent)}:{node.lineno}: {ast.unparse(node)}"
            assert call not in ("pickle.load", "pickle.loads", "dill.load", "cloudpickle.load"), where
            if call.endswith("torch.load") or call == "load" and "from torch import load" in source.read_text():
                flags = {k.arg: k.value for k in node.keywords}
                assert isinstance(flags.get("weights_only"), ast.Constant) and flags["weights_only"].value is True, \
                    f"torch.load without weights_only=True: {where}"
                loads.append(where)
    assert any("artefacts.py" in w for w in loads), loads  # the search itself works


def test_a_dict_without_config_is_not_a_checkpoint(home):
    path = home / "x.pth"
    for obj in ({"format": 1}, {"format": 2, "config": {}}, [1, 2], {"format": 1, "config": "teacher"}):
        atomic_save(obj, path)
        with pytest.raises(CheckpointError, match=f"{re.escape(str(path))} is not a desupcon checkpoint"):
            load_checkpoint(path)


# ---------------------------------------------------------------- 6. config validation before any work


@pytest.mark.parametrize("cfg,message", [
    (SMOKE.student_config("lw_supcrd", bank_k=1400),
     "'bank_k' = 1400: bank_k + batch_size must be <= the 1437 training images"),
    (SMOKE.student_config("undistilled", batch_size=2048),
     "'batch_size' = 2048: x accum_steps 1 exceeds the 1437 training images"),
    (dataclasses.replace(SMOKE.student_config("lw_supcrd"), temperature=0.0), "'temperature' = 0.0: must be in (0, 10]"),
    (dataclasses.replace(SMOKE.student_config("crd"),
                         teacher=dataclasses.replace(SMOKE.projection_config(), lr=-1.0)),
     "'teacher.lr' = -1.0: must be in (0, 10]"),
])
def test_bad_config_is_refused_before_any_file_is_written(cfg, message, home):
    with pytest.raises(ConfigError) as err:
        train(cfg)
    assert message in str(err.value)
    assert not home.exists() or list(home.rglob("*")) == []
