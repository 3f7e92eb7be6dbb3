"""Device placement of every training step, checked without a GPU: one forward on a fake CUDA device.

Each run kind's task (every method of the registry, those that can use a memory bank also with
one; the teacher and its projection head; MoCo-v3 with a ResNet and a queue, with ViT-S/16, and its
kd mode) is built as training builds it, its tensors replaced by fake CUDA tensors
(``desupcon.engine.memory.fake_task``: ``FakeTensorMode``, shapes and devices, no storage), and its loss
runs once under CUDA bf16 autocast. What a GPU run would get wrong fails here:

* a tensor created on the CPU inside the step and mixed with the CUDA ones: the fake tensors raise
  ``FakeTensorDeviceMismatchError`` ("found at least two devices"), as a GPU run would;
* a host sync: ``.item()``, ``bool()``, ``int()`` of a fake tensor raise ``DataDependentOutputException``
  (its value is unknown), and a copy to the host (``.cpu()``, ``.to("cpu")``) raises in ``NoDeviceToHost``.
  Constants made on the host and copied to the device (``torch.tensor([...], device=x.device)``) pass;
* a dtype mismatch (autocast's bf16 output meeting an fp32 tensor where autocast is off) raises in
  the kernels whose shape functions check dtypes (convolutions, ``bmm``, ``einsum``; PyTorch's for
  ``mm`` and ``linear`` do not), so the test also asserts the dtypes of the loss and of every layer.

CUDA autocast without CUDA: ``torch.autocast("cuda")`` switches itself off when no GPU is visible,
so ``cuda_bf16_autocast`` sets the dispatcher's CUDA autocast state directly; fake CUDA tensors
then go through CUDA's autocast lists (asserted: every convolution and Linear computes in bf16).
Backward is not traced: on a machine without CUDA autograd refuses a fake CUDA device
("hasPrimaryContext expects a valid device index"); ``desupcon.engine.memory`` traces it on a fake CPU.
"""

from __future__ import annotations

import contextlib
import dataclasses

import pytest
import torch
import torch.nn.functional as F
from torch._subclasses.fake_tensor import DataDependentOutputException, FakeTensor, FakeTensorMode
from torch.utils import _pytree as pytree
from torch.utils._python_dispatch import TorchDispatchMode

from desupcon.engine import memory
from desupcon.methods.distill.registry import METHODS, student_methods
from desupcon.methods.ssl.config import load_config
from desupcon.study.profiles import CONFIGS, PROFILES

CUDA = torch.device("cuda")
BATCH = 8
SMOKE = PROFILES["smoke"]


class CudaGenerator(torch.Generator):
    """A CPU generator that says it is on CUDA: fake CUDA tensors draw from it (they have no values),
    and the augmentation's check that generator and images share a device passes as on a GPU."""

    @property
    def device(self) -> torch.device:
        return CUDA


class NoDeviceToHost(TorchDispatchMode):
    """Raise ``AssertionError`` naming the operation when one turns a CUDA tensor into a CPU tensor."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        devices = lambda tree: {t.device.type for t in pytree.tree_leaves(tree) if isinstance(t, torch.Tensor)}
        if "cuda" in devices((args, kwargs)) and "cpu" in devices(out):
            raise AssertionError(f"{func} copied a CUDA tensor to the host in the step")
        return out


@contextlib.contextmanager
def cuda_bf16_autocast():
    """CUDA bf16 autocast that stays on without a GPU (see the module docstring)."""
    enabled, dtype = torch.is_autocast_enabled("cuda"), torch.get_autocast_dtype("cuda")
    torch.set_autocast_enabled("cuda", True)
    torch.set_autocast_dtype("cuda", torch.bfloat16)
    try:
        yield
    finally:
        torch.set_autocast_enabled("cuda", enabled)
        torch.set_autocast_dtype("cuda", dtype)
        torch.clear_autocast_cache()


def cases() -> dict:
    """name -> config: every run kind at tiny widths."""
    runs = {"teacher": SMOKE.teacher_config().replace(width=4), "projection": SMOKE.projection_config()}
    for method in student_methods():
        runs[method] = SMOKE.student_config(method, width=4)
        if METHODS[method].uses_bank:
            runs[f"{method}_bank"] = SMOKE.student_config(method, width=4, bank_k=16)
    smoke_yaml = CONFIGS / "moco_v3_smoke.yaml"
    runs["moco_resnet_queue"] = load_config(smoke_yaml, ["train.amp=true"])  # queue 256
    runs["moco_vit"] = load_config(smoke_yaml, ["train.amp=true", "model.backbone=vit_small", "data.image_size=32"])
    runs["moco_kd"] = load_config(CONFIGS / "moco_v3_writeup_kd_dinov2.yaml", ["train.queue_size=0"])
    return runs


CASES = cases()


def cuda_step(cfg, batch: int = BATCH):
    """Build ``cfg``'s task on fake CUDA tensors and run one loss under CUDA bf16 autocast.

    Returns ``(loss, dtypes)``: the loss and the output dtypes of every convolution and Linear of the
    step (students, heads, teacher), in order.
    """
    fake = FakeTensorMode()
    with memory.traceable():
        task, _ = memory.fake_task(cfg.with_batch(batch), CUDA, channels_last=True, mode=fake)
        task.trainer.aug_gen, task.trainer.order_gen = CudaGenerator(), CudaGenerator()
        task.begin_step(0, 1)  # MoCo-v3: the key encoder's momentum update runs in the step
        dtypes = []
        layers = [m for module in memory.task_modules(task) for m in module.modules()
                  if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
        hooks = [m.register_forward_hook(lambda _m, _x, out: dtypes.append(out.dtype)) for m in layers]
        try:
            with fake, NoDeviceToHost(), cuda_bf16_autocast():
                loss = task.loss(torch.arange(batch, device=CUDA))[0]
        finally:
            for hook in hooks:
                hook.remove()
    return loss, dtypes


@pytest.mark.parametrize("name", CASES)
def test_step_stays_on_the_gpu_in_bf16(name):
    loss, dtypes = cuda_step(CASES[name])
    assert isinstance(loss, FakeTensor) and loss.device == torch.device("cuda", 0)
    assert loss.shape == () and loss.dtype == torch.float32  # the losses compute in fp32 (losses.py)
    assert dtypes and set(dtypes) == {torch.bfloat16}  # autocast was on: every convolution and Linear ran in bf16


def _bad_loss(how: str):
    """A cross-entropy loss that breaks on a GPU in the way ``how`` names."""
    def loss(out):
        ce = F.cross_entropy(out.logits, out.labels)
        if how == "cpu tensor":
            return (ce + torch.zeros(3)).mean()
        if how == "item":
            return ce * out.labels.float().mean().item()
        if how == "bool":
            return ce if bool(ce > 0) else -ce
        if how == "dtype":  # the bf16 logits of autocast meet an fp32 tensor where autocast is off
            with torch.autocast("cuda", enabled=False):
                return ce + torch.bmm(out.logits[None], out.logits.float().T[None]).mean()
        return ce.cpu()  # "cpu()"
    return loss


@pytest.mark.parametrize("how,error,message", [
    ("cpu tensor", RuntimeError, "found at least two devices, cuda:0 and cpu"),
    ("item", DataDependentOutputException, "_local_scalar_dense"),
    ("bool", DataDependentOutputException, "_local_scalar_dense"),
    ("cpu()", AssertionError, "copied a CUDA tensor to the host"),
    ("dtype", RuntimeError, "expected scalar type torch.bfloat16 but found torch.float32"),
])
def test_a_step_that_would_fail_on_a_gpu_is_caught(how, error, message, monkeypatch):
    monkeypatch.setitem(METHODS, "undistilled", dataclasses.replace(METHODS["undistilled"], loss=_bad_loss(how)))
    with pytest.raises(error, match=message):
        cuda_step(CASES["undistilled"])
