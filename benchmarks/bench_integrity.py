"""Cost of the integrity checks every load pays: CRC-32 of a checkpoint's records, SHA-256 of weights.

    python benchmarks/bench_integrity.py [--mb 100] [--repeats 5]

Writes a checkpoint of ``--mb`` MB of float32 weights with ``desupcon.core.artefacts.atomic_save`` into a
temporary folder and times, side by side in one run: ``torch.load`` alone (what a load cost before),
the CRC-32 check of every zip record (``store._verify_records``, done before each load), the whole
``store.load_checkpoint`` (check + load), and ``store.content_hash`` of the weights (the lineage
identity, computed once per teacher a run builds on). Best of ``--repeats`` from a warm page cache.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from desupcon.core import artefacts as store


def best_seconds(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=100, help="size of the weights in MB (default: 100)")
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats, best reported (default: 5)")
    args = parser.parse_args()
    n = args.mb * 2 ** 20 // 4
    model = {f"layer{i}.weight": torch.randn(n // 10) for i in range(10)}  # (N/10,) x 10 records
    state = {"format": store.CHECKPOINT_FORMAT, "config": {}, "run_name": "bench", "complete": True, "epoch": 1,
             "history": [], "model": model, "optimizer": {}, "rng": {}}
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "bench.pth"
        store.atomic_save(state, path)
        size_mb = path.stat().st_size / 2 ** 20
        fix = "retrain it"
        rows = {
            "torch.load (weights_only)": best_seconds(lambda: torch.load(path, weights_only=True), args.repeats),
            "CRC-32 of every record": best_seconds(lambda: store._verify_records(path, fix), args.repeats),
            "load_checkpoint (check + load)": best_seconds(lambda: store.load_checkpoint(path), args.repeats),
            "content_hash (SHA-256 of weights)": best_seconds(lambda: store.content_hash(model), args.repeats),
        }
    print(f"checkpoint of {size_mb:.1f} MB, best of {args.repeats}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads")
    for label, seconds in rows.items():
        print(f"{label:36s} {seconds:8.3f} s   {seconds / size_mb * 100:7.3f} s per 100 MB")
    overhead = rows["load_checkpoint (check + load)"] / rows["torch.load (weights_only)"]
    print(f"load_checkpoint / torch.load: {overhead:.2f}x")


if __name__ == "__main__":
    main()
