"""Peak GPU memory of one training process, measured on fake tensors: no GPU, nothing allocated.

The run's task (``task_for(cfg)``: its models exactly as training builds them, and its loss) is
built on the meta device, then given fake
tensors (``FakeTensorMode``: shapes, dtypes and devices, no storage) on a fake CPU device, with
the dataset as the run keeps it on the device. Two training steps (forward under the run's bf16
autocast, backward, the fused Adam/AdamW step the engine uses on a GPU) run under PyTorch's
memory tracker ``MemTracker``, which counts every tensor alive at the peak by category; the
second step runs with the optimiser moments the first allocated, as every later step does.

Why a fake CPU device: on a machine without CUDA, autograd cannot run backward on a fake CUDA
device ("hasPrimaryContext expects a valid device index"), and ``torch.autocast("cuda")``
disables itself. CPU bf16 autocast casts the same convolutions and matmuls as CUDA's, so the
activations have the GPU's sizes. Not counted: the CUDA context, the caching allocator's
rounding and fragmentation, cuDNN/cuBLAS workspaces and DDP's gradient buckets (``HEADROOM``
is left for them).

    python -m desupcon memory configs/moco_v3_vit_small_stl10.yaml
    python -m desupcon memory lw_supcrd --profile cifar100 --set bank_k=4096
"""

from __future__ import annotations

import contextlib
import io
import math
import warnings
from dataclasses import dataclass
from types import SimpleNamespace

import torch
import torch.nn as nn
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.distributed._tools.mem_tracker import MemTracker

from desupcon.core import checks, distributed as dist
from desupcon.images.datasets import Data, ImageDataset
from desupcon.engine.task import task_for
from desupcon.engine.trainer import build_optimizer, train_step

CARDS_GB = (8, 16, 24, 40, 80)
HEADROOM = 0.10  # of a card left for the CUDA context, allocator fragmentation and workspaces
GIB = 2 ** 30
# name -> (train images, test images, side, classes), as desupcon.images.datasets loads them (RGB uint8)
DATASET_SHAPES = {"digits": (1437, 360, 16, 10), "cifar10": (50_000, 10_000, 32, 10),
                  "cifar100": (50_000, 10_000, 32, 100), "stl10": (5_000, 8_000, 96, 10)}
# MemTracker's categories -> the names printed
CATEGORIES = {"Parameter": "parameters", "Gradient": "gradients", "Optstate": "optimizer state",
              "Activation": "activations", "Temp": "backward temporaries", "Buffer": "buffers",
              "Other": "dataset on the device"}


@dataclass(frozen=True)
class StepMemory:
    """Peak memory of one process's training step.

    batch: images per forward on this process.
    peak: bytes alive at the peak.
    breakdown: bytes at the peak by category (the values of ``CATEGORIES``), summing to ``peak``.
    saved: activation bytes alive when the last forward ends, i.e. what autograd keeps for backward
        (the peak may come earlier, e.g. inside a frozen teacher's forward, or later, in backward).
    """

    batch: int
    peak: int
    breakdown: dict
    saved: int

    def describe(self) -> str:
        """One line: the peak, then each category of at least 1 MiB."""
        parts = ", ".join(f"{name} {_size(b)}" for name, b in self.breakdown.items() if b >= 2 ** 20)
        return f"{_size(self.peak)} at {self.batch} images per forward ({parts})"


@dataclass(frozen=True)
class MemoryFit:
    """``peak(b) = fixed + per_image * b`` in bytes, through the traces at two batches.

    fixed: bytes that do not depend on the batch (weights, gradients, moments, dataset, bank).
    per_image: bytes each image per forward adds (activations).
    traces: the two ``StepMemory`` it was fitted to, smaller batch first.
    """

    fixed: float
    per_image: float
    traces: tuple

    def peak(self, batch: int) -> float:
        return self.fixed + self.per_image * batch

    def largest_batch(self, card_gb: float, headroom: float = HEADROOM) -> int:
        """The largest per-process batch whose peak fits ``(1 - headroom)`` of a ``card_gb`` GiB card (0: none)."""
        return max(0, math.floor((card_gb * GIB * (1 - headroom) - self.fixed) / self.per_image))


def measure_step(cfg, batch: int) -> StepMemory:
    """Trace two training steps of ``cfg``'s run at ``batch`` images per forward on one process.

    Args:
        cfg: a run's config (any registered task); its own batch size is replaced by ``batch``
            (``cfg.with_batch``), and accumulation is traced as two forwards per step when it has several.
        batch: images per forward on this process (the global batch / world size).
    """
    cfg = cfg.with_batch(batch)
    recipe, fake = cfg.recipe, FakeTensorMode()
    dtype = torch.bfloat16 if recipe.amp else None
    with traceable(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Module is None", UserWarning)  # MemTracker on a module freed in backward
        task, data = fake_task(cfg, torch.device("cpu"), channels_last=recipe.amp, mode=fake)
        with fake:
            optimizer = build_optimizer(recipe, task.parameters(), torch.device("cuda"))  # fused, as on a GPU
            tracker = _Tracker()
            tracker.track_external(*task_modules(task), optimizer, *_tensors(data))
            micro = [torch.arange(batch), torch.arange(batch, 2 * batch)][:min(recipe.accum_steps, 2)]
            scaler = torch.amp.GradScaler("cpu", enabled=False)
            saved = []  # activation bytes when each forward ends: what autograd keeps for backward

            def probe():
                saved.append(tracker.get_tracker_snapshot()[torch.device("cpu")]["Activation"])

            with tracker:
                for _ in range(2):
                    task.begin_step(0, 1)
                    train_step(task, optimizer, micro, dtype, scaler, forward=lambda idx: _Forward()(task, idx),
                               after_forward=probe)
        peak = tracker.get_tracker_snapshot("peak")[torch.device("cpu")]
    breakdown = {name: peak.get(key, 0) for key, name in CATEGORIES.items()}
    return StepMemory(batch, peak["Total"], breakdown, saved[-1])


class _Tracker(MemTracker):
    """``MemTracker`` that accepts frozen parameters and keeps only the peak of the whole step.

    PyTorch's registers a gradient hook on every parameter of each module it enters, which a
    parameter without gradient (a teacher's, a momentum encoder's) refuses: a frozen one gets a
    stand-in that hooks nothing. PyTorch's also updates the peak of every module after every
    operation, which made a ViT-S trace several times slower; only the step's peak is read here.
    """

    _NO_HOOK = SimpleNamespace(remove=lambda: None)

    def _track_module_params_and_buffers(self, module: nn.Module, install_grad_hooks: bool = True):
        for p in module.parameters():
            if not p.requires_grad and self._param_to_grad_hook_handles.get(p) is None:
                self._param_to_grad_hook_handles[p] = (self._NO_HOOK, self._NO_HOOK)
        return super()._track_module_params_and_buffers(module, install_grad_hooks)

    def _update_peak_stats(self, peak_state) -> None:
        for dev, snap in self._curr_mem_snap.items():
            if self._peak_mem.get(dev, 0) < snap["Total"]:
                self._peak_mem[dev], self._peak_mem_snap[dev] = snap["Total"], dict(snap)


def fit_memory(cfg, batches: tuple[int, int]) -> MemoryFit:
    """``MemoryFit`` through ``measure_step`` at the two per-process ``batches`` (different sizes)."""
    small, large = (measure_step(cfg, b) for b in sorted(batches))
    per_image = (large.peak - small.peak) / (large.batch - small.batch)
    return MemoryFit(small.peak - per_image * small.batch, per_image, (small, large))


def per_process_batch(cfg, world_size: int | None = None) -> int:
    """Images per forward on one process: the config's global batch over ``world_size``
    (default: this run's world size); ``ConfigError`` unless it divides evenly."""
    world_size = dist.world_size() if world_size is None else world_size
    cfg.validate(world_size=world_size)
    return cfg.recipe.batch_size // world_size


def announce_line(cfg) -> str:
    """What a run prints before training: the measured peak of one of its processes, and how."""
    step = measure_step(cfg, per_process_batch(cfg))
    return f"GPU memory per process: {step.describe()}; {method(cfg.recipe.amp)}"


def report(cfg, world_size: int = 1, cards=CARDS_GB, headroom: float = HEADROOM) -> list[str]:
    """Lines of ``python -m desupcon memory``: the peak at the run's per-process batch with its
    breakdown, the linear fit through it and half of it, and the largest batch for each card.

    Args:
        cfg: a run's config (any registered task).
        world_size: processes the global batch is split over (default: 1).
        cards: card sizes in GB (GiB, as nvidia-smi counts them) (default: ``CARDS_GB``).
        headroom: share of each card left free (default: ``HEADROOM``).
    """
    batch = per_process_batch(cfg, world_size)
    fit = fit_memory(cfg, (batch // 2, batch) if batch >= 4 else (batch, 2 * batch))
    at = next(t for t in fit.traces if t.batch == batch)
    lines = [f"{cfg.name}: one training step per process, batch {cfg.recipe.batch_size} over {world_size} process(es); "
             f"{method(cfg.recipe.amp)}",
             f"peak {at.describe()}",
             f"largest per-process batch b with fixed + per_image x b <= {1 - headroom:.0%} of the card, "
             f"from the line through batches {fit.traces[0].batch} and {fit.traces[1].batch} "
             f"(fixed {_size(fit.fixed)}, per image {_size(fit.per_image)}):"]
    for gb in cards:
        b = fit.largest_batch(gb, headroom)
        lines.append(f"  {gb:3d} GB card: " + (f"batch {b} (peak {_size(fit.peak(b))})" if b else "does not fit"))
    return lines


def method(amp: bool) -> str:
    """How the figures were obtained, for a run with (``amp``) or without mixed precision."""
    precision = "under bf16 autocast" if amp else "in fp32 (the run's amp is off)"
    return (f"traced on a fake CPU device {precision}, FakeTensorMode + MemTracker; "
            f"allocator overhead and cuDNN workspaces not counted")


def _size(n: float) -> str:
    return f"{n / GIB:.2f} GiB" if n >= GIB else f"{n / 2 ** 20:.2f} MiB"


@contextlib.contextmanager
def traceable():
    """What a fake trace needs of the package: one process (no DDP wrapper, no collectives: the
    trace runs on rank 0 alone), and input checks asserted on the device as on a GPU (on a CPU
    ``checks.require`` reads its condition back, which a fake tensor cannot do)."""
    with dist.single_process(), checks.asserts_on_device():
        yield


def fake_task(cfg, device: torch.device, channels_last: bool, mode: FakeTensorMode):
    """The task of ``cfg`` holding fake tensors of ``mode`` on ``device``, and its fake data.

    Args:
        cfg: a run's config (one process: its batch is the per-process batch).
        device: the fake device of every tensor ("cpu", or "cuda" for a forward-only trace).
        channels_last: the layout the task's CNNs train in, as ``Trainer.channels_last`` (on a GPU: with amp).
        mode: the ``FakeTensorMode`` the tensors belong to; call this outside it.

    The task is built on the meta device (a module of fake tensors can be neither moved nor
    deep-copied), then every parameter and buffer is replaced by an uninitialised fake tensor of
    the same shape, dtype and strides on ``device``. The teacher is the task's
    ``Task.untrained_teacher`` (a random network of the trained one's shape); ``Task.prepare`` is not
    run (a memory bank's size is what counts, not its contents). The dataset has the shape of
    ``dataset_shape(cfg)``.

    Returns ``(task, data)``; the task's trainer is a stand-in holding ``cfg``, ``data``, ``channels_last``
    and the generators ``aug_gen`` and ``order_gen`` (CPU ``torch.Generator``s; replace them
    for a fake CUDA device).
    """

    num_train, num_test, side, classes = dataset_shape(cfg)
    meta = torch.device("meta")
    data = Data(*(ImageDataset(cfg.dataset, torch.empty(n, 3, side, side, dtype=torch.uint8, device=meta),
                               torch.zeros(n, dtype=torch.long, device=meta), classes, (0.5,) * 3, (0.25,) * 3)
                  for n in (num_train, num_test)))
    trainer = SimpleNamespace(cfg=cfg, data=data, device=meta, channels_last=channels_last, aug_gen=None, order_gen=None)
    task_class = task_for(cfg)
    with meta, contextlib.redirect_stdout(io.StringIO()):  # the real run printed what building it prints
        task = task_class(trainer, task_class.untrained_teacher(cfg, classes))
    with mode:
        for module in task_modules(task):
            _materialize(module, device)
        for split in (data.train, data.test):
            split.images, split.labels = (_empty_like(t, device) for t in (split.images, split.labels))
    trainer.aug_gen, trainer.order_gen = torch.Generator(), torch.Generator()
    return task, data


def dataset_shape(cfg) -> tuple[int, int, int, int]:
    """``(train images, test images, side, classes)`` of the run's data: ``DATASET_SHAPES`` for a built-in's
    default splits, else read from the data itself (your own images, STL-10 ``train+unlabeled``), loaded
    streamed so that nothing but the labels is read into memory."""
    spec = getattr(cfg.dataset, "spec", None)
    default_splits = spec is None or (not spec.source and spec.split == "train" and not spec.eval_source)
    if cfg.dataset in DATASET_SHAPES and default_splits:
        return DATASET_SHAPES[cfg.dataset]
    with contextlib.redirect_stdout(io.StringIO()):
        data = Data.load(cfg.dataset, "cpu", residency_choice="stream")
    return len(data.train), len(data.test), data.train.images.shape[-1], data.train.num_classes


def task_modules(task) -> list[nn.Module]:
    """The task's modules (model, teacher, bank, ...), each once."""
    return list({id(m): m for m in vars(task).values() if isinstance(m, nn.Module)}.values())


def _tensors(data: Data) -> list[torch.Tensor]:
    return [t for split in (data.train, data.test) for t in (split.images, split.labels)]


def _materialize(module: nn.Module, device: torch.device) -> None:
    """Replace each meta parameter and buffer of ``module`` by an empty tensor like it on ``device``, in place."""
    for m in module.modules():
        for name, p in m._parameters.items():
            if p is not None and p.is_meta:
                m._parameters[name] = nn.Parameter(_empty_like(p, device), p.requires_grad)
        for name, b in m._buffers.items():
            if b is not None and b.is_meta:
                m._buffers[name] = _empty_like(b, device)


def _empty_like(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """An uninitialised tensor with ``t``'s shape, strides and dtype on ``device`` (``t`` may be a meta tensor)."""
    return torch.empty_strided(t.shape, t.stride(), dtype=t.dtype, device=device)


class _Forward(nn.Module):
    """``task.loss(idx)`` as a module, a fresh one per forward: ``MemTracker`` lets a module run
    twice in a step (the base encoder on both views, a classifier on detached features) only
    inside a parent module."""

    def forward(self, task, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        return task.loss(idx)
