"""The fp32 CPU path of ``desupcon.engine.Trainer`` trains in channels_last, and that changes nothing but rounding.

oneDNN runs fp32 convolutions on NCHW tensors through reorders to its own layout and back;
channels_last skips them (benchmarks/RESULTS.md: 1.3x on a ResNet-18 SupCon step, 1.5x on the
frozen ResNet-50's forward). These tests pin the choice and check that one step's loss and
gradients equal those of the NCHW path to float tolerance, for a student alone (SupCon) and with
a frozen teacher and a bank (LW-SupCRD); ``tests/test_fast_path.py`` resumes it bit-identically.
"""

from __future__ import annotations

import pytest
import torch

from desupcon.images.datasets import Data, ImageDataset, load_splits
from desupcon.engine.trainer import Trainer, uses_channels_last
from desupcon.methods.distill.config import RunConfig
from desupcon.nn.models import ModelWrapper
from desupcon.study.profiles import PROFILES

SMOKE = PROFILES["smoke"]
CPU = torch.device("cpu")
BATCH = 16
METHODS = {"supcon": {}, "lw_supcrd": dict(bank_k=16)}
RTOL = 1e-5  # relative error of the whole loss and gradient vectors


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: one thread, no OpenMP stalls on shared cores


@pytest.fixture(scope="module")
def data() -> Data:
    """32 training and 16 test images of the embedded digits (16x16, 10 classes)."""
    first = lambda ds, n: ImageDataset(ds.name, ds.images[:n], ds.labels[:n], ds.num_classes, ds.mean, ds.std)
    train, test = load_splits("digits")
    return Data(first(train, 2 * BATCH), first(test, BATCH))


@pytest.fixture(scope="module")
def teacher() -> ModelWrapper:
    torch.manual_seed(0)
    return ModelWrapper(10, "resnet50", width=4, proj_dim=RunConfig.proj_dim, projection="linear")


def fp32_trainer(method: str, data: Data, teacher: ModelWrapper, **overrides) -> Trainer:
    cfg = SMOKE.student_config(method, width=4, batch_size=BATCH, **METHODS[method], **overrides)
    return Trainer(cfg, data, CPU, teacher if cfg.uses_teacher else None, fast=False)


def as_nchw(trainer: Trainer) -> Trainer:
    """The same trainer as it was before channels_last in fp32: networks and views NCHW."""
    trainer.channels_last = False  # the task reads it for the views' layout at every step
    for module in (trainer.task.model, trainer.task.teacher):
        if module is not None:
            module.to(memory_format=torch.contiguous_format)
    return trainer


def loss_and_grads(trainer: Trainer, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The loss of one forward on ``idx`` and every trainable parameter's gradient, as one vector."""
    loss, _ = trainer.task.loss(idx)
    loss.backward()
    return loss.detach(), torch.cat([p.grad.flatten() for p in trainer.task.parameters()])


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


def test_cpu_fp32_chooses_channels_last():
    assert uses_channels_last(CPU, mixed_precision=False)
    assert uses_channels_last(CPU, mixed_precision=True)
    assert not uses_channels_last(torch.device("cuda"), mixed_precision=False)  # fp32 on a GPU: not measured, NCHW


def test_fp32_cpu_trainer_runs_its_networks_and_views_in_channels_last(data, teacher):
    trainer = fp32_trainer("lw_supcrd", data, teacher)
    assert trainer.autocast_dtype is None and not trainer.mixed_precision  # still fp32
    is_cl = lambda t: t.is_contiguous(memory_format=torch.channels_last)
    assert is_cl(trainer.model.backbone.conv1.weight)
    assert is_cl(trainer.task.teacher.backbone.conv1.weight)
    seen = []  # (input in channels_last?, output dtype) of the student's and the teacher's first convolution
    record = lambda _module, inputs, output: seen.append((is_cl(inputs[0]), output.dtype))
    hooks = [net.backbone.conv1.register_forward_hook(record) for net in (trainer.model, trainer.task.teacher)]
    trainer.step(torch.arange(BATCH))
    for hook in hooks:
        hook.remove()
    assert seen == [(True, torch.float32), (True, torch.float32)]


@pytest.mark.parametrize("method", METHODS)
def test_channels_last_step_equals_nchw_to_float_tolerance(method, data, teacher):
    fast, plain = fp32_trainer(method, data, teacher), as_nchw(fp32_trainer(method, data, teacher))
    assert not plain.model.backbone.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    idx = torch.arange(BATCH)
    loss_cl, grads_cl = loss_and_grads(fast, idx)
    loss_nchw, grads_nchw = loss_and_grads(plain, idx)
    assert grads_nchw.norm() > 0
    assert relative_error(loss_cl, loss_nchw) < RTOL
    assert relative_error(grads_cl, grads_nchw) < RTOL
