"""Speed of one distillation training step: desupcon's Trainer and the write-ups' pipeline, side by side.

Both pipelines train the same LW-SupCRD student (ResNet-18, MLP head) from the same frozen teacher
(ResNet-50, linear head, random weights: speed does not depend on them) with the same batch size,
memory bank, loss, Adam step and seed, on synthetic uint8 images of the real shape:

  desupcon    ``desupcon.engine.Trainer``: the dataset is a uint8 tensor on the device, both views
              are made there in one batched call, bf16 autocast + channels_last where the
              hardware runs bf16 natively (``Trainer(fast="auto")``: CUDA, AMX/AVX-512 BF16 CPUs),
              fp32 channels_last on other CPUs, the teacher runs without autograd.
  write-up-style  what the write-ups ran: torchvision PIL transforms per image (two views) in a DataLoader
              with one worker per core (pinned memory on CUDA, persistent workers), fp32, eager.
              The DataLoader is part of the timed hot path.

Each pipeline runs --warmup steps, then --repeats windows of --steps steps, synchronising with the
device only at the ends of a window; the median window is reported. It prints images/s, seconds per
step and the ratio; FLOPs per step (``FlopCounterMode`` on one desupcon step) and achieved TFLOP/s;
on CUDA also host syncs per step, peak memory, seconds per CIFAR-100 epoch, minutes per 50-epoch
configuration and for the write-ups' whole study, and the share of the GPU's bf16 peak. --moco adds one
MoCo-v3 ViT-S/16 step (96x96, batch 256) on CUDA. --json writes everything with the hardware and
software versions.

    python benchmarks/bench_train_step.py                  # CPU-sized defaults, under 3 minutes
    python benchmarks/bench_train_step.py --realistic --fast off --steps 2 --warmup 1   # fp32, real sizes
    python benchmarks/bench_train_step.py --device cuda --moco --json benchmarks/h100.json
"""

from __future__ import annotations

import argparse
import copy
import gc
import importlib.util
import itertools
import os
import platform
import statistics
import time
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import torchvision
from PIL import Image
from torch.utils.flop_counter import FlopCounterMode
from torchvision import transforms as T

from desupcon.images.augment import two_views
from desupcon.images.datasets import CIFAR_MEAN_STD, Data, ImageDataset
from desupcon.engine.trainer import Trainer
from desupcon.nn.banks import MomentumMemoryBank
from desupcon.nn.losses import lw_supcrd_loss
from desupcon.nn.models import ModelWrapper, build_model
from desupcon.study.profiles import PROFILES
from machine import cpu_model, write_json

RECIPE = PROFILES["cifar100"]  # the write-ups' recipe: architectures, batch, epochs, bank
NUM_CLASSES = 100
CIFAR100_TRAIN_IMAGES = 50_000
STUDY_STUDENT_RUNS = 25  # the write-ups' study: baselines, alpha/beta/tau/lambda sweeps, bank ablation
DEFAULTS = {  # flags left unset take the value for the device: a quick CPU check, the real recipe on CUDA
    "cpu": dict(steps=5, warmup=2, size=16, num_images=2048, student_width=16, teacher_width=16, bank_k=1024),
    "cuda": dict(steps=50, warmup=10, size=32, num_images=CIFAR100_TRAIN_IMAGES, student_width=64,
                 teacher_width=64, bank_k=RECIPE.bank_k),
}
REALISTIC = dict(size=32, student_width=64, teacher_width=64)  # --realistic: the write-ups' networks and images
PEAK_BF16_TFLOPS = (  # dense bf16 tensor-core peak; the first name fragment found in the device name wins
    ("H100 PCIe", 756), ("H100 NVL", 835), ("H100", 989), ("H200", 989), ("A100", 312),
)
MOCO = dict(image_size=96, batch_size=256, num_images=2048, base_lr=1.5e-4, weight_decay=0.1, momentum=0.99)


def parse_args() -> argparse.Namespace:
    cpu, cuda = DEFAULTS["cpu"], DEFAULTS["cuda"]
    per_device = lambda key: f"(default: {cpu[key]} on CPU, {cuda[key]} on CUDA)"
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                   help="where to train (default: auto = cuda if available, else cpu)")
    p.add_argument("--steps", type=int, help=f"timed steps per window {per_device('steps')}")
    p.add_argument("--warmup", type=int, help=f"untimed steps before the first window {per_device('warmup')}")
    p.add_argument("--repeats", type=int, default=3,
                   help="timed windows per pipeline; the median is reported (default: 3)")
    p.add_argument("--batch-size", type=int, default=RECIPE.batch_size,
                   help=f"images per step (default: {RECIPE.batch_size}, the write-ups')")
    p.add_argument("--size", type=int, help=f"side of the square synthetic images {per_device('size')}")
    p.add_argument("--num-images", type=int, help=f"synthetic training images {per_device('num_images')}")
    p.add_argument("--student-width", type=int,
                   help=f"first-stage channels of the ResNet-18 student, 64 = standard {per_device('student_width')}")
    p.add_argument("--teacher-width", type=int,
                   help=f"first-stage channels of the ResNet-50 teacher, 64 = standard {per_device('teacher_width')}")
    p.add_argument("--realistic", action="store_true",
                   help="the write-ups' sizes on any device: 32x32 images, ResNet-18 and ResNet-50 at width 64 "
                        "(with --fast off: the fp32 path; flags given explicitly win)")
    p.add_argument("--bank-k", type=int, help=f"memory-bank keys per step, at most --num-images minus the batch "
                                              f"{per_device('bank_k')}")
    p.add_argument("--fast", choices=("auto", "on", "off"), default="auto",
                   help="desupcon's bf16 autocast + channels_last (default: auto = the Trainer's: where the hardware "
                        "runs bf16 natively, CUDA or a CPU with AMX or AVX-512 BF16)")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile desupcon's student (the Trainer compiles on CUDA only)")
    p.add_argument("--moco", action="store_true",
                   help="also time one MoCo-v3 ViT-S/16 step at 96x96, batch 256 (CUDA only)")
    p.add_argument("--flops-only", action="store_true",
                   help="count the FLOPs of one desupcon step and exit without timing (works at full widths on a CPU)")
    p.add_argument("--json", type=Path, help="write flags, hardware, versions and figures to this JSON file")
    args = p.parse_args()
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA GPU is visible to PyTorch")
    for key, value in {**DEFAULTS[args.device], **(REALISTIC if args.realistic else {})}.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    return args


# ---------------------------------------------------------------------------------------------
# Timing and hardware
# ---------------------------------------------------------------------------------------------

def synchronize(device: torch.device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_steps(step, device: torch.device, warmup: int, steps: int, repeats: int) -> dict:
    """Seconds per call of ``step()``: the median (and spread) of ``repeats`` windows of ``steps`` calls,
    after ``warmup`` untimed calls; the device is synchronised only at the ends of each window."""
    for _ in range(warmup):
        step()
    windows = []
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        for _ in range(steps):
            step()
        synchronize(device)
        windows.append((time.perf_counter() - start) / steps)
    return {"seconds_per_step": statistics.median(windows), "windows": windows}


def host_syncs(step) -> int:
    """Host-device synchronisations in one call of ``step()`` (CUDA sync debug mode counts them)."""
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            step()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(w.message) for w in caught)


def count_flops(step) -> int:
    """Floating-point operations (forward + backward matmuls and convolutions) of one ``step()``."""
    with FlopCounterMode(display=False) as counter:
        step()
    return counter.get_total_flops()


def reset_peak_memory(device: torch.device):
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_gib(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None


def release_memory(device: torch.device):
    """Free what the previous pipeline left (DataLoader workers, models) before the next one starts."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def environment(device: torch.device) -> dict:
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else None
    peak = next((tflops for name, tflops in PEAK_BF16_TFLOPS if gpu and name in gpu), None)
    return {"device": device.type, "gpu": gpu, "gpu_peak_bf16_tflops": peak, "cpu": cpu_model(),
            "cpu_cores": os.cpu_count(), "torch_threads": torch.get_num_threads(), "python": platform.python_version(),
            "torch": torch.__version__, "torchvision": torchvision.__version__,
            "cuda": torch.version.cuda if device.type == "cuda" else None}


# ---------------------------------------------------------------------------------------------
# The two pipelines
# ---------------------------------------------------------------------------------------------

def synthetic_images(args, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Random uint8 images (N, 3, size, size) and labels (N,) on the CPU, CIFAR-100 shaped by default."""
    gen = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (args.num_images, 3, args.size, args.size), dtype=torch.uint8, generator=gen)
    return images, torch.randint(0, NUM_CLASSES, (args.num_images,), generator=gen)


def desupcon_trainer(cfg, images, labels, teacher, device: torch.device, fast: bool | str):
    """A ``Trainer`` of ``cfg`` (any task's config) on the uint8 ``images`` (moved to ``device``), and its step:
    ``Trainer.step`` on consecutive batches of a fixed permutation of the images."""
    batch, seed = cfg.recipe.batch_size, cfg.recipe.seed
    dataset = ImageDataset("synthetic", images.to(device), labels.to(device), NUM_CLASSES, *CIFAR_MEAN_STD["cifar100"])
    trainer = Trainer(cfg, Data(train=dataset, test=dataset), device, teacher, fast=fast)  # step reads train only
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed)).to(device)
    batches = itertools.cycle(order[:len(dataset) // batch * batch].view(-1, batch))
    return trainer, lambda: trainer.step(next(batches))


def desupcon_step(cfg, images, labels, teacher: ModelWrapper, device: torch.device, fast: bool | str):
    """The step of ``desupcon_trainer``."""
    return desupcon_trainer(cfg, images, labels, teacher, device, fast)[1]


class TwoViewImages(torch.utils.data.Dataset):
    """The write-ups' training set: each item is a PIL image transformed twice, its label and its index."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, transform):
        self.images, self.labels, self.transform = images, labels, transform  # images (N, H, W, 3) uint8

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        image = Image.fromarray(self.images[i])
        return self.transform(image), self.transform(image), self.labels[i], i


class SeedStyleStep:
    """One step of the write-ups' pipeline; the DataLoader iterator is created here and drawn from per call.

    Per-image PIL views (RandomResizedCrop, flip, colour jitter, grayscale) in ``os.cpu_count()``
    workers, fp32, eager; student forward on view 1, teacher forward on both views under no_grad, the
    teacher head with gradient on view 2, the same LW-SupCRD loss against the batch plus ``cfg.bank_k``
    keys of a momentum bank, the classifier's cross-entropy on detached features, one Adam step;
    returns the detached loss.
    """

    def __init__(self, cfg, images, labels, teacher: ModelWrapper, device: torch.device):
        mean, std = CIFAR_MEAN_STD["cifar100"]
        size = images.shape[-1]
        transform = T.Compose([
            T.RandomResizedCrop(size, scale=(0.2, 1.0)), T.RandomHorizontalFlip(),
            T.RandomApply([T.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8), T.RandomGrayscale(p=0.2),
            T.ToTensor(), T.Normalize(mean, std)])
        dataset = TwoViewImages(images.permute(0, 2, 3, 1).numpy(), labels.numpy(), transform)
        self.loader = torch.utils.data.DataLoader(
            dataset, batch_size=cfg.batch_size, shuffle=True, drop_last=True, num_workers=os.cpu_count(),
            pin_memory=device.type == "cuda", persistent_workers=True,
            generator=torch.Generator().manual_seed(cfg.seeds[0]))
        torch.manual_seed(cfg.seeds[0])
        self.cfg, self.device = cfg, device
        self.student = build_model(cfg, NUM_CLASSES).to(device)
        self.teacher = copy.deepcopy(teacher).eval().requires_grad_(False)
        self.teacher.head.requires_grad_(True)
        self.bank = MomentumMemoryBank(len(dataset), cfg.proj_dim, momentum=cfg.bank_momentum, device=device)
        self.bank.labels.copy_(labels)
        self.optimizer = torch.optim.Adam([*self.student.parameters(), *self.teacher.head.parameters()],
                                          lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.batches = (batch for _ in itertools.count() for batch in self.loader)  # epoch after epoch

    def __call__(self):
        cfg = self.cfg
        x1, x2, y, idx = (t.to(self.device, non_blocking=True) for t in next(self.batches))
        b = y.shape[0]
        feats, z, _ = self.student(x1)
        logits = self.student.classifier(feats.detach())
        with torch.no_grad():
            t_feats = self.teacher.backbone(torch.cat([x1, x2]))
            t_logits = self.teacher.classifier(t_feats[:b])
        keys = self.teacher.project(t_feats[b:])
        bank_z, bank_y, _ = self.bank.sample(cfg.bank_k, exclude=idx)
        loss = lw_supcrd_loss(z, y, torch.cat([keys, bank_z]), torch.cat([y, bank_y]), t_logits.softmax(dim=1),
                              alpha=cfg.alpha, beta=cfg.beta, temperature=cfg.temperature,
                              adaptive_beta=cfg.adaptive_beta, in_batch_keys=None if cfg.bank_positives else b)
        loss = loss + F.cross_entropy(logits, y)
        self.bank.update(idx, keys.detach(), y)
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        return loss.detach()


def moco_step(device: torch.device):
    """One MoCo-v3 ViT-S/16 step as ``desupcon.methods.ssl.moco_v3`` trains it (views on the device, bf16, AdamW)."""
    from desupcon.methods.ssl.base import build_backbone
    from desupcon.methods.ssl.config import ModelConfig
    from desupcon.methods.ssl.moco_v3 import MoCoV3

    size, batch = MOCO["image_size"], MOCO["batch_size"]
    spec = ModelConfig(backbone="vit_small", width=64, proj_hidden=4096, proj_dim=256, pred_hidden=4096,
                            stop_grad_conv1=True, patch_size=16)
    torch.manual_seed(0)
    backbone, dim = build_backbone(spec, size)
    model = MoCoV3(backbone, dim, proj_layers=3, proj_hidden=spec.proj_hidden, proj_dim=spec.proj_dim,
                        pred_hidden=spec.pred_hidden).to(device)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], fused=True,
                                  lr=MOCO["base_lr"] * batch / 256, weight_decay=MOCO["weight_decay"])
    images = torch.randint(0, 256, (MOCO["num_images"], 3, size, size), dtype=torch.uint8, device=device)
    gen = torch.Generator(device=device).manual_seed(0)
    batches = itertools.cycle(torch.randperm(len(images), device=device).view(-1, batch))
    mean, std = CIFAR_MEAN_STD["stl10"]

    def step():
        x1, x2 = two_views(images[next(batches)], "moco", mean, std, gen, size)
        with torch.autocast(device.type, dtype=torch.bfloat16):
            loss = model(x1, x2, MOCO["momentum"])
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


# ---------------------------------------------------------------------------------------------
# Measurement and report
# ---------------------------------------------------------------------------------------------

def measure(args) -> dict:
    """Time both pipelines (on CUDA also the study's teacher runs, and MoCo-v3 with --moco); raw figures."""
    device = torch.device(args.device)
    cfg = RECIPE.student_config("lw_supcrd", bank_k=args.bank_k, width=args.student_width,
                                batch_size=args.batch_size, compile=args.compile)
    cfg.validate(num_train=args.num_images)  # the batch and the bank fit the synthetic dataset
    images, labels = synthetic_images(args, cfg.seeds[0])
    torch.manual_seed(cfg.seeds[0])
    teacher = ModelWrapper(NUM_CLASSES, RECIPE.teacher_arch, args.teacher_width, cfg.proj_dim,
                           projection="linear").to(device)
    fast = {"auto": "auto", "on": True, "off": False}[args.fast]
    results = {"environment": environment(device),
               "flags": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}}
    if args.flops_only:
        results["flops"] = flop_figures(count_flops(desupcon_step(cfg, images, labels, teacher, device, fast)),
                                        args.batch_size)
        return results

    # the write-up-style pipeline first: its workers are shut down before desupcon runs, and it keeps
    # PyTorch's default cudnn settings (the Trainer turns on cudnn.benchmark)
    print(f"write-up-style: {os.cpu_count()} DataLoader workers, fp32, eager ...", flush=True)
    reset_peak_memory(device)
    reference = SeedStyleStep(cfg, images, labels, teacher, device)
    results["writeup_style"] = time_steps(reference, device, args.warmup, args.steps, args.repeats)
    results["writeup_style"]["peak_memory_gib"] = peak_memory_gib(device)
    del reference
    release_memory(device)

    print("desupcon: Trainer.step ...", flush=True)
    reset_peak_memory(device)
    step = desupcon_step(cfg, images, labels, teacher, device, fast)
    results["desupcon"] = time_steps(step, device, args.warmup, args.steps, args.repeats)
    results["desupcon"]["peak_memory_gib"] = peak_memory_gib(device)
    results["desupcon"]["host_syncs_per_step"] = host_syncs(step) if device.type == "cuda" else None
    # the write-up-style step runs the same convolutions and matmuls
    results["flops"] = flop_figures(count_flops(step), args.batch_size)
    del step
    release_memory(device)

    if device.type == "cuda":
        print("write-ups' study: teacher and projection-head steps ...", flush=True)
        results["study"] = {}
        for run, make in (("teacher", RECIPE.teacher_config), ("projection", RECIPE.projection_config)):
            run_cfg = make().replace(width=args.teacher_width, batch_size=args.batch_size, compile=args.compile)
            step = desupcon_step(run_cfg, images, labels, teacher if run_cfg.uses_teacher else None, device, fast)
            results["study"][f"{run}_seconds_per_step"] = time_steps(
                step, device, args.warmup, args.steps, args.repeats)["seconds_per_step"]
            del step
            release_memory(device)
    if args.moco:
        results["moco"] = measure_moco(device, args)
    return results


def flop_figures(flops_per_step: int, batch_size: int) -> dict:
    per_epoch = flops_per_step * (CIFAR100_TRAIN_IMAGES // batch_size)
    return {"per_step": flops_per_step, "per_cifar100_epoch": per_epoch,
            "per_config": per_epoch * RECIPE.student_epochs}


def measure_moco(device: torch.device, args) -> dict | None:
    if importlib.util.find_spec("desupcon.methods.ssl.moco_v3") is None:
        print("MoCo-v3: skipped, desupcon.methods.ssl.moco_v3 is not installed")
        return None
    if device.type != "cuda":
        print("MoCo-v3: skipped, a ViT-S/16 step at 96x96 and batch 256 is a GPU workload (--device cuda)")
        return None
    print("MoCo-v3 ViT-S/16 ...", flush=True)
    reset_peak_memory(device)
    timing = time_steps(moco_step(device), device, args.warmup, args.steps, args.repeats)
    timing.update(images_per_second=MOCO["batch_size"] / timing["seconds_per_step"],
                  peak_memory_gib=peak_memory_gib(device), **MOCO)
    return timing


def summarize(results: dict, batch_size: int) -> None:
    """Add the derived figures: images/s, TFLOP/s, the ratio and, on CUDA, epoch, config and study times."""
    if "desupcon" not in results:  # --flops-only
        return
    ours, writeup = results["desupcon"], results["writeup_style"]
    steps_per_epoch = CIFAR100_TRAIN_IMAGES // batch_size
    for r in (ours, writeup):
        r["images_per_second"] = batch_size / r["seconds_per_step"]
        r["tflops"] = results["flops"]["per_step"] / r["seconds_per_step"] / 1e12
    results["ratio"] = ours["images_per_second"] / writeup["images_per_second"]
    peak = results["environment"]["gpu_peak_bf16_tflops"]
    ours["share_of_peak"] = ours["tflops"] / peak if peak else None
    if "study" not in results:
        return
    for r in (ours, writeup):
        r["epoch_seconds"] = r["seconds_per_step"] * steps_per_epoch
        r["config_minutes"] = r["epoch_seconds"] * RECIPE.student_epochs / 60
        r["students_minutes"] = r["config_minutes"] * STUDY_STUDENT_RUNS
    study = results["study"]
    study["teacher_minutes"] = study["teacher_seconds_per_step"] * steps_per_epoch * RECIPE.teacher_epochs / 60
    study["projection_minutes"] = (study["projection_seconds_per_step"] * steps_per_epoch
                                   * RECIPE.projection_epochs / 60)
    study["total_hours"] = (study["teacher_minutes"] + study["projection_minutes"] + ours["students_minutes"]) / 60


def report(results: dict, args) -> None:
    env, flops = results["environment"], results["flops"]
    print(f"\n{env['device'].upper()}: {env['gpu'] or env['cpu']} | {env['cpu_cores']} CPU cores | torch "
          f"{env['torch']} | torchvision {env['torchvision']}")
    print(f"student ResNet-18 width {args.student_width}, teacher ResNet-50 width {args.teacher_width}, batch "
          f"{args.batch_size}, {args.size}x{args.size} images, bank K={args.bank_k}, {args.num_images} images"
          + ("" if args.flops_only else f"; median of {args.repeats} windows of {args.steps} steps after "
                                        f"{args.warmup} warmup steps"))
    print(f"FLOPs (FlopCounterMode, one desupcon step): {flops['per_step'] / 1e9:.1f} GFLOP per step, "
          f"{flops['per_cifar100_epoch'] / 1e15:.3g} PFLOP per CIFAR-100 epoch, "
          f"{flops['per_config'] / 1e15:.3g} PFLOP per {RECIPE.student_epochs}-epoch config")
    if args.flops_only:
        return
    ours, writeup = results["desupcon"], results["writeup_style"]
    rows = [("images/s", "{:.1f}", "images_per_second"), ("seconds/step", "{:.4f}", "seconds_per_step"),
            ("achieved TFLOP/s", "{:.3g}", "tflops")]
    if "study" in results:
        rows += [("seconds/epoch (CIFAR-100)", "{:.1f}", "epoch_seconds"),
                 (f"minutes/config ({RECIPE.student_epochs} epochs)", "{:.1f}", "config_minutes"),
                 (f"minutes, {STUDY_STUDENT_RUNS} student runs", "{:.0f}", "students_minutes"),
                 ("peak memory (GiB)", "{:.2f}", "peak_memory_gib")]
    print(f"\n{'':30s}{'desupcon':>14s}{'write-up-style':>16s}{'ratio':>10s}")
    for label, fmt, key in rows:
        ratio = writeup[key] / ours[key] if key == "seconds_per_step" else ours[key] / writeup[key]
        print(f"{label:30s}{fmt.format(ours[key]):>14s}{fmt.format(writeup[key]):>16s}{ratio:>9.2f}x")
    if "study" in results:
        peak = env["gpu_peak_bf16_tflops"]
        share = f"{100 * ours['share_of_peak']:.1f}% of its {peak} TFLOP/s dense bf16 peak" if peak else "peak unknown"
        study = results["study"]
        print(f"\ndesupcon on {env['gpu']}: {ours['tflops']:.1f} TFLOP/s, {share}; host syncs in one step: "
              f"{ours['host_syncs_per_step']}")
        print(f"write-ups' study with desupcon: teacher {RECIPE.teacher_epochs} epochs {study['teacher_minutes']:.0f} min + "
              f"projection head {RECIPE.projection_epochs} epochs {study['projection_minutes']:.1f} min + "
              f"{STUDY_STUDENT_RUNS} students x {RECIPE.student_epochs} epochs {ours['students_minutes']:.0f} min = "
              f"{study['total_hours']:.1f} h (every student timed as LW-SupCRD with a bank)")
    moco = results.get("moco")
    if moco:
        print(f"MoCo-v3 ViT-S/16 {moco['image_size']}x{moco['image_size']} batch {moco['batch_size']}: "
              f"{moco['images_per_second']:.0f} images/s, {moco['seconds_per_step']:.3f} s/step, "
              f"peak memory {moco['peak_memory_gib']:.2f} GiB")
    print(f"\ndesupcon / write-up-style images/s: {results['ratio']:.2f}x")


def main():
    args = parse_args()
    results = measure(args)
    summarize(results, args.batch_size)
    report(results, args)
    write_json(args.json, results)


if __name__ == "__main__":
    main()
