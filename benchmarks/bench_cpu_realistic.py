"""CPU speed at realistic size: desupcon's training steps against reimplementations of the official loops.

Comparisons (``--compare``, default all; each side in this one process, rounds interleaved A, B, A, B, ...):

  supcon     desupcon's SupCon student step (``Trainer.step``: CIFAR ResNet-18 width 64 on both views,
             32x32, batch 128, views made in one batched call from the uint8 dataset) against the loop
             of HobbitLong/SupContrast ``main_supcon.py`` + ``losses.py``, reimplemented here: two PIL views
             per image (its CIFAR transforms) in a DataLoader with one worker per core, the same
             ResNet-18 with its 512-512-128 head on both views at once, its SupConLoss, SGD momentum 0.9,
             ``loss.item()`` for its meter.
  lw_supcrd  desupcon's LW-SupCRD student step (ResNet-18 student on view 1, the frozen ResNet-50 width
             64 teacher, BatchNorm folded, on both views, a memory bank) against a loop in the style of
             HobbitLong/RepDistiller ``train_student.py``: PIL views in a DataLoader, the frozen teacher's
             forward in eval mode under ``no_grad`` (BatchNorm as trained), the student forward, the same
             LW-SupCRD loss and bank, SGD momentum 0.9, ``loss.item()``.
  moco       desupcon's MoCo-v3 step (torchvision ViT-S/16 at 96 px, configs/moco_v3_vit_small_stl10.yaml
             at ``--moco-batch``) against one built from lightly (timm ViT-S/16 at 96 px, lightly's
             MoCoProjectionHead with MoCo-v3's 3 layers and BatchNorm, a 2-layer BatchNorm predictor from
             its ProjectionHead, ``update_momentum``, NTXentLoss(temperature=0.2), MoCoV2Transform views in a
             DataLoader, AdamW). Skipped with one line when lightly is not installed.

``--ablate`` times one fast-path choice of desupcon's step against the current default instead:

  channels_last  the SupCon (``--method``) step with its networks in channels_last, fp32.
  teacher        the frozen ResNet-50's forward on both views of a batch: BatchNorm unfolded or folded,
                 ``no_grad`` or ``inference_mode``, NCHW or channels_last.
  threads        the step with ``torch.set_num_threads(1)`` against the default (one per core);
                 interop threads are set once per process (``--interop-threads``), not per round.
  compile        ``torch.compile`` of the student: its compile time (first step minus an eager step),
                 the steady step, and the steps it needs to pay back, against a smoke run's length.

Method: each side is built from the same seed; one untimed step under ``FlopCounterMode`` warms it up
and counts its FLOPs, and one more untimed round lets DataLoader workers fill their prefetch queues; then ``--rounds`` rounds of ``--steps`` steps per side, interleaved so that load
from other processes falls on both alike. Each window's seconds per step and the 1-minute load
average at its end are printed; the report gives each side's median, images/s, the ratio of the
medians and the median of the per-round ratios (a round's two windows are adjacent in time, so a
load burst moves both), and the achieved GFLOP/s against this CPU's nominal fp32 peak
(``machine.fp32_peak``; turbo clocks can take a side above 100%) and against what a plain 2048x2048
fp32 matmul reaches on this CPU at the start (``machine.matmul_gflops``, the column "of mm"). A DataLoader side's workers make
the batch that replaces the one a step takes while that step runs, so its PIL work (1-2% of a step
here) falls in its own window.

    python benchmarks/bench_cpu_realistic.py --compare supcon            # about 4 minutes on 2 cores
    python benchmarks/bench_cpu_realistic.py --compare moco --fast auto  # bf16 where the CPU has it
    python benchmarks/bench_cpu_realistic.py --ablate teacher
    ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2 python benchmarks/bench_cpu_realistic.py  # as on AVX2 only
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import os
import statistics
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode
from torchvision import transforms as T

from bench_train_step import NUM_CLASSES, RECIPE, SeedStyleStep, TwoViewImages, desupcon_trainer, environment
from desupcon.images.datasets import CIFAR_MEAN_STD, load_splits
from desupcon.methods.ssl.config import load_config
from desupcon.nn.models import CifarResNet, ModelWrapper, fold_batchnorm
from desupcon.study.profiles import CONFIGS, PROFILES
from machine import cpu_flags, fp32_peak, load_average, matmul_gflops, write_json

COMPARISONS = ("supcon", "lw_supcrd", "moco")
ABLATIONS = ("channels_last", "teacher", "threads", "compile")
MOCO_CONFIG = CONFIGS / "moco_v3_vit_small_stl10.yaml"
FAST = {"auto": "auto", "on": True, "off": False}
ISA_CAPS = ("ONEDNN_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS")  # e.g. =AVX2: time an AVX2-only CPU on a newer one


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    what = p.add_mutually_exclusive_group()
    what.add_argument("--compare", nargs="+", choices=(*COMPARISONS, "all"),
                      help="comparisons to run (default: all, one after the other)")
    what.add_argument("--ablate", choices=ABLATIONS, help="time one fast-path choice against the default instead")
    p.add_argument("--method", choices=("supcon", "lw_supcrd"), default="supcon",
                   help="the desupcon step --ablate channels_last, threads and compile time (default: supcon)")
    p.add_argument("--rounds", type=int, default=5, help="interleaved rounds; medians are reported (default: 5)")
    p.add_argument("--steps", type=int, default=1, help="steps per side per round (default: 1)")
    p.add_argument("--batch-size", type=int, default=128, help="images per step of supcon and lw_supcrd (default: 128)")
    p.add_argument("--width", type=int, default=64,
                   help="first-stage channels of student and teacher, 64 = the standard networks (default: 64)")
    p.add_argument("--size", type=int, default=32, help="image side for supcon and lw_supcrd (default: 32)")
    p.add_argument("--bank-k", type=int, default=128,
                   help="LW-SupCRD memory-bank keys per step; K x 64 dot products are a negligible share of the "
                        "step, and the bank's start-up pass of the teacher grows with it (default: 128)")
    p.add_argument("--moco-batch", type=int, default=32, help="MoCo-v3 images per step, both sides (default: 32)")
    p.add_argument("--fast", choices=tuple(FAST), default="off",
                   help="desupcon's precision: off = fp32, as the official loops (default); auto = the Trainer's "
                        "default (bf16 where the CPU has AVX-512 BF16 or AMX)")
    p.add_argument("--threads", type=int, help="torch.set_num_threads for the whole run (default: one per core)")
    p.add_argument("--interop-threads", type=int, help="torch.set_num_interop_threads, set once at start (default: torch's)")
    p.add_argument("--json", type=Path, help="write every window, the medians and the machine to this JSON file")
    args = p.parse_args()
    if not args.ablate and not args.compare:
        args.compare = ["all"]
    if args.compare and "all" in args.compare:
        args.compare = list(COMPARISONS)
    return args


# ---------------------------------------------------------------------------------------------
# Interleaved timing
# ---------------------------------------------------------------------------------------------

def count_flops(step) -> int:
    """Runs ``step()`` once under ``FlopCounterMode`` (the warm-up) and returns its FLOPs."""
    with FlopCounterMode(display=False) as counter:
        step()
    return counter.get_total_flops()


def interleaved(sides: dict, rounds: int, steps: int, flops: bool = True) -> dict:
    """Warm up each of ``sides`` (name -> step callable) once, counting its FLOPs if ``flops`` (default: True;
    False for a compiled step, which a dispatch mode would disturb), run one untimed round (else the
    prefetching a DataLoader side starts after its warm-up would fall in the next side's first window),
    then time ``rounds`` rounds of ``steps`` steps of every side in turn; returns per side its FLOPs per step (0 = not counted), the warm-up's
    seconds, every window's seconds per step and load average, and the median seconds per step."""
    results = {}
    for name, step in sides.items():
        start = time.perf_counter()
        if flops:
            counted = count_flops(step)
        else:
            step()
            counted = 0
        results[name] = {"flops": counted, "first_step_s": time.perf_counter() - start, "windows": [], "loads": []}
        print(f"  {name}: warm-up step {results[name]['first_step_s']:.1f} s", flush=True)
    for step in sides.values():  # untimed: a DataLoader side's workers fill their prefetch queue meanwhile
        step()
    for r in range(rounds):
        for name, step in sides.items():
            start = time.perf_counter()
            for _ in range(steps):
                step()
            seconds = (time.perf_counter() - start) / steps
            results[name]["windows"].append(seconds)
            results[name]["loads"].append(load_average())
            print(f"  round {r + 1}: {name:42s} {seconds:7.2f} s/step  load {results[name]['loads'][-1]:.2f}",
                  flush=True)
    for r in results.values():
        r["seconds_per_step"] = statistics.median(r["windows"])
    return results


def summarize(title: str, results: dict, images_per_step: int, peak: dict, ablation: bool = False) -> dict:
    """Print images/s, achieved GFLOP/s and share of the nominal peak per side (medians) and the ratios of
    images/s: the first side's to each other's, or with ``ablation`` each other side's to the first (the
    default); returns the figures."""
    print(f"\n{title}")
    print(f"  {'':42s}{'images/s':>9s}{'s/step':>8s}{'GFLOP/step':>11s}{'GFLOP/s':>8s}{'of peak':>8s}{'of mm':>7s}  load")
    for name, r in results.items():
        r["images_per_second"] = images_per_step / r["seconds_per_step"]
        r["gflops"] = r["flops"] / r["seconds_per_step"] / 1e9 if r["flops"] else None
        counted = r["gflops"] is not None
        share = f"{100 * r['gflops'] / peak['gflops']:.0f}%" if counted and peak["gflops"] else "-"
        of_mm = f"{100 * r['gflops'] / peak['matmul_gflops']:.0f}%" if counted else "-"
        flops = f"{r['flops'] / 1e9:11.1f}{r['gflops']:8.1f}" if counted else f"{'-':>11s}{'-':>8s}"
        loads = f"{min(r['loads']):.1f}-{max(r['loads']):.1f}"
        print(f"  {name:42s}{r['images_per_second']:9.2f}{r['seconds_per_step']:8.2f}{flops}{share:>8s}{of_mm:>7s}  {loads}")
    first, *others = results
    ratios = {}
    for other in others:
        a, b = (other, first) if ablation else (first, other)
        per_round = [tb / ta for ta, tb in zip(results[a]["windows"], results[b]["windows"])]
        ratios[other] = {"of_medians": results[a]["images_per_second"] / results[b]["images_per_second"],
                         "per_round": per_round, "median_per_round": statistics.median(per_round)}
        print(f"  images/s, {a} / {b}: {ratios[other]['of_medians']:.2f}x (ratio of the medians); per round "
              f"{' '.join(f'{x:.2f}' for x in per_round)}, median {ratios[other]['median_per_round']:.2f}x")
    return {"sides": results, "ratios": ratios, "images_per_step": images_per_step}


# ---------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------

def synthetic(num_images: int, size: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Random uint8 images (N, 3, size, size) and labels (N,) of ``NUM_CLASSES`` classes."""
    gen = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (num_images, 3, size, size), dtype=torch.uint8, generator=gen)
    return images, torch.randint(0, NUM_CLASSES, (num_images,), generator=gen)


def endless(loader):
    """The batches of ``loader``, epoch after epoch (a persistent-worker loader keeps its workers)."""
    while True:
        yield from loader


def pil_loader(images: torch.Tensor, labels: torch.Tensor, transform, batch_size: int, seed: int):
    """A shuffling DataLoader of (view 1, view 2, label, index) with one worker per core, as the official loops."""
    dataset = TwoViewImages(images.permute(0, 2, 3, 1).numpy(), labels.numpy(), transform)
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=True, drop_last=True,
                                       num_workers=os.cpu_count(), persistent_workers=True,
                                       generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------------------------------------
# The official loops, reimplemented
# ---------------------------------------------------------------------------------------------

class SupContrastLoss(nn.Module):
    """SupContrast ``losses.py`` SupConLoss, contrast mode "all", for features (B, views, D) and labels (B,):
    every view anchors; positives are the other views of its class; loss scaled by temperature / base_temperature."""

    def __init__(self, temperature: float = 0.07, base_temperature: float = 0.07):
        super().__init__()
        self.temperature, self.base_temperature = temperature, base_temperature

    def forward(self, features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        b, views = features.shape[:2]
        same = (labels.view(-1, 1) == labels.view(1, -1)).float().repeat(views, views)  # (BV, BV)
        contrast = torch.cat(features.unbind(dim=1))  # (BV, D) view-major
        logits = contrast @ contrast.T / self.temperature
        logits = logits - logits.max(dim=1, keepdim=True).values.detach()
        not_self = 1 - torch.eye(b * views, device=features.device)
        positives = same * not_self
        log_prob = logits - torch.log((logits.exp() * not_self).sum(1, keepdim=True) + 1e-9)
        mean_log_prob_pos = (positives * log_prob).sum(1) / positives.sum(1)
        return -(self.temperature / self.base_temperature) * mean_log_prob_pos.mean()


def cifar_two_view_transform(size: int) -> T.Compose:
    """SupContrast ``main_supcon.py``'s CIFAR-100 training transform (one view; applied twice per image)."""
    mean, std = (0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761)
    return T.Compose([T.RandomResizedCrop(size=size, scale=(0.2, 1.0)), T.RandomHorizontalFlip(),
                      T.RandomApply([T.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8), T.RandomGrayscale(p=0.2),
                      T.ToTensor(), T.Normalize(mean=mean, std=std)])


class SupContrastStep:
    """One step of SupContrast's ``train``: both views through the encoder and head at once, SupConLoss, SGD."""

    def __init__(self, images, labels, width: int, batch_size: int, seed: int):
        torch.manual_seed(seed)
        self.encoder = CifarResNet("resnet18", width)
        dim = self.encoder.feature_dim
        self.head = nn.Sequential(nn.Linear(dim, dim), nn.ReLU(inplace=True), nn.Linear(dim, 128))  # head="mlp"
        self.criterion = SupContrastLoss(temperature=0.07)
        params = [*self.encoder.parameters(), *self.head.parameters()]
        self.optimizer = torch.optim.SGD(params, lr=0.05, momentum=0.9, weight_decay=1e-4)
        self.batches = endless(pil_loader(images, labels, cifar_two_view_transform(images.shape[-1]), batch_size, seed))
        self.encoder.train(), self.head.train()

    def __call__(self):
        x1, x2, labels, _ = next(self.batches)
        images, bsz = torch.cat([x1, x2], dim=0), labels.shape[0]
        features = F.normalize(self.head(self.encoder(images)), dim=1)
        f1, f2 = torch.split(features, [bsz, bsz], dim=0)
        loss = self.criterion(torch.cat([f1.unsqueeze(1), f2.unsqueeze(1)], dim=1), labels)
        loss.item()  # its AverageMeter
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()


class RepDistillerStyleStep(SeedStyleStep):
    """``SeedStyleStep`` (PIL views in a DataLoader, the frozen teacher in eval mode under ``no_grad`` with its
    BatchNorm as trained, the student, the same LW-SupCRD loss and bank) with RepDistiller's optimiser, SGD
    momentum 0.9 (lr 0.05, weight decay 5e-4), and its meter's ``loss.item()`` per step."""

    def __init__(self, cfg, images, labels, teacher, device):
        super().__init__(cfg, images, labels, teacher, device)
        params = self.optimizer.param_groups[0]["params"]
        self.optimizer = torch.optim.SGD(params, lr=0.05, momentum=0.9, weight_decay=5e-4)

    def __call__(self):
        super().__call__().item()


class LightlyMoCoV3Step:
    """MoCo-v3 from lightly's building blocks on a timm ViT-S/16: views from lightly's transform in a DataLoader."""

    def __init__(self, images, labels, batch_size: int, seed: int):
        import timm
        from lightly.loss import NTXentLoss
        from lightly.models.modules.heads import MoCoProjectionHead, ProjectionHead
        from lightly.models.utils import deactivate_requires_grad, update_momentum
        from lightly.transforms.moco_transform import MoCoV2Transform

        torch.manual_seed(seed)
        size = images.shape[-1]
        self.backbone = timm.create_model("vit_small_patch16_224", img_size=size, num_classes=0, pretrained=False)
        self.projection = MoCoProjectionHead(384, 4096, 256, num_layers=3, batch_norm=True)  # MoCo-v3's projector
        self.prediction = ProjectionHead([(256, 4096, nn.BatchNorm1d(4096), nn.ReLU()),
                                          (4096, 256, nn.BatchNorm1d(256, affine=False), None)])
        self.backbone_m, self.projection_m = copy.deepcopy(self.backbone), copy.deepcopy(self.projection)
        deactivate_requires_grad(self.backbone_m), deactivate_requires_grad(self.projection_m)
        self.update_momentum, self.criterion = update_momentum, NTXentLoss(temperature=0.2)
        params = [*self.backbone.parameters(), *self.projection.parameters(), *self.prediction.parameters()]
        self.optimizer = torch.optim.AdamW(params, lr=1.5e-4 * batch_size / 256, weight_decay=0.1)
        view = MoCoV2Transform(input_size=size).transforms[0]  # the pipeline of each of its two views
        self.batches = endless(pil_loader(images, labels, view, batch_size, seed))

    def __call__(self):
        x0, x1, _, _ = next(self.batches)
        self.update_momentum(self.backbone, self.backbone_m, m=0.99)
        self.update_momentum(self.projection, self.projection_m, m=0.99)
        query0 = self.prediction(self.projection(self.backbone(x0)))
        query1 = self.prediction(self.projection(self.backbone(x1)))
        with torch.no_grad():
            key0 = self.projection_m(self.backbone_m(x0))
            key1 = self.projection_m(self.backbone_m(x1))
        loss = 0.5 * (self.criterion(query0, key1) + self.criterion(query1, key0))
        loss.item()
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad()


# ---------------------------------------------------------------------------------------------
# Comparisons
# ---------------------------------------------------------------------------------------------

CPU = torch.device("cpu")


def student_config(args, method: str):
    """The cifar100 profile's ``method`` student at the benchmark's width and batch (and bank for LW-SupCRD)."""
    extra = {"bank_k": args.bank_k} if method == "lw_supcrd" else {}
    return RECIPE.student_config(method, width=args.width, batch_size=args.batch_size, **extra)


def student_data(args, cfg) -> tuple[torch.Tensor, torch.Tensor]:
    """Synthetic images for ``cfg``: whole batches, at least two, and room for its bank."""
    batches = max(2, -(-(cfg.batch_size + cfg.bank_k) // cfg.batch_size))
    cfg.validate(num_train=batches * cfg.batch_size)
    return synthetic(batches * cfg.batch_size, args.size, cfg.seed)


def random_teacher(args, cfg) -> ModelWrapper:
    """The frozen teacher: ResNet-50 at ``--width`` with its linear projection head, random weights (speed
    does not depend on them), from the run's seed."""
    torch.manual_seed(cfg.seed)
    return ModelWrapper(NUM_CLASSES, RECIPE.teacher_arch, args.width, cfg.proj_dim, projection="linear")


def compare_supcon(args) -> dict:
    cfg = student_config(args, "supcon")
    images, labels = student_data(args, cfg)
    sides = {"desupcon SupCon (Trainer.step)": desupcon_trainer(cfg, images, labels, None, CPU, FAST[args.fast])[1],
             "SupContrast main_supcon (reimpl.)": SupContrastStep(images, labels, args.width, args.batch_size,
                                                                  cfg.seed)}
    return sides, args.batch_size, (f"SupCon student: ResNet-18 width {args.width}, {args.size}x{args.size}, "
                                    f"batch {args.batch_size} (both views: {2 * args.batch_size} images through "
                                    f"the network)")


def compare_lw_supcrd(args) -> dict:
    cfg = student_config(args, "lw_supcrd")
    images, labels = student_data(args, cfg)
    teacher = random_teacher(args, cfg)
    sides = {"desupcon LW-SupCRD (Trainer.step)": desupcon_trainer(cfg, images, labels, teacher, CPU,
                                                                   FAST[args.fast])[1],
             "RepDistiller-style loop (reimpl.)": RepDistillerStyleStep(cfg, images, labels, teacher, CPU)}
    return sides, args.batch_size, (f"LW-SupCRD student: ResNet-18 width {args.width} on view 1, frozen ResNet-50 "
                                    f"width {args.width} on both views, {args.size}x{args.size}, batch "
                                    f"{args.batch_size}, bank K={cfg.bank_k}")


def compare_moco(args) -> dict | None:
    if importlib.util.find_spec("lightly") is None:
        print("moco: skipped, lightly is not installed (pip install lightly; a benchmark-only tool)")
        return None
    cfg = load_config(MOCO_CONFIG, [f"train.batch_size={args.moco_batch}"])
    size = cfg.data.image_size
    images, labels = synthetic(2 * args.moco_batch, size, cfg.seed)
    sides = {"desupcon MoCo-v3 (Trainer.step)": desupcon_trainer(cfg, images, labels, None, CPU, FAST[args.fast])[1],
             "lightly MoCo-v3 (timm ViT-S/16)": LightlyMoCoV3Step(images, labels, args.moco_batch, cfg.seed)}
    return sides, args.moco_batch, f"MoCo-v3: ViT-S/16 at {size}x{size}, batch {args.moco_batch}"


# ---------------------------------------------------------------------------------------------
# Ablations of desupcon's fast-path choices
# ---------------------------------------------------------------------------------------------

def layout(trainer, memory_format: torch.memory_format):
    """Put the task's networks (the model and a distillation teacher) and its views in ``memory_format``."""
    trainer.channels_last = memory_format == torch.channels_last  # what the task reads for the views' layout
    for module in (trainer.task.model, getattr(trainer.task, "teacher", None)):
        if module is not None:
            module.to(memory_format=memory_format)
    return trainer


def with_threads(threads: int, step):
    """``step`` run under ``torch.set_num_threads(threads)``, the previous setting restored after it."""
    def run():
        before = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            step()
        finally:
            torch.set_num_threads(before)
    return run


def method_trainer(args, memory_format: torch.memory_format | None = None):
    """A fresh Trainer of ``--method`` at the benchmark's sizes and its step (networks in ``memory_format``
    if given, else as the Trainer chose)."""
    cfg = student_config(args, args.method)
    images, labels = student_data(args, cfg)
    teacher = random_teacher(args, cfg) if args.method == "lw_supcrd" else None
    trainer, step = desupcon_trainer(cfg, images, labels, teacher, CPU, FAST[args.fast])
    if memory_format is not None:
        layout(trainer, memory_format)
    return trainer, step


def ablate_channels_last(args):
    sides = {"NCHW (the fp32 CPU default before)": method_trainer(args, torch.contiguous_format)[1],
             "channels_last (the default now)": method_trainer(args, torch.channels_last)[1]}
    return sides, args.batch_size, f"desupcon {args.method} step, fp32 unless --fast: NCHW against channels_last"


def ablate_threads(args):
    threads = torch.get_num_threads()
    sides = {f"{threads} threads (default)": method_trainer(args)[1],
             "1 thread": with_threads(1, method_trainer(args)[1])}
    return sides, args.batch_size, (f"desupcon {args.method} step: torch.set_num_threads; interop threads "
                                    f"{torch.get_num_interop_threads()} (--interop-threads)")


def ablate_teacher(args):
    """The frozen teacher's forward on both views of a batch, five ways; their outputs must agree."""
    cfg = student_config(args, "lw_supcrd")
    unfolded = random_teacher(args, cfg).eval().requires_grad_(False)
    folded = copy.deepcopy(unfolded)
    fold_batchnorm(folded.backbone)
    folded_cl = copy.deepcopy(folded).to(memory_format=torch.channels_last)
    x = torch.randn(2 * args.batch_size, 3, args.size, args.size, generator=torch.Generator().manual_seed(0))
    variants = {"BN unfolded, no_grad, NCHW (RepDistiller)": (unfolded, torch.no_grad),
                "BN folded, no_grad, NCHW (fp32 CPU before)": (folded, torch.no_grad),
                "BN folded, inference_mode, NCHW": (folded, torch.inference_mode),
                "BN folded, no_grad, channels_last (default)": (folded_cl, torch.no_grad),
                "BN folded, inference_mode, channels_last": (folded_cl, torch.inference_mode)}
    with torch.no_grad():
        reference = unfolded.backbone(x)
        for name, (net, _) in variants.items():
            error = ((net.backbone(x) - reference).norm() / reference.norm()).item()
            print(f"  {name}: relative difference of the features from the unfolded teacher {error:.1e}")

    def forward(net, mode):
        def run():
            with mode():
                net.backbone(x)
        return run
    sides = {name: forward(net, mode) for name, (net, mode) in variants.items()}
    return sides, 2 * args.batch_size, (f"frozen teacher forward: ResNet-50 width {args.width}, {args.size}x{args.size}, "
                                        f"{2 * args.batch_size} images (both views of a batch)")


def smoke_run_steps() -> int:
    """Optimiser steps of one smoke-profile student run (digits train split, its batch and epochs)."""
    smoke = PROFILES["smoke"]
    return len(load_splits("digits")[0]) // smoke.batch_size * smoke.student_epochs


def ablate_compile(args):
    trainer, compiled = method_trainer(args)
    trainer.task.forward = torch.compile(trainer.task.forward)
    sides = {"eager (default)": method_trainer(args)[1], "torch.compile (student)": compiled}
    return sides, args.batch_size, f"desupcon {args.method} step: eager against torch.compile of the student"


def report_compile(results: dict):
    """Compile time (the compiled side's first step minus the eager steady step) and its payback in steps."""
    eager, compiled = results["sides"].values()
    compile_s = compiled["first_step_s"] - eager["seconds_per_step"]
    saving = eager["seconds_per_step"] - compiled["seconds_per_step"]
    steps = smoke_run_steps()
    payback = f"{compile_s / saving:.0f} steps" if saving > 0 else "never (the compiled step is not faster)"
    print(f"  compile time about {compile_s:.1f} s; saving {saving:.3f} s per step; pays back after {payback}; "
          f"a smoke-profile student run is {steps} steps")
    results.update(compile_seconds=compile_s, saving_per_step=saving, smoke_run_steps=steps)


# ---------------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------------

BUILDERS = {"supcon": compare_supcon, "lw_supcrd": compare_lw_supcrd, "moco": compare_moco,
            "channels_last": ablate_channels_last, "teacher": ablate_teacher, "threads": ablate_threads,
            "compile": ablate_compile}


def machine_line(peak: dict) -> str:
    ghz = f"{peak['ghz']:.2f} GHz" if peak["ghz"] else "clock unknown"
    nominal = f"{peak['gflops']:.0f} GFLOP/s" if peak["gflops"] else "unknown"
    return (f"flags {' '.join(cpu_flags()) or 'none read'}; {peak['cores']} cores x {ghz} x {peak['flops_per_cycle']} "
            f"fp32 FLOP/cycle ({peak['simd']}) = nominal fp32 peak {nominal} (turbo clocks go above it); "
            f"a plain fp32 matmul reaches {peak['matmul_gflops']:.0f} GFLOP/s here ('of mm')")


def main():
    args = parse_args()
    if args.interop_threads:
        torch.set_num_interop_threads(args.interop_threads)
    if args.threads:
        torch.set_num_threads(args.threads)
    peak, env = fp32_peak(), environment(CPU)
    peak["matmul_gflops"] = matmul_gflops()
    print(f"CPU: {env['cpu']} | {machine_line(peak)}")
    capped = {name: os.environ[name] for name in ISA_CAPS if os.environ.get(name)}
    if capped:
        print("instruction sets capped (as on a CPU without the later ones): "
              + ", ".join(f"{name}={value}" for name, value in capped.items()))
    print(f"torch {env['torch']}, {torch.get_num_threads()} threads, {torch.get_num_interop_threads()} interop threads "
          f"| desupcon --fast {args.fast} | load average {load_average():.2f} at start | "
          f"{args.rounds} interleaved rounds of {args.steps} step(s) per side")
    out = {"environment": env, "peak": peak, "flags": cpu_flags(), "isa_caps": capped, "args": {k: str(v) for k, v in vars(args).items()},
           "results": {}}
    for name in args.compare or [args.ablate]:
        built = BUILDERS[name](args)
        if built is None:
            continue
        sides, images_per_step, title = built
        print(f"\n{name}: {title}", flush=True)
        timed = interleaved(sides, args.rounds, args.steps, flops=name != "compile")
        results = summarize(f"{name}: {title}", timed, images_per_step, peak, ablation=bool(args.ablate))
        if name == "compile":
            report_compile(results)
        out["results"][name] = results
        del sides, built
    print(f"\nload average {load_average():.2f} at the end")
    write_json(args.json, out)


if __name__ == "__main__":
    main()
