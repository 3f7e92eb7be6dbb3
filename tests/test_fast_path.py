"""The fast training path and the sync-free step of ``desupcon.engine.Trainer`` (CPU, seconds).

* ``fast=True`` (bf16 autocast + channels_last, the ``fast="auto"`` default on CUDA and on CPUs with
  AMX or AVX-512 BF16) computes the same loss and makes nearly the same first Adam update as the
  fp32 path ``fast=False``, for lw_supcrd with a memory bank, supcon and crd.
* ``fast="auto"`` resumes bit-identically: one epoch, a checkpoint, a second epoch in a new
  Trainer equal two epochs straight.
* ``Trainer.step`` never reads a tensor back to the host. On a GPU each such read (``.item()``,
  ``bool()``, ``int()``, ...) makes the host wait for the queued kernels; on the CPU nothing waits,
  so the reads are caught by patching the ``Tensor`` methods that perform them. ``step`` returns
  tensors, and an epoch logs the mean of exactly those step losses.
"""

from __future__ import annotations

import contextlib
import copy
import io
import sys

import pytest
import torch
import torch.nn.functional as F
from torch.optim import optimizer as torch_optimizer
from tqdm import tqdm

from desupcon.core import checks
from desupcon.images.datasets import Data, ImageDataset, load_splits
from desupcon.engine.trainer import Trainer, native_bf16, resolve_fast
from desupcon.methods.distill.config import RunConfig
from desupcon.nn.models import ModelWrapper, fold_batchnorm
from desupcon.study.profiles import PROFILES

SMOKE = PROFILES["smoke"]
CPU = torch.device("cpu")
BATCH = 16
METHODS = {"lw_supcrd": dict(bank_k=32), "supcon": {}, "crd": {}}
HOST_READS = ("item", "tolist", "numpy", "__bool__", "__int__", "__float__", "__index__")
# Reads that are not syncs on a GPU: checks.require's CPU branch (on a GPU it is torch._assert_async)
# and the optimiser's step counter (a host tensor, except in the fused CUDA Adam the Trainer uses).
ALLOWED_READERS = (checks.require.__code__, torch_optimizer._get_value.__code__)


@contextlib.contextmanager
def no_host_reads():
    """Make every tensor-to-Python read raise ``AssertionError``, except from ``ALLOWED_READERS``."""
    def guarded(name):
        original = getattr(torch.Tensor, name)

        def read(self, *args, **kwargs):
            if sys._getframe(1).f_code not in ALLOWED_READERS:
                raise AssertionError(f"Tensor.{name}() in the training step: a host-device sync on a GPU")
            return original(self, *args, **kwargs)
        return read

    with pytest.MonkeyPatch.context() as mp:
        for name in HOST_READS:
            mp.setattr(torch.Tensor, name, guarded(name))
        yield


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: one thread, no OpenMP stalls on shared cores


@pytest.fixture(scope="module")
def data() -> Data:
    """64 training and 16 test images of the embedded digits (16x16, 10 classes)."""
    first = lambda ds, n: ImageDataset(ds.name, ds.images[:n], ds.labels[:n], ds.num_classes, ds.mean, ds.std)
    train, test = load_splits("digits")
    return Data(first(train, 64), first(test, 16))


@pytest.fixture(scope="module")
def teacher() -> ModelWrapper:
    """A tiny ResNet-50 teacher with the linear projection head; random weights suffice here."""
    torch.manual_seed(0)
    return ModelWrapper(10, "resnet50", width=4, proj_dim=RunConfig.proj_dim, projection="linear")


def trainer(method: str, data: Data, teacher: ModelWrapper, fast: bool) -> Trainer:
    cfg = SMOKE.student_config(method, width=4, batch_size=BATCH, **METHODS[method])
    return Trainer(cfg, data, CPU, teacher if cfg.uses_teacher else None, fast=fast)


def flat(model: torch.nn.Module, attribute: str) -> torch.Tensor:
    """Every parameter's ``data`` or ``grad`` as one vector (channels_last tensors in logical order)."""
    return torch.cat([getattr(p, attribute).flatten() for p in model.parameters()])


@pytest.mark.parametrize("method", METHODS)
def test_fast_path_matches_fp32(method, data, teacher):
    plain, fast = trainer(method, data, teacher, fast=False), trainer(method, data, teacher, fast=True)
    assert fast.model.backbone.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    idx = torch.arange(BATCH)

    loss_fp32, _ = plain.task.loss(idx)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss_bf16, _ = fast.task.loss(idx)
    assert loss_bf16.dtype == torch.float32  # the loss maths itself stays in fp32
    assert loss_bf16 != loss_fp32  # the fast path really ran its networks in bf16
    torch.testing.assert_close(loss_bf16, loss_fp32, rtol=2e-2, atol=0)

    before = flat(plain.model, "data").clone()
    plain.step(idx + BATCH)
    seen = []  # (input channels_last?, output dtype) of the student's first convolution in the fast step
    hook = fast.model.backbone.conv1.register_forward_hook(
        lambda _module, inputs, output: seen.append(
            (inputs[0].is_contiguous(memory_format=torch.channels_last), output.dtype)))
    fast.step(idx + BATCH)
    hook.remove()
    assert seen == [(True, torch.bfloat16)]
    params_fp32, params_bf16 = flat(plain.model, "data"), flat(fast.model, "data")
    assert (params_fp32 - before).norm() > 0  # the step moved the parameters
    assert (params_bf16 - params_fp32).norm() / params_fp32.norm() < 0.05
    # at initialisation the contrastive gradients are small differences of large terms, so bf16
    # rounding perturbs them by tens of percent; their direction still agrees
    assert F.cosine_similarity(flat(fast.model, "grad"), flat(plain.model, "grad"), dim=0) > 0.8


@pytest.mark.parametrize("method", METHODS)
def test_step_reads_nothing_back_from_the_device(method, data, teacher):
    with pytest.raises(AssertionError, match="host-device sync"), no_host_reads():
        torch.ones(1).item()  # the guard itself works
    t = trainer(method, data, teacher, fast=False)
    with no_host_reads():
        loss, logits = t.step(torch.arange(BATCH))
    assert isinstance(loss, torch.Tensor) and loss.shape == () and not loss.requires_grad
    assert isinstance(logits, torch.Tensor) and logits.shape == (BATCH, 10) and not logits.requires_grad


@pytest.mark.slow
def test_epoch_logs_the_mean_of_its_step_losses(data, teacher):
    logged = trainer("lw_supcrd", data, teacher, fast=False).epoch(0, "fast_path_test", tqdm(disable=True))
    stepped = trainer("lw_supcrd", data, teacher, fast=False)  # same seed: same order, views and bank draws
    order = torch.randperm(len(data.train), generator=stepped.order_gen)
    losses, correct = [], 0
    for step in range(stepped.steps_per_epoch):
        idx = order[step * BATCH:(step + 1) * BATCH]
        loss, logits = stepped.step(idx)
        losses.append(loss)
        correct += int((logits.argmax(dim=1) == data.train.labels[idx]).sum())
    assert logged["loss"] == pytest.approx(torch.stack(losses).mean().item(), rel=1e-6)
    assert logged["train_acc"] == pytest.approx(100 * correct / (stepped.steps_per_epoch * BATCH))


@pytest.mark.parametrize("arch", ["resnet18", "resnet50"])
@pytest.mark.slow
def test_folded_batchnorm_computes_the_same_features(arch):
    torch.manual_seed(0)
    net = ModelWrapper(10, arch, width=4).backbone
    with torch.no_grad():  # running statistics far from their initial (0, 1)
        for _ in range(3):
            net(3 * torch.randn(32, 3, 16, 16) + 1)
    for bn in (m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)):
        torch.nn.init.uniform_(bn.weight, 0.5, 2.0)
        torch.nn.init.uniform_(bn.bias, -1.0, 1.0)
    net.eval()
    x = 3 * torch.randn(8, 3, 16, 16) + 1
    with torch.no_grad():
        expected = net(x)
        folded = fold_batchnorm(copy.deepcopy(net))
        assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
        torch.testing.assert_close(folded(x), expected, rtol=1e-4, atol=1e-5 * expected.abs().max().item())
    with pytest.raises(ValueError, match="eval-mode"):
        fold_batchnorm(copy.deepcopy(net).train())


def _assert_bitwise_equal(a, b, where: str):
    """Tensors ``torch.equal``, containers element by element; anything else ``==``."""
    if isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert set(a) == set(b), where
        for key in a:
            _assert_bitwise_equal(a[key], b[key], f"{where}[{key!r}]")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_bitwise_equal(x, y, f"{where}[{i}]")
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


@pytest.mark.slow
@pytest.mark.parametrize("fast", ["auto", False])
def test_resume_is_bit_identical(data, teacher, fast):
    """Under fast="auto" (bf16 here if this CPU has AMX or AVX-512 BF16, else fp32) and in fp32 (channels_last
    on a CPU: the optimiser state keeps its layout through torch.save), training stopped after epoch 1 and
    resumed from its checkpoint in a new Trainer ends exactly where two epochs straight end."""
    cfg = SMOKE.student_config("lw_supcrd", width=4, batch_size=BATCH, epochs=2, bank_k=32)
    make = lambda: Trainer(cfg, data, CPU, teacher, fast=fast)
    epoch = lambda t, e: {k: v for k, v in t.epoch(e, "fast_resume", tqdm(disable=True)).items() if k != "seconds"}

    straight = make()
    bf16 = fast == "auto" and native_bf16(CPU)
    assert straight.autocast_dtype == (torch.bfloat16 if bf16 else None) and straight.channels_last
    straight_log = [epoch(straight, 0), epoch(straight, 1)]

    stopped = make()
    first = epoch(stopped, 0)
    checkpoint = io.BytesIO()
    torch.save(stopped.state_dict(), checkpoint)
    checkpoint.seek(0)
    resumed = make()
    resumed.load_state_dict(torch.load(checkpoint, weights_only=True))
    assert [first, epoch(resumed, 1)] == straight_log
    _assert_bitwise_equal(resumed.state_dict(), straight.state_dict(), "state")


def test_fast_auto_respects_the_recipe_and_overrides():
    assert resolve_fast("auto", CPU, amp=False) == (False, "fast=auto: fp32 (the recipe's amp is off)")
    on, line = resolve_fast("auto", CPU, amp=True)
    assert on == native_bf16(CPU) and line.startswith("fast=auto: ")
    assert resolve_fast(False, CPU, amp=True) == (False, "fast=off: fp32")
    assert resolve_fast(True, CPU, amp=False)[0] is True
    with pytest.raises(ValueError, match="fast must be True, False or 'auto'"):
        resolve_fast("yes", CPU, amp=True)
