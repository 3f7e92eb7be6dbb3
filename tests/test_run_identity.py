"""Run identity: a cached run is reused only when every input it read is unchanged.

Each fault is made the way a user makes it: images of a folder edited, added or removed after a run
on it, a teacher weights file replaced at the same path, an output home that is read-only.
"""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from desupcon.core.errors import ArtefactWriteError, StaleRunError
from desupcon.core.artefacts import read_json
from desupcon.core.paths import checkpoint_path, eval_path, log_path, snapshot_path
from desupcon.engine.runs import check_inputs
from desupcon.methods.ssl.base import evaluate_checkpoints
from desupcon.methods.ssl.config import load_config
from desupcon.study.train import pretrain

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "moco_v3_smoke.yaml"
FOLDER_RUN = ["data.dataset=shapes", "train.epochs=1", "train.warmup_epochs=0", "train.queue_size=0",
              "train.out_dir=shapes_moco", "eval.probe_iterations=5"]


def write_folder(root: Path, rng: np.random.Generator, per_class: int = 24) -> None:
    """Two classes of 16x16 PNGs: bright squares and dark ones, with noise."""
    for label, level in (("bright", 200), ("dark", 50)):
        (root / label).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            pixels = np.clip(level + rng.normal(0, 30, (16, 16, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / label / f"{i:03d}.png")


@pytest.fixture
def shapes(tmp_path, monkeypatch):
    data = tmp_path / "data"
    write_folder(data / "shapes", np.random.default_rng(0))
    monkeypatch.setenv("DESUPCON_DATA", str(data))
    return data / "shapes"


def test_an_input_with_another_fingerprint_is_refused_and_an_unrecorded_one_is_noted(capsys):
    now = {"data.train": {"what": "/data/shapes (train)", "fingerprint": "b" * 64}}
    check_inputs("run", "run.pth", {"data.train": {"what": "/data/shapes (train)", "fingerprint": "b" * 64}}, now)
    with pytest.raises(StaleRunError) as err:
        check_inputs("run", "run.pth", {"data.train": {"what": "/data/shapes (train)", "fingerprint": "a" * 64}}, now)
    assert str(err.value) == ("cached run run.pth was built from another data.train: /data/shapes (train) had "
                              "fingerprint aaaaaaaaaaaa when this run trained and has bbbbbbbbbbbb now; retrain it "
                              "with --force-retrain (FORCE_RETRAIN=True in a notebook), or delete the file")
    capsys.readouterr()
    check_inputs("run", "run.pth", {}, now)  # saved before runs fingerprinted their data
    assert capsys.readouterr().out == ("[cache] run: recorded no fingerprint of its data.train (/data/shapes (train)), "
                                       "being saved before runs fingerprinted it; taken as unchanged (--force-retrain "
                                       "retrains it)\n")
    legacy = {"teacher": {"run": "t", "content_hash": "c" * 64}}  # a teacher entry of an older checkpoint
    check_inputs("run", "run.pth", legacy, {"teacher": {"what": "teacher run t", "run": "t", "fingerprint": "c" * 64}})


@pytest.mark.slow
def test_a_run_on_a_folder_is_refused_once_its_images_change_and_force_retrain_retrains_it(shapes, capsys):
    cfg = load_config(CONFIG, FOLDER_RUN)
    first = pretrain(cfg, device="cpu")
    lineage = read_json(log_path("shapes_moco"))["lineage"]
    assert {"data.train", "data.test"} <= set(lineage) and str(shapes) in lineage["data.train"]["what"]
    assert "[cache] shapes_moco: loaded" in (capsys.readouterr(), pretrain(cfg, device="cpu"), capsys.readouterr().out)[2]

    for change in ("edit", "add", "remove"):
        image = shapes / "dark" / "005.png"
        if change == "edit":
            pixels = np.asarray(Image.open(image)).copy()
            pixels[:4] = 255
            Image.fromarray(pixels).save(image)
        elif change == "add":
            Image.fromarray(np.full((16, 16, 3), 90, np.uint8)).save(shapes / "dark" / "extra.png")
        else:
            image.unlink()
        stored = checkpoint_path("shapes_moco").read_bytes()
        with pytest.raises(StaleRunError, match=rf"^cached run {checkpoint_path('shapes_moco')} was built from another "
                                                rf"data\.(train|test): {shapes} \((train|test)\) had fingerprint "
                                                rf"[0-9a-f]{{12}} when this run trained and has [0-9a-f]{{12}} now; "
                                                rf"retrain it with --force-retrain"):
            pretrain(cfg, device="cpu")
        assert checkpoint_path("shapes_moco").read_bytes() == stored  # nothing overwritten
        retrained = pretrain(cfg, force_retrain=True, device="cpu")
        assert "[done] shapes_moco" in capsys.readouterr().out
    assert retrained["runs"][0]["knn_top1"] != first["runs"][0]["knn_top1"] or \
        read_json(log_path("shapes_moco"))["lineage"] != lineage


@pytest.mark.slow
def test_a_kd_run_is_refused_once_its_teacher_file_is_replaced(tmp_path):
    timm = pytest.importorskip("timm")
    path = tmp_path / "teacher.pth"
    for seed in (0, 1):
        torch.manual_seed(seed)
        torch.save(timm.create_model("test_vit", num_classes=0, img_size=32).state_dict(), path)
        overrides = ["method=vit_kd", "model.teacher_name=test_vit", "model.teacher_img_size=32", "train.queue_size=0",
                     f"model.teacher_weights={path}", "train.epochs=1", "train.warmup_epochs=0", "train.out_dir=kd_file",
                     "eval.probe_iterations=5"]
        cfg = load_config(CONFIG, overrides)
        if seed == 0:
            pretrain(cfg, device="cpu")
            assert read_json(log_path("kd_file"))["lineage"]["model.teacher_weights"]["what"] == f"file {path}"
            evaluate_checkpoints(CONFIG, [0, 1], overrides)  # what it evaluated is named and fingerprinted
            snapshot = snapshot_path("kd_file", 1)
            assert read_json(eval_path("kd_file"))["snapshots"] == {
                "0": {"what": f"the random initialisation (seed {cfg.seed})"},
                "1": {"what": f"file {snapshot}", "fingerprint": hashlib.sha256(snapshot.read_bytes()).hexdigest()}}
    with pytest.raises(StaleRunError, match=rf"^cached run {checkpoint_path('kd_file')} was built from another "
                                            rf"model\.teacher_weights: file {path} had fingerprint [0-9a-f]{{12}} when "
                                            rf"this run trained and has [0-9a-f]{{12}} now"):
        pretrain(cfg, device="cpu")


def test_a_read_only_output_home_is_refused_before_anything_is_computed(tmp_path, monkeypatch, capsys):
    home = tmp_path / "home"
    home.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(home)], capture_output=True)
    if mounted.returncode != 0:
        home.chmod(0o500)
        if (home / "probe").touch() is None and (home / "probe").exists():
            pytest.skip("neither a read-only tmpfs can be mounted nor a folder made read-only here (root without mount)")
    try:
        monkeypatch.setenv("DESUPCON_HOME", str(home))
        with pytest.raises(ArtefactWriteError, match=rf"^the output home \(\$DESUPCON_HOME\) {home} is not writable "
                                                     rf"\(Read-only file system|Permission denied\), so no run could be "
                                                     rf"saved; nothing was computed"):
            pretrain(load_config(CONFIG, ["train.epochs=1", "train.warmup_epochs=0"]), device="cpu")
        assert "[data]" not in capsys.readouterr().out  # refused before the data was even loaded
    finally:
        subprocess.run(["umount", str(home)], capture_output=True)
        home.chmod(0o700)
