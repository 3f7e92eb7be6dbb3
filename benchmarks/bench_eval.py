"""Time and memory of the frozen-feature evaluation at CIFAR size, one subprocess per feature count.

    python benchmarks/bench_eval.py                          # N = 1K, 10K, 50K: a few minutes on 2 cores
    python benchmarks/bench_eval.py --sizes 1000 --json eval.json

For each N train features (test: N/5; 512-d, 100 classes; random Gaussian clusters from a fixed
generator, as the CIFAR-100 run's 50,000 x 512 train and 10,000 x 512 test features) a fresh Python
process times, one after the other, what ``desupcon.engine.evaluate.evaluate_encoder`` and a run's plots
do with frozen features: the weighted k-NN (k=200, the cifar100 recipe), the linear probe
(``--probe-iterations`` L-BFGS iterations at most), alignment, uniformity and class distances of the
L2-normalised test features (and of a noisy second view), the t-SNE figure (its 2,000-point
subsample), the hypersphere figure (3,000 points) and the alignment figure. Before each step the
process's peak RSS is reset (``/proc/self/clear_refs``), so each step's peak RSS (VmHWM, the whole
process: interpreter, torch, features) is its own. Embedding images through a network is not
included. The table has one row per step and, per N, seconds and peak RSS in MB; "evaluation" sums
every step but t-SNE (the target: under 2 minutes and 2 GB at N = 50,000 on 2 CPU cores).
--json writes the flags, hardware, versions and every figure.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import sklearn
import torch
import torch.nn.functional as F

from desupcon.analysis import plots
from desupcon.engine.evaluate import knn_accuracy, linear_probe
from desupcon.engine.metrics import BLOCK_BYTES, alignment, class_distances, uniformity
from desupcon.study.profiles import PROFILES
from machine import cpu_model

RECIPE = PROFILES["cifar100"]
STEPS = ("k-NN", "linear probe", "alignment", "uniformity", "class distances", "t-SNE figure",
         "hypersphere figure", "alignment figure")


def environment(threads: int) -> dict:
    return {"cpu": cpu_model(), "cpu_cores": os.cpu_count(), "torch_threads": threads,
            "load_average_at_start": os.getloadavg(), "python": platform.python_version(),
            "torch": torch.__version__, "numpy": np.__version__, "sklearn": sklearn.__version__,
            "block_bytes": BLOCK_BYTES}


def peak_rss_mb() -> float:
    """VmHWM of this process in MB (peak resident set since start or since the last reset)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def reset_peak_rss() -> None:
    gc.collect()
    Path("/proc/self/clear_refs").write_text("5")


def clustered_features(n: int, dim: int, centres: torch.Tensor, gen: torch.Generator, spread: float):
    """(n, dim) features around the rows of ``centres`` (C, dim) and their (n,) labels."""
    labels = torch.randint(0, centres.shape[0], (n,), generator=gen)
    return centres[labels] + spread * torch.randn(n, dim, generator=gen), labels


def worker(args) -> dict:
    """Every step on N = ``args.worker`` train features, in this process: {step: (seconds, peak MB)}."""
    torch.set_num_threads(args.threads)
    gen = torch.Generator().manual_seed(0)
    centres = torch.randn(args.classes, args.dim, generator=gen)
    n_train, n_test = args.worker, args.worker // 5
    f_train, y_train = clustered_features(n_train, args.dim, centres, gen, args.spread)
    f_test, y_test = clustered_features(n_test, args.dim, centres, gen, args.spread)
    z1 = F.normalize(f_test, dim=1)
    z2 = F.normalize(f_test + 0.5 * torch.randn(n_test, args.dim, generator=gen), dim=1)
    out = Path(tempfile.mkdtemp(prefix="bench_eval_"))
    steps = {
        "k-NN": lambda: knn_accuracy(f_train, y_train, f_test, y_test, args.classes, k=RECIPE.knn_k)["top1"],
        "linear probe": lambda: linear_probe(f_train, y_train, f_test, y_test, args.classes,
                                             max_iterations=args.probe_iterations)["top1"],
        "alignment": lambda: alignment(z1, z2).item(),
        "uniformity": lambda: uniformity(z1).item(),
        "class distances": lambda: class_distances(z1, y_test)["separation_ratio"].item(),
        "t-SNE figure": lambda: plots.plot_tsne(z1, y_test, out / "tsne.png", seed=0).stat().st_size,
        "hypersphere figure": lambda: plots.plot_hypersphere(z1, y_test, out / "sphere.html", seed=0).stat().st_size,
        "alignment figure": lambda: plots.plot_alignment(z1, z2, y_test, out / "alignment.png").stat().st_size,
    }
    reset_peak_rss()
    result = {"n_train": n_train, "n_test": n_test, "baseline_mb": peak_rss_mb(), "steps": {}}
    for name in STEPS:
        reset_peak_rss()
        start = time.perf_counter()
        value = steps[name]()
        result["steps"][name] = {"seconds": time.perf_counter() - start, "peak_mb": peak_rss_mb(), "value": value}
    return result


def run_size(n: int, args) -> dict:
    """``worker`` for N = ``n`` in a fresh interpreter (its own peak RSS), its JSON line parsed."""
    command = [sys.executable, __file__, "--worker", str(n), "--dim", str(args.dim), "--classes", str(args.classes),
               "--threads", str(args.threads), "--probe-iterations", str(args.probe_iterations), "--spread", str(args.spread)]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    done = subprocess.run(command, env=env, check=True, capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def table(results: list[dict]) -> str:
    """One row per step; per N, seconds and the step's peak RSS (MB)."""
    head = "| step | " + " | ".join(f"N={r['n_train']:,} s | MB" for r in results) + " |"
    rule = "|---|" + "---:|---:|" * len(results)
    rows = ["| features in memory (baseline) | " + " | ".join(f"– | {r['baseline_mb']:,.0f}" for r in results) + " |"]
    for name in STEPS:
        cells = (f"{r['steps'][name]['seconds']:.2f} | {r['steps'][name]['peak_mb']:,.0f}" for r in results)
        rows.append(f"| {name} | " + " | ".join(cells) + " |")
    totals = []
    for r in results:
        timed = [s for name, s in r["steps"].items() if name != "t-SNE figure"]
        totals.append(f"**{sum(s['seconds'] for s in timed):.1f}** | **{max(s['peak_mb'] for s in timed):,.0f}**")
    rows.append("| evaluation (all but t-SNE: total s, peak MB) | " + " | ".join(totals) + " |")
    accuracy = (f"{r['steps']['k-NN']['value']:.1f} | {r['steps']['linear probe']['value']:.1f}" for r in results)
    rows.append("| top-1 % of k-NN \\| probe (sanity) | " + " | ".join(accuracy) + " |")
    return "\n".join([head, rule, *rows])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000, 10_000, 50_000],
                        help="train feature counts N, one subprocess each; test = N/5 (default: 1000 10000 50000)")
    parser.add_argument("--dim", type=int, default=512, help="feature dimension (default: 512, ResNet-18)")
    parser.add_argument("--classes", type=int, default=100, help="classes (default: 100)")
    parser.add_argument("--spread", type=float, default=6.0, help="noise std around the class centres (default: 6)")
    parser.add_argument("--probe-iterations", type=int, default=100, help="most L-BFGS iterations of the probe (100)")
    parser.add_argument("--threads", type=int, default=2, help="torch and OpenMP threads (default: 2)")
    parser.add_argument("--json", type=Path, help="write flags, hardware, versions and figures to this JSON file")
    parser.add_argument("--worker", type=int, help=argparse.SUPPRESS)  # internal: run one N in this process
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args)))
        return
    env = environment(args.threads)
    print(f"{env['cpu']}, {env['cpu_cores']} cores, {args.threads} torch threads, load average at start "
          f"{', '.join(f'{v:.2f}' for v in env['load_average_at_start'])}; Python {env['python']}, torch "
          f"{env['torch']}, numpy {env['numpy']}, scikit-learn {env['sklearn']}; block budget "
          f"{BLOCK_BYTES / 2**20:.0f} MiB")
    print(f"features: {args.dim}-d, {args.classes} classes, test = N/5; k-NN k={RECIPE.knn_k}; probe at most "
          f"{args.probe_iterations} L-BFGS iterations")
    results = [run_size(n, args) for n in args.sizes]
    print(table(results))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"flags": {k: v for k, v in vars(args).items() if k not in ("json", "worker")},
                                         "environment": env, "results": results}, indent=2, default=str) + "\n")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
