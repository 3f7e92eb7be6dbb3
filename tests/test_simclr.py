"""SimCLR (desupcon/methods/ssl/simclr.py): NT-Xent against independent references, and a smoke run that
trains, resumes, is evaluated against its own random initialisation and is drawn under its own name."""

import math
import shutil

import pytest
import torch
import torch.nn.functional as F
from pytorch_metric_learning.losses import NTXentLoss

from desupcon.analysis.figures import draw_run, figure_paths
from desupcon.core.artefacts import load_checkpoint, read_json
from desupcon.core.errors import ConfigError
from desupcon.core.paths import checkpoint_path, log_path, snapshot_path
from desupcon.images.datasets import Data
from desupcon.engine.evaluate import evaluate_encoder
from desupcon.engine.task import task_for
from desupcon.methods.ssl.base import load_encoder
from desupcon.methods.ssl.config import load_config
from desupcon.methods.ssl.simclr import SimCLRTask, nt_xent_loss
from desupcon.study.profiles import CONFIGS
from desupcon.study.train import pretrain

SMOKE = CONFIGS / "simclr_smoke.yaml"
EPOCHS = 4  # SimCLR leaves its random initialisation behind within a few epochs on digits


def _views(n=6, d=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (F.normalize(torch.randn(n, d, generator=g, dtype=torch.float64), dim=1),
            F.normalize(torch.randn(n, d, generator=g, dtype=torch.float64), dim=1))


def _loop(anchors, keys, tau):
    """NT-Xent from its formula, one anchor at a time with Python floats."""
    n2, total = len(anchors), 0.0
    for i in range(n2):
        sims = [float(anchors[i] @ keys[j]) / tau for j in range(len(keys))]
        positive = sims[(i + n2 // 2) % n2]
        total += -positive + math.log(sum(math.exp(s) for j, s in enumerate(sims) if j != i))
    return total / n2


@pytest.mark.parametrize("tau", [0.1, 0.5, 1.0])
def test_nt_xent_equals_pytorch_metric_learning_and_a_loop(tau):
    z1, z2 = _views()
    ours = nt_xent_loss(z1, z2, tau)
    labels = torch.arange(len(z1)).repeat(2)  # both views of image n share label n
    theirs = NTXentLoss(temperature=tau)(torch.cat([z1, z2]), labels)
    assert ours.item() == pytest.approx(theirs.item(), rel=1e-5)
    assert ours.item() == pytest.approx(_loop(torch.cat([z1, z2]), torch.cat([z1, z2]), tau), rel=1e-6)


def test_gathered_keys_of_other_ranks_are_extra_negatives():
    z1, z2 = _views(4)
    others = F.normalize(torch.randn(8, 5, dtype=torch.float64), dim=1)  # another rank's two views
    keys = torch.cat([z1, z2, others])
    assert nt_xent_loss(z1, z2, 0.5, keys).item() == pytest.approx(_loop(torch.cat([z1, z2]), keys, 0.5), rel=1e-6)


@pytest.mark.parametrize("args, message", [
    ((torch.zeros(3, 4), torch.zeros(2, 4)), "z1 and z2 must be non-empty 2-D"),
    ((torch.zeros(0, 4), torch.zeros(0, 4)), "z1 and z2 must be non-empty 2-D"),
    ((torch.zeros(2, 4), torch.zeros(2, 4), 0.0), "temperature must be > 0"),
    ((torch.zeros(2, 4), torch.zeros(2, 4), 0.5, torch.zeros(3, 4)), r"keys must be \(M, D\) with D=4 and M >= 2N = 4"),
])
def test_bad_input_raises_value_error(args, message):
    with pytest.raises(ValueError, match=message):
        nt_xent_loss(*args)


def test_the_config_names_its_task_and_refuses_a_queue():
    cfg = load_config(SMOKE)
    assert task_for(cfg) is SimCLRTask and cfg.label == "SimCLR resnet18"
    with pytest.raises(ConfigError, match=r"'train.queue_size' = 32 must be 0 for method 'simclr'"):
        load_config(SMOKE, ["train.queue_size=32"])


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    home = tmp_path_factory.mktemp("simclr_home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DESUPCON_HOME", str(home))
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # bit-identical resume needs the same thread count
        try:
            cfg = load_config(SMOKE, [f"train.epochs={EPOCHS}"])
            yield home, cfg, pretrain(cfg)
        finally:
            torch.set_num_threads(threads)


@pytest.mark.slow
def test_simclr_trains_beyond_its_random_initialisation(trained):
    home, cfg, summary = trained
    data = Data.load(cfg.dataset, "cpu").evaluation
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DESUPCON_HOME", str(home))
        random = evaluate_encoder(load_encoder(cfg, 0), data, cfg.evaluation, cfg.seed, image_size=cfg.data.image_size)
    trained_results = summary["runs"][0]
    assert summary["group"] == "simclr_digits" and summary["role"] == "pretrain"
    # a random ResNet already reaches ~51% k-NN and ~67% probe on digits; SimCLR must clearly beat it
    assert trained_results["knn_top1"] > random["knn_top1"] + 5
    assert trained_results["probe_top1"] > random["probe_top1"] + 5
    assert all(math.isfinite(e["loss"]) for e in summary["epochs"])


@pytest.mark.slow
def test_simclr_resumes_bit_identically_and_is_drawn_under_its_name(trained, monkeypatch, capsys):
    home, cfg, summary = trained
    monkeypatch.setenv("DESUPCON_HOME", str(home))
    latest, last = checkpoint_path(cfg.name), snapshot_path(cfg.name, EPOCHS)
    uninterrupted = load_checkpoint(last)["model"]
    last.unlink()  # as if killed during the last epoch
    shutil.copy(snapshot_path(cfg.name, EPOCHS - 1), latest)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        capsys.readouterr()
        resumed = pretrain(cfg)
    finally:
        torch.set_num_threads(threads)
    out = capsys.readouterr().out
    assert f"[resume] simclr_smoke: from epoch {EPOCHS - 1} of {EPOCHS}" in out and "SimCLR 'simclr_smoke'" in out
    assert resumed["epochs"][-1]["loss"] == summary["epochs"][-1]["loss"]
    state = load_checkpoint(last)["model"]
    assert all(torch.equal(state[key], value) for key, value in uninterrupted.items())
    assert read_json(log_path(cfg.name))["config"]["method"] == "simclr"
    paths = draw_run(resumed, kinds=("curves", "hypersphere"))
    assert paths == {k: v for k, v in figure_paths(cfg.name).items() if k in ("curves", "hypersphere")}
    page = paths["hypersphere"].read_text()
    assert r'"text":"SimCLR resnet18 \u00b7 digits test split (simclr_smoke, seed 42)' in page and "MoCo" not in page
