"""Live TensorBoard curves (the JSON log's scalars, off by default) and the one-line Ctrl-C message."""

import pytest

from desupcon.__main__ import main
from desupcon.core.artefacts import read_json
from desupcon.core.paths import log_path, tensorboard_dir
from desupcon.engine import trainer as engine
from desupcon.study.profiles import PROFILES
from desupcon.study.train import train

SMOKE = PROFILES["smoke"]
TINY = dict(arch="resnet18", width=4, epochs=2, probe_iterations=2, knn_k=5)


def _scalars(run_name):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tensorboard_dir(run_name))).Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


@pytest.mark.slow
def test_tensorboard_writes_the_json_log_s_scalars_only_when_asked(tmp_path, monkeypatch, one_thread):
    pytest.importorskip("tensorboard")
    monkeypatch.setenv("DESUPCON_HOME", str(tmp_path))
    off = SMOKE.student_config("undistilled", **TINY)
    train(off)
    assert not tensorboard_dir(off.name).exists()  # off by default
    monkeypatch.setenv("DESUPCON_TENSORBOARD", "1")
    on = SMOKE.student_config("undistilled", **{**TINY, "lr": 3e-3})
    train(on)
    epochs = read_json(log_path(on.name))["epochs"]
    scalars = _scalars(on.name)
    assert {"loss", "train_acc", "lr", "seconds"} <= set(scalars)
    for tag, points in scalars.items():
        assert points == [(e["epoch"], pytest.approx(e[tag], rel=1e-6)) for e in epochs], tag


@pytest.mark.slow
def test_ctrl_c_says_in_one_line_where_the_run_resumes(tmp_path, monkeypatch, capsys, one_thread):
    monkeypatch.setenv("DESUPCON_HOME", str(tmp_path))
    real_epoch = engine.Trainer.epoch

    def interrupted_in_epoch_2(self, epoch, *args):
        if epoch == 1:
            raise KeyboardInterrupt
        return real_epoch(self, epoch, *args)

    monkeypatch.setattr(engine.Trainer, "epoch", interrupted_in_epoch_2)
    overrides = [f"{k}={v}" for k, v in TINY.items()]
    assert main(["train", "undistilled", "--profile", "smoke", "--set", *overrides]) == 130
    captured = capsys.readouterr()
    name = SMOKE.student_config("undistilled", **TINY).name
    assert f"[interrupted] {name}: the last good checkpoint" in captured.out and "(epoch 1)" in captured.out
    assert "Traceback" not in captured.err
    assert captured.err.strip().splitlines()[-1].startswith("[interrupted] nothing finished is lost; rerun the same")
    monkeypatch.setattr(engine.Trainer, "epoch", real_epoch)
    assert main(["train", "undistilled", "--profile", "smoke", "--set", *overrides]) == 0
    assert f"[resume] {name}: from epoch 1 of 2" in capsys.readouterr().out
