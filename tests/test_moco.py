"""MoCo-v3 pretraining: config, model invariants, queue, resume, and a k-NN gain on the digits."""

import dataclasses
import json
import re
import shutil
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
import yaml

from desupcon.core.artefacts import CHECKPOINT_FORMAT, load_checkpoint
from desupcon.core.errors import ConfigError, StaleRunError
from desupcon.core.paths import (checkpoint_path, eval_path, log_path, output_root, plots_dir, saved_snapshots,
                                 snapshot_path)
from desupcon.engine import memory
from desupcon.engine.evaluate import EvalConfig
from desupcon.engine.runs import load_results
from desupcon.methods.ssl import base as ssl_base
from desupcon.methods.ssl.base import build_backbone, build_model, evaluate_checkpoints, per_rank_batch
from desupcon.methods.ssl.config import load_config
from desupcon.methods.ssl.moco_v3 import MoCoV3, momentum_at
from desupcon.study.train import pretrain

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
SMOKE = CONFIGS / "moco_v3_smoke.yaml"
TINY_VIT = dict(num_layers=1, num_heads=2, hidden_dim=32, mlp_dim=64)


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """One intra-op thread: on busy shared cores a second OpenMP thread waits for CPU time and slows
    every small op of these tiny networks about tenfold."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def smoke_config(*overrides):
    return load_config(SMOKE, overrides)


def tiny_model(*overrides):
    torch.manual_seed(0)
    return build_model(smoke_config(*overrides))


def tiny_vit_model():
    cfg = dataclasses.replace(smoke_config().model, backbone="vit_small", patch_size=16)
    torch.manual_seed(0)
    backbone, dim = build_backbone(cfg, 32, **TINY_VIT)
    return MoCoV3(backbone, dim, proj_layers=3, proj_hidden=32, proj_dim=16, pred_hidden=32)


def views(n=8, size=16):
    generator = torch.Generator().manual_seed(1)
    return torch.randn(n, 3, size, size, generator=generator), torch.randn(n, 3, size, size, generator=generator)


# --- model ---------------------------------------------------------------------------------------

def test_momentum_update_equals_the_formula_parameter_by_parameter():
    model = tiny_model()
    with torch.no_grad():
        for p in model.base_encoder.parameters():
            p.add_(torch.randn_like(p))
        for b in model.base_encoder.buffers():
            b.add_(1)
    before_k = [p.clone() for p in model.momentum_encoder.parameters()]
    params_q = list(model.base_encoder.parameters())
    model._update_momentum_encoder(0.9)
    for p_k, old, p_q in zip(model.momentum_encoder.parameters(), before_k, params_q, strict=True):
        torch.testing.assert_close(p_k, 0.9 * old + 0.1 * p_q, rtol=0, atol=1e-6)
    for b_k, b_q in zip(model.momentum_encoder.buffers(), model.base_encoder.buffers(), strict=True):
        assert torch.equal(b_k, b_q)


def test_key_encoder_gets_no_gradient():
    model = tiny_model()
    model(*views(), m=0.99).backward()
    assert all(not p.requires_grad and p.grad is None for p in model.momentum_encoder.parameters())
    assert all(p.grad is not None for p in model.base_encoder.parameters())
    assert all(p.grad is not None for p in model.predictor.parameters())


def test_vit_patch_projection_stays_frozen_after_optimizer_steps(capsys):
    model = tiny_vit_model()
    assert "✓ Froze ViT patch projection layer (conv_proj)" in capsys.readouterr().out
    conv = model.base_encoder.backbone.conv_proj
    frozen = [p.clone() for p in conv.parameters()]
    others = [p.clone() for p in model.base_encoder.backbone.encoder.parameters()]
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    for _ in range(3):
        loss = model(*views(4, 32), m=0.99)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert all(not p.requires_grad and p.grad is None for p in conv.parameters())
    assert all(torch.equal(p, old) for p, old in zip(conv.parameters(), frozen))
    assert not all(torch.equal(p, old) for p, old in zip(model.base_encoder.backbone.encoder.parameters(), others))


def test_missing_patch_projection_raises(monkeypatch):
    monkeypatch.setattr(ssl_base, "random_backbone",
                        lambda name, size, width, patch, **arch: (nn.Sequential(nn.Linear(3, 8)), 8))
    cfg = dataclasses.replace(smoke_config().model, backbone="vit_small")
    with pytest.raises(RuntimeError, match="ViT patch projection 'conv_proj' or 'patch_embed.proj' not found: "
                                           "cannot freeze it"):
        build_backbone(cfg, 32)


def test_resnet_conv1_stays_frozen_after_optimizer_steps(capsys):
    model = tiny_model("model.freeze_conv1=true")
    assert "✓ Froze ResNet stem convolution layer (conv1)" in capsys.readouterr().out
    backbone = model.base_encoder.backbone
    frozen, others = backbone.conv1.weight.clone(), backbone.layer1[0].conv1.weight.clone()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2, weight_decay=0.1)
    for _ in range(3):
        loss = model(*views(), m=0.99)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert not backbone.conv1.weight.requires_grad and backbone.conv1.weight.grad is None
    assert torch.equal(backbone.conv1.weight, frozen)
    assert not torch.equal(backbone.layer1[0].conv1.weight, others)
    assert all(p.requires_grad for name, p in backbone.named_parameters() if not name.startswith("conv1."))
    assert tiny_model().base_encoder.backbone.conv1.weight.requires_grad  # off by default


def test_freeze_conv1_is_for_resnets_and_needs_a_conv1(monkeypatch):
    with pytest.raises(ConfigError, match=r"'model.freeze_conv1' = True applies to ResNets only \(the ViT "
                                          r"'vit_small' freezes its patch projection by model.stop_grad_conv1\): "
                                          r"set it false"):
        smoke_config("model.backbone=vit_small", "model.freeze_conv1=true")
    monkeypatch.setattr(ssl_base, "random_backbone",
                        lambda name, size, width, patch, **arch: (nn.Sequential(nn.Linear(3, 8)), 8))
    cfg = dataclasses.replace(smoke_config().model, freeze_conv1=True)
    with pytest.raises(RuntimeError, match="ResNet stem convolution 'conv1' not found: cannot freeze it"):
        build_backbone(cfg, 32)


def test_symmetric_loss_equals_a_direct_cross_entropy():
    model = tiny_model("train.batch_size=8", "train.queue_size=24")
    x1, x2 = views()
    queue = model.queue.keys.clone()
    loss = model(x1, x2)
    with torch.no_grad():
        q1, q2 = (F.normalize(model.predictor(model.base_encoder(x)), dim=1) for x in (x1, x2))
        k1, k2 = (F.normalize(model.momentum_encoder(x), dim=1) for x in (x1, x2))

    def direct(q, k):
        logits = torch.cat([q @ k.T, q @ queue.T], dim=1) / 0.2  # (N, N + K)
        return F.cross_entropy(logits, torch.arange(8)) * 2 * 0.2

    torch.testing.assert_close(loss, direct(q1, k2) + direct(q2, k1))


def test_queue_receives_view2_keys_once_per_step_and_wraps_around():
    model = tiny_model("train.batch_size=4", "train.queue_size=12")
    enqueued = []
    for step in range(4):
        x1, x2 = views(4)
        x1, x2 = x1 + step, x2 - step
        with torch.no_grad():
            enqueued.append(F.normalize(model.momentum_encoder(x2), dim=1))
        model(x1, x2)
    assert model.queue.ptr.item() == 16 % 12
    expected = torch.cat([enqueued[3], enqueued[1], enqueued[2]])  # the 4th batch overwrote the 1st
    torch.testing.assert_close(model.queue.keys, expected)


def test_momentum_schedule():
    assert momentum_at(50, 100, 0.99, "fixed") == 0.99
    assert momentum_at(0, 100, 0.99, "cosine") == pytest.approx(0.99)
    assert momentum_at(50, 100, 0.99, "cosine") == pytest.approx(0.995)
    assert momentum_at(100, 100, 0.99, "cosine") == pytest.approx(1.0)


def test_measured_gpu_memory_grows_with_the_batch_and_vit_small_fits_a_card():
    sizes = [memory.measure_step(smoke_config("train.queue_size=0"), b).peak for b in (8, 16, 32)]
    assert 0 < sizes[0] < sizes[1] < sizes[2]
    line = memory.announce_line(smoke_config())  # what MoCoTask.announce prints: a trace at the per-process batch
    assert line.startswith("GPU memory per process: ") and "at 32 images per forward" in line
    assert "traced on a fake CPU device in fp32" in line  # the smoke config's amp is off
    vit = load_config(CONFIGS / "moco_v3_vit_small_stl10.yaml")
    assert 1 < memory.measure_step(vit, 256).peak / memory.GIB < 40


# --- config and bad input ------------------------------------------------------------------------

def test_every_shipped_config_loads():
    for path in sorted(CONFIGS.glob("moco_v3_*.yaml")):
        cfg = load_config(path)
        assert cfg.train.queue_size % cfg.train.batch_size == 0, path


def test_writeup_configs_hold_the_seeds_values():
    """Write-up 000_*'s training config (lr 0.0005 at batch 256) and write-up 001_*'s low-VRAM recipe (ResNet-50,
    64 per GPU x 2 GPUs x accumulation 4 = 512 at lr 3e-4, 300 epochs, a queue), as AdamW's lr."""
    vit = load_config(CONFIGS / "moco_v3_vit_small_writeup.yaml")
    t, m = vit.train, vit.model
    assert (t.batch_size * t.accum_steps, t.epochs, t.weight_decay, t.warmup_epochs) == (256, 100, 0.05, 10)
    assert vit.lr == 5e-4
    assert (t.queue_size, t.momentum, t.momentum_schedule, t.temperature) == (65536, 0.99, "fixed", 0.2)
    assert (m.backbone, vit.data.image_size, m.heads, m.proj_hidden, m.proj_dim) == \
           ("vit_small_patch16_224", 96, "writeup", 384, 256)
    low = load_config(CONFIGS / "moco_v3_resnet50_low_vram.yaml")
    per_gpu, accum = low.train.batch_size // 2, low.train.accum_steps  # global batch over the write-up's 2 GPUs
    assert (per_gpu, accum, per_gpu * 2 * accum) == (64, 4, 512)
    assert low.lr == pytest.approx(3e-4, rel=1e-12) and low.train.epochs == 300 and low.train.queue_size > 0
    assert low.model.backbone.startswith("resnet50") and low.model.heads == "writeup" and low.model.freeze_conv1
    official = load_config(CONFIGS / "moco_v3_vit_small_stl10.yaml")
    assert (official.train.base_lr, official.train.weight_decay, official.model.heads) == (1.5e-4, 0.1, "official")


def test_overrides_are_typed_by_the_field():
    cfg = smoke_config("train.epochs=3", "train.base_lr=1e-3", "train.amp=true", "data.augment=satellite")
    assert (cfg.train.epochs, cfg.train.base_lr, cfg.train.amp, cfg.data.augment) == (3, 1e-3, True, "satellite")
    with pytest.raises(ConfigError,
                       match=r"override 'train.epochs=ten': 'train.epochs' must be an int, got 'ten'"):
        smoke_config("train.epochs=ten")
    with pytest.raises(ConfigError, match=r"override 'train.lr=1': unknown key 'train.lr'; "
                                          r"valid keys: \['train.epochs', 'train.batch_size', "):
        smoke_config("train.lr=1")
    with pytest.raises(ConfigError, match=r"override 'train.epochs': expected KEY=VALUE"):
        smoke_config("train.epochs")


def write_yaml(tmp_path, edit):
    raw = yaml.safe_load(SMOKE.read_text())
    edit(raw)
    path = tmp_path / "x.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_missing_and_unknown_yaml_keys(tmp_path):
    path = write_yaml(tmp_path, lambda raw: raw["train"].pop("epochs"))
    with pytest.raises(ConfigError, match=re.escape(f"{path}: missing key 'train.epochs'")):
        load_config(path)
    path = write_yaml(tmp_path, lambda raw: raw.pop("model"))
    with pytest.raises(ConfigError, match=re.escape(f"{path}: missing section 'model'")):
        load_config(path)
    path = write_yaml(tmp_path, lambda raw: raw.pop("eval"))  # every MoCo-v3 YAML has an eval section
    with pytest.raises(ConfigError, match=re.escape(f"{path}: missing section 'eval'")):
        load_config(path)
    path = write_yaml(tmp_path, lambda raw: raw["eval"].pop("probe_iterations"))
    with pytest.raises(ConfigError, match=re.escape(f"{path}: missing key 'eval.probe_iterations'")):
        load_config(path)
    path = write_yaml(tmp_path, lambda raw: raw["train"].update(lr=0.1))
    with pytest.raises(ConfigError, match=re.escape(f"{path}: unknown key 'train.lr'")):
        load_config(path)
    path = write_yaml(tmp_path, lambda raw: raw["eval"].update(knn_k=7, knn_temperature=0.5, probe_iterations=3))
    assert load_config(path).evaluation == EvalConfig(knn_k=7, knn_temperature=0.5, probe_iterations=3)


def test_bad_values_name_the_key():
    with pytest.raises(ConfigError, match=r"config field 'train.momentum' = 1.5: must be in \[0, 1\)"):
        smoke_config("train.momentum=1.5")
    with pytest.raises(ConfigError, match=r"config field 'model.backbone' = 'vit_huge': must be one of"):
        smoke_config("model.backbone=vit_huge")
    with pytest.raises(ConfigError, match=r"config field 'eval.knn_k' = 0: must be >= 1"):
        smoke_config("eval.knn_k=0")


def test_unknown_backbone():
    cfg = dataclasses.replace(smoke_config().model, backbone="vit_huge")
    with pytest.raises(ValueError, match=r"unknown backbone 'vit_huge': choose one of \['vit_small', 'resnet18', "
                                         r"'resnet50'\]"):
        build_backbone(cfg, 32)


def test_queue_size_must_be_a_multiple_of_the_batch():
    with pytest.raises(ValueError, match="FIFOQueue size 100 is not divisible by the batch size 32: choose a size "
                                         "that is a multiple of 32 \\(e.g. 128\\)"):
        tiny_model("train.queue_size=100")


def test_batch_must_divide_over_the_world_size():
    assert per_rank_batch(12, 3) == 4
    with pytest.raises(ConfigError, match=r"'train.batch_size' = 10 is not divisible by the world size 3: choose a "
                                          r"multiple of 3 \(e.g. 12\)"):
        per_rank_batch(10, 3)


# --- training (integration) ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def smoke_trained(tmp_path_factory):
    """An output root where the smoke config is pretrained once for the tests below."""
    root = tmp_path_factory.mktemp("moco_home")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("DESUPCON_HOME", str(root))
        cfg = smoke_config()
        return root, cfg, pretrain(cfg)


@pytest.fixture
def smoke_run(smoke_trained, monkeypatch):
    """``(config, summary)`` of the pretrained smoke run, with DESUPCON_HOME pointing at it."""
    root, cfg, summary = smoke_trained
    monkeypatch.setenv("DESUPCON_HOME", str(root))
    return cfg, summary


@pytest.mark.slow
def test_checkpoints_load_safely_with_every_key(smoke_run):
    cfg, summary = smoke_run
    epochs = cfg.train.epochs
    assert saved_snapshots(cfg.name) == list(range(1, epochs + 1))
    assert summary["snapshots"] == [str(snapshot_path(cfg.name, e)) for e in range(1, epochs + 1)]
    assert snapshot_path(cfg.name, epochs) == output_root() / "pth_models" / "moco_v3_smoke" / "epoch_0020.pth"
    ckpt = load_checkpoint(snapshot_path(cfg.name, epochs))  # torch.load(weights_only=True)
    assert {"format", "config", "encoder_q", "proj_q", "model", "optimizer", "scheduler", "scaler", "epoch",
            "global_step", "rng"} <= set(ckpt)
    assert ckpt["format"] == CHECKPOINT_FORMAT and ckpt["config"] == cfg.to_dict()
    assert ckpt["epoch"] == epochs and ckpt["global_step"] == epochs * (1437 // 32)
    assert ckpt["rng"]["aug"].shape[0] == 1  # one augmentation stream per process
    final = load_checkpoint(checkpoint_path(cfg.name))  # the finished run: pth_models/<out_dir>.pth
    assert checkpoint_path(cfg.name) == output_root() / "pth_models" / "moco_v3_smoke.pth"
    assert final["complete"] and final["epoch"] == epochs and final["config"] == cfg.to_dict()
    assert all(torch.equal(final["model"][k], v) for k, v in ckpt["model"].items())
    assert summary["runs"] == [final["results"]] and summary["group"] == "moco_v3_digits"
    assert {"knn_top1", "probe_top1", "probe_top5", "test_acc"} <= set(final["results"])
    assert [e["epoch"] for e in summary["epochs"]] == list(range(1, epochs + 1))
    log = output_root() / "json_results" / "training_logs" / "moco_v3_smoke.json"
    assert log_path(cfg.name) == log and json.loads(log.read_text())["epochs"] == summary["epochs"]
    assert "moco_v3_smoke" in load_results("moco_v3_digits")  # recorded with every other run


@pytest.mark.slow
def test_resume_reproduces_the_uninterrupted_run(smoke_run, capsys):
    cfg, summary = smoke_run
    epochs = cfg.train.epochs
    latest, last = checkpoint_path(cfg.name), snapshot_path(cfg.name, epochs)
    uninterrupted, finished = load_checkpoint(last), load_checkpoint(latest)
    # as if killed during the last epoch: the latest checkpoint is epoch E-1's, no snapshot of epoch E
    last.unlink()
    latest.unlink()
    shutil.copy(snapshot_path(cfg.name, epochs - 1), latest)
    capsys.readouterr()
    resumed = pretrain(cfg)
    out = capsys.readouterr().out
    assert f"[resume] moco_v3_smoke: from epoch {epochs - 1} of {epochs}" in out
    assert "[cache]" not in out
    assert resumed["epochs"][-1]["loss"] == summary["epochs"][-1]["loss"]
    assert saved_snapshots(cfg.name) == list(range(1, epochs + 1))
    state = load_checkpoint(last)["model"]
    assert state.keys() == uninterrupted["model"].keys()
    assert all(torch.equal(state[key], value) for key, value in uninterrupted["model"].items())
    final = load_checkpoint(latest)
    assert final["complete"]
    assert all(torch.equal(final["model"][key], value) for key, value in finished["model"].items())


@pytest.mark.slow
def test_finished_run_is_cached_and_a_changed_config_is_refused(smoke_run, capsys):
    cfg, _ = smoke_run
    before = checkpoint_path(cfg.name).stat().st_mtime_ns
    capsys.readouterr()
    cached = pretrain(cfg)
    out = capsys.readouterr().out
    assert f"[cache] moco_v3_smoke: loaded {checkpoint_path(cfg.name)}" in out
    assert "[done]" not in out and "[resume]" not in out  # nothing was trained
    assert checkpoint_path(cfg.name).stat().st_mtime_ns == before
    assert cached["runs"] == [load_checkpoint(checkpoint_path(cfg.name))["results"]]
    assert [e["epoch"] for e in cached["epochs"]] == list(range(1, cfg.train.epochs + 1))
    with pytest.raises(StaleRunError, match=r"train.temperature: cached 0.2 vs requested 0.3"):
        pretrain(smoke_config("train.temperature=0.3"))


@pytest.mark.slow
def test_pretrained_encoder_beats_random_init_on_knn(smoke_run):
    cfg, _ = smoke_run
    random_init, pretrained = evaluate_checkpoints(SMOKE, [0, cfg.train.epochs])
    print(f"k-NN top-1: random init {random_init['knn_top1']:.1f}%, "
          f"pretrained {pretrained['knn_top1']:.1f}% (epoch {pretrained['epoch']})")
    assert pretrained["knn_top1"] >= random_init["knn_top1"] + 5
    assert {"epoch", "knn_top1", "knn_top5", "probe_top1", "probe_top5", "probe_train_top1", "test_acc",
            "train_acc", "gap", "alignment", "uniformity"} <= set(pretrained)
    assert "linear_top1" not in pretrained
    path = output_root() / "json_results" / "moco_v3_smoke_checkpoint_eval.json"
    assert eval_path(cfg.name) == path
    assert json.loads(path.read_text())["points"] == [random_init, pretrained]
    assert not plots_dir().exists()  # evaluation draws nothing
    with pytest.raises(FileNotFoundError, match=r"epoch_0099.pth; available epochs: \[1, 2, "):
        evaluate_checkpoints(SMOKE, [99])
