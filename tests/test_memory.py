"""GPU memory from fake-tensor traces (``desupcon.engine.memory``): checked against real CPU tensors.

The trace's activations at the peak must match, within 15%, the bytes autograd really saves for
backward when the same task runs the same forward on real CPU tensors (counted with
``torch.autograd.graph.saved_tensors_hooks``, each storage once, weights and buffers left out).
"""

import itertools

import pytest
import torch

from desupcon.__main__ import main
from desupcon.images.datasets import Data, load_splits
from desupcon.engine import memory
from desupcon.engine.task import task_for
from desupcon.engine.trainer import Trainer
from desupcon.methods.ssl.config import load_config
from desupcon.nn.models import build_model
from desupcon.study.profiles import CONFIGS, PROFILES

SMOKE_YAML = CONFIGS / "moco_v3_smoke.yaml"
BATCH = 16


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """One torch thread (conftest's ``one_thread``): the real forwards here are tiny."""


def configs():
    """(id, config): MoCo-v3 ResNet and ViT (smoke sizes, bf16 and fp32) and a distillation step with a bank."""
    smoke = PROFILES["smoke"]
    vit = ["train.amp=true", "model.backbone=vit_small", "data.image_size=32", "train.queue_size=0"]
    return [
        ("moco_resnet_bf16", load_config(SMOKE_YAML, ["train.amp=true"])),
        ("moco_resnet_fp32", load_config(SMOKE_YAML)),
        ("moco_vit_bf16", load_config(SMOKE_YAML, vit)),
        ("lw_supcrd_bank_bf16", smoke.student_config("lw_supcrd", width=8, bank_k=64)),
    ]


def real_task(cfg, batch: int):
    """``cfg``'s task on real CPU tensors at ``batch`` images per forward (the digits; a random teacher)."""
    train, test = load_splits(cfg.dataset)
    teacher = task_for(cfg).untrained_teacher(cfg, train.num_classes)  # None without a teacher
    return Trainer(cfg.with_batch(batch), Data(train, test), "cpu", teacher, fast=cfg.recipe.amp).task


def saved_for_backward(task, batch: int, amp: bool) -> int:
    """Bytes autograd saves in one forward of ``task`` at ``batch`` images (each storage once, parameters
    and buffers excluded), under bf16 autocast if ``amp``."""
    weights = {t.untyped_storage().data_ptr() for module in memory.task_modules(task)
               for t in itertools.chain(module.parameters(), module.buffers())}
    saved = {}

    def pack(t):
        storage = t.untyped_storage()
        if storage.data_ptr() not in weights:
            saved[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), \
            torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
        task.loss(torch.arange(batch))
    return sum(saved.values())


@pytest.mark.parametrize("cfg", [c for _, c in configs()], ids=[name for name, _ in configs()])
def test_traced_activations_match_the_real_saved_tensors(cfg):
    traced = memory.measure_step(cfg, BATCH)
    task = real_task(cfg, BATCH)
    assert traced.saved == pytest.approx(saved_for_backward(task, BATCH, cfg.recipe.amp), rel=0.15)
    assert traced.peak == sum(traced.breakdown.values())
    assert traced.peak >= traced.saved + traced.breakdown["parameters"]
    params = {id(p): p for module in memory.task_modules(task) for p in module.parameters()}  # a shared head once
    weights = sum(p.numel() * p.element_size() for p in params.values())
    assert traced.breakdown["parameters"] == weights  # every weight of the task, a teacher's included
    assert traced.breakdown["optimizer state"] > 0  # the second step holds the moments the first allocated


def test_peak_grows_with_the_batch():
    cfg = load_config(SMOKE_YAML, ["train.amp=true"])
    fit = memory.fit_memory(cfg, (8, 32))
    small, large = fit.traces
    assert small.batch == 8 and large.batch == 32 and large.peak > small.peak
    assert fit.per_image > 0 and fit.fixed > 0
    assert fit.largest_batch(8) > fit.largest_batch(0.001) == 0  # 1 MiB holds not even the weights
    assert fit.peak(fit.largest_batch(8)) <= 8 * memory.GIB * (1 - memory.HEADROOM) < fit.peak(fit.largest_batch(8) + 1)


def test_dataset_shapes_match_the_loaded_digits():
    train, test = load_splits("digits")
    assert memory.DATASET_SHAPES["digits"] == (len(train), len(test), train.images.shape[-1], train.num_classes)


def test_cli_prints_the_peak_and_the_card_table(capsys):
    assert main(["memory", str(SMOKE_YAML), "--set", "train.batch_size=16", "train.queue_size=64"]) == 0
    out = capsys.readouterr().out
    assert "traced on a fake CPU device" in out and "peak " in out and "images per forward" in out
    for gb in memory.CARDS_GB:
        assert f"{gb:3d} GB card: batch " in out


def test_cli_splits_the_batch_over_the_world_size(capsys):
    assert main(["memory", "undistilled", "--profile", "smoke", "--world-size", "2"]) == 0
    assert "at 32 images per forward" in capsys.readouterr().out  # the smoke batch 64 over 2 processes


@pytest.mark.parametrize("argv,message", [
    (["memory", str(CONFIGS / "nope.yaml")], f"config file {CONFIGS / 'nope.yaml'} not found; configs in {CONFIGS}: ["),
    (["memory", "undistilled", "--profile", "smoke", "--world-size", "3"], "must be divisible by the world size 3"),
])
def test_cli_bad_input_is_one_line(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message in err and "\n" not in err
    if "nope" in message:
        assert str(SMOKE_YAML) in err  # it lists the configs that exist
