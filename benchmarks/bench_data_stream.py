"""``stream`` beside ``device`` residency: images delivered to the training step, the step time, and peak RSS.

    python benchmarks/bench_data_stream.py                    # about a minute on 2 cores, 1.5 GB in --work
    python benchmarks/bench_data_stream.py --images 20000 --cap-mb 700 --json stream.json

1. Delivery at 96x96: a uint8 ``(N, 3, 96, 96)`` file of random pixels (``--images``, by default
   55,000 = 1.52 GB; kept in ``--work`` for the next run) is read once, so it sits in the page cache.
   The same epochs of batches of ``--batch`` images in a random order are gathered from the array in
   memory (``device`` residency on this CPU: ``ImageDataset.gather`` indexes it) and from the file
   (``stream``: ``gather`` inside ``ImageDataset.prefetch``, whose background thread reads with
   ``os.preadv``), alternating, ``--epochs`` times each; images/s = N / the median epoch time.
   Target: at least 10,000 images/s streamed.
2. The MoCo-v3 smoke step (``configs/moco_v3_smoke.yaml``: width-4 CIFAR ResNet-18, batch 32, 16x16
   views, fp32 as its amp is off) through ``desupcon.engine.Trainer.epoch``, on 3,200 random 16x16
   images held in memory or streamed from their file, alternating epochs; the median ms per step of
   each and their ratio. Target: stream within 10% of device.
3. Peak RSS: a child process (torch and desupcon imported, as a training process has them) gathers
   one epoch of the whole 1.52 GB file in batches of ``--batch`` with ``stream``, and another child
   does it by indexing a memory map of the file, for contrast; each reports its VmHWM. Target: the
   streaming process stays under ``--cap-mb`` (800 MB), about half the file.

Torch runs on ``--threads`` threads (default: every core). The table is printed; ``--json`` also
writes it with the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from desupcon.images.datasets import Data, ImageDataset
from desupcon.images.stream import ArrayFile
from machine import cpu_model

ROOT = Path(__file__).resolve().parents[1]
SIDE = 96


def random_images(path: Path, n: int, side: int) -> Path:
    """A uint8 (n, 3, side, side) ``.npy`` file of random pixels at ``path`` (reused when it has that shape)."""
    if path.exists() and np.load(path, mmap_mode="r").shape == (n, 3, side, side):
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    array = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=(n, 3, side, side))
    rng = np.random.default_rng(0)
    for start in range(0, n, 4096):
        array[start:start + 4096] = rng.integers(0, 256, size=array[start:start + 4096].shape, dtype=np.uint8)
    array.flush()
    return path


def warm(path: Path) -> float:
    """Read the whole file once (into the page cache); returns seconds."""
    start = time.perf_counter()
    with open(path, "rb") as f:
        while f.read(1 << 24):
            pass
    return time.perf_counter() - start


def datasets_of(path: Path) -> tuple[ImageDataset, ImageDataset]:
    """The images of ``path`` held in memory (``device`` on the CPU) and streamed from the file."""
    file = ArrayFile(path)
    labels = torch.zeros(len(file), dtype=torch.long)
    resident = ImageDataset("bench", torch.from_numpy(np.load(path)), labels, 1, (0.5,) * 3, (0.25,) * 3)
    streamed = ImageDataset("bench", file.mapped(), labels, 1, (0.5,) * 3, (0.25,) * 3, file=file)
    return resident, streamed


def deliver(dataset: ImageDataset, batches: list[torch.Tensor]) -> float:
    """Seconds to gather every batch of one epoch as the training step asks for them."""
    start = time.perf_counter()
    with dataset.prefetch(batches):
        for batch in batches:
            dataset.gather(batch)
    return time.perf_counter() - start


def delivery(path: Path, batch: int, epochs: int) -> dict:
    resident, streamed = datasets_of(path)
    n = len(resident)
    seconds = {"device": [], "stream": []}
    generator = torch.Generator().manual_seed(0)
    for _ in range(epochs):
        batches = list(torch.randperm(n, generator=generator).split(batch))
        for name, dataset in (("device", resident), ("stream", streamed)):
            seconds[name].append(deliver(dataset, batches))
    return {name: n / statistics.median(s) for name, s in seconds.items()}


class NoBar:
    def update(self, n):
        pass


def step_times(work: Path, epochs: int) -> dict:
    """Median ms per MoCo-v3 smoke step with the training images in memory and streamed."""
    from desupcon.engine.trainer import Trainer  # here: the peak-RSS children import only what streaming needs
    from desupcon.methods.ssl.config import load_config

    cfg = load_config(ROOT / "configs" / "moco_v3_smoke.yaml", ["train.queue_size=0", "train.epochs=20"])
    path = random_images(work / "smoke_16px.npy", 3200, cfg.data.image_size)
    resident, streamed = datasets_of(path)
    test = ImageDataset("bench", resident.images[:64].clone(), torch.zeros(64, dtype=torch.long), 1, (0.5,) * 3,
                        (0.25,) * 3)
    trainers = {name: Trainer(cfg, Data(train, test), "cpu") for name, train in (("device", resident), ("stream", streamed))}
    for trainer in trainers.values():
        trainer.epoch(0, "warmup", NoBar())
    ms, losses = {"device": [], "stream": []}, {"device": [], "stream": []}
    for epoch in range(1, epochs + 1):
        for name, trainer in trainers.items():
            start = time.perf_counter()
            losses[name].append(trainer.epoch(epoch, name, NoBar())["loss"])
            ms[name].append(1000 * (time.perf_counter() - start) / trainer.steps_per_epoch)
    if losses["device"] != losses["stream"]:
        raise AssertionError(f"the residencies trained differently: epoch losses {losses}")
    return {name: statistics.median(v) for name, v in ms.items()} | {"steps_per_epoch": trainers["device"].steps_per_epoch,
                                                                    "same_losses": losses["device"]}


def vm_hwm_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def rss_child(path: str, mode: str, batch: int) -> None:
    """One epoch over the whole file, streamed or through a memory map; prints the peak RSS in MB."""
    file = ArrayFile(path)
    batches = list(torch.randperm(len(file), generator=torch.Generator().manual_seed(0)).split(batch))
    before = vm_hwm_mb()
    if mode == "stream":
        dataset = ImageDataset("bench", file.mapped(), torch.zeros(len(file), dtype=torch.long), 1, (0.5,) * 3,
                               (0.25,) * 3, file=file)
        deliver(dataset, batches)
    else:
        mapped = file.mapped()
        for b in batches:
            mapped[b]
    print(json.dumps({"mode": mode, "before_mb": before, "peak_mb": vm_hwm_mb()}))


def peak_rss(path: Path, batch: int) -> dict:
    out = {}
    for mode in ("stream", "mmap"):
        result = subprocess.run([sys.executable, __file__, "--rss-child", str(path), mode, str(batch)],
                                capture_output=True, text=True, check=True)
        out[mode] = json.loads(result.stdout.strip().splitlines()[-1])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=55_000, help="96x96 images in the file (default: 1.52 GB)")
    parser.add_argument("--batch", type=int, default=256, help="images per gathered batch")
    parser.add_argument("--epochs", type=int, default=3, help="epochs timed per residency")
    parser.add_argument("--cap-mb", type=float, default=800.0, help="the peak RSS the streaming process must stay under")
    parser.add_argument("--work", default="/tmp/desupcon_bench_stream", help="folder of the benchmark's files")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="torch threads")
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument("--rss-child", nargs=3, metavar=("PATH", "MODE", "BATCH"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rss_child:
        rss_child(args.rss_child[0], args.rss_child[1], int(args.rss_child[2]))
        return
    torch.set_num_threads(args.threads)
    work = Path(args.work)
    path = random_images(work / f"images_{args.images}_{SIDE}px.npy", args.images, SIDE)
    size_gb = path.stat().st_size / 1e9
    machine = (f"{cpu_model()} | {os.cpu_count()} CPU cores | {os.sysconf('SC_PHYS_PAGES') * os.sysconf('SC_PAGE_SIZE') / 1e9:.0f} "
               f"GB RAM | torch {torch.__version__} ({args.threads} threads) | numpy {np.__version__} | "
               f"load average at start {os.getloadavg()[0]:.2f}")
    print(machine)
    print(f"file: {path} ({args.images:,} x 3 x {SIDE} x {SIDE} uint8 = {size_gb:.2f} GB), read once in {warm(path):.1f} s")
    rates = delivery(path, args.batch, args.epochs)
    steps = step_times(work, args.epochs)
    rss = peak_rss(path, args.batch)
    ratio = steps["stream"] / steps["device"]
    rows = [
        ("images/s delivered at 96x96, batch %d" % args.batch, f"{rates['device']:,.0f}", f"{rates['stream']:,.0f}",
         "stream >= 10,000: " + ("yes" if rates["stream"] >= 10_000 else "NO")),
        (f"MoCo-v3 smoke step, ms (median of {args.epochs} epochs of {steps['steps_per_epoch']} steps)",
         f"{steps['device']:.1f}", f"{steps['stream']:.1f}",
         f"stream / device = {ratio:.3f}: " + ("within 10%" if ratio <= 1.10 else "NOT within 10%")),
        (f"peak RSS, MB, one epoch over the {size_gb:.2f} GB file", f"{rss['mmap']['peak_mb']:,.0f} (memory map)",
         f"{rss['stream']['peak_mb']:,.0f}",
         f"stream < {args.cap_mb:.0f} MB cap: " + ("yes" if rss["stream"]["peak_mb"] < args.cap_mb else "NO")
         + f" (before the epoch: {rss['stream']['before_mb']:.0f} MB)"),
    ]
    print(f"{'':62s} {'device':>18s} {'stream':>10s}")
    for name, device, stream, verdict in rows:
        print(f"{name:62s} {device:>18s} {stream:>10s}   {verdict}")
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": machine, "args": vars(args), "delivery": rates,
                                               "step_ms": steps, "rss": rss}, indent=2))


if __name__ == "__main__":
    main()
