"""Cost of checking a prepared cache entry when a run opens it: the checksum of its arrays' bytes.

    python benchmarks/bench_prepared_check.py [--gb 1] [--repeats 5]

Times, side by side in one run on a ``--gb`` GB uint8 array in memory (random bytes, as a prepared
``images.npy`` holds), the three checksums Python's standard library offers: ``hashlib.sha256``,
``hashlib.blake2b`` and ``zlib.crc32``, each fed ``desupcon.images.prepared.READ_BYTES`` at a time,
as the check reads a file. Then the check a run does on opening an entry
(``desupcon.images.prepared._valid_entry``: header, size, checksum of both arrays) on an entry of
that size written to a temporary folder, from a warm page cache. Best of ``--repeats`` interleaved
rounds, in seconds per GB (1e9 bytes).
"""

from __future__ import annotations

import argparse
import hashlib
import platform
import tempfile
import time
import zlib
from pathlib import Path

import numpy as np

from machine import cpu_model
from desupcon.core.artefacts import atomic_write_json
from desupcon.images import prepared


def best_seconds(fns: dict, repeats: int) -> dict[str, float]:
    """The best of ``repeats`` timings of each function of ``fns`` (label -> function), interleaved: each
    round runs every function once, so that other load on a shared machine hits all of them alike."""
    times = {label: [] for label in fns}
    for _ in range(repeats):
        for label, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[label].append(time.perf_counter() - start)
    return {label: min(t) for label, t in times.items()}


def hashed(digest, data: memoryview) -> None:
    """Feed ``data`` to ``digest`` (a hashlib object) in blocks of ``READ_BYTES``."""
    for start in range(0, len(data), prepared.READ_BYTES):
        digest.update(data[start:start + prepared.READ_BYTES])


def crc32(data: memoryview) -> int:
    value = 0
    for start in range(0, len(data), prepared.READ_BYTES):
        value = zlib.crc32(data[start:start + prepared.READ_BYTES], value)
    return value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gb", type=float, default=1.0, help="size of the array in GB (default: 1)")
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds, best reported (default: 5)")
    args = parser.parse_args()
    side = 32
    rows = int(args.gb * 1e9) // (3 * side * side)
    images = np.random.default_rng(0).integers(0, 256, (rows, 3, side, side), dtype=np.uint8)  # (N, 3, 32, 32)
    labels = np.arange(rows, dtype=np.int64) % 10  # (N,)
    gb = images.nbytes / 1e9
    data = memoryview(images).cast("B")
    with tempfile.TemporaryDirectory() as folder:
        entry = Path(folder)
        np.save(entry / "images.npy", images)
        np.save(entry / "labels.npy", labels)
        manifest = {"format": prepared.FORMAT, "fingerprint": "bench", "shape": list(images.shape),
                    "checksum": prepared.CHECKSUM,
                    "checksums": {"images.npy": prepared.checksum(images), "labels.npy": prepared.checksum(labels)}}
        atomic_write_json(manifest, entry / "manifest.json")
        assert prepared._valid_entry(entry, "bench")[0] is not None, "the entry failed its check"
        rows_out = best_seconds({
            "hashlib.sha256": lambda: hashed(hashlib.sha256(), data),
            "hashlib.blake2b": lambda: hashed(hashlib.blake2b(), data),
            "zlib.crc32": lambda: crc32(data),
            f"_valid_entry ({prepared.CHECKSUM} of the files)": lambda: prepared._valid_entry(entry, "bench"),
        }, args.repeats)
        gb_checked = (images.nbytes + labels.nbytes) / 1e9
    print(f"{gb:.2f} GB uint8 array, best of {args.repeats}, {cpu_model()}, Python {platform.python_version()}, "
          f"zlib {zlib.ZLIB_RUNTIME_VERSION}")
    for label, seconds in rows_out.items():
        size = gb_checked if label.startswith("_valid_entry") else gb
        print(f"{label:36s} {seconds:7.3f} s   {seconds / size:6.3f} s per GB   {size / seconds:6.2f} GB/s")


if __name__ == "__main__":
    main()
