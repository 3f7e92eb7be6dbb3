"""The prepared cache: each split of a source decoded once, resized and stored as a memory-mappable array.

``prepare(source, split, size)`` returns the cache entry of one split of a folder or Hugging Face
source at one side, building it on first use, in ``$DESUPCON_DATA/prepared/<title>-<split>-<size>px-<key>/``:

    images.npy      uint8 (N, 3, size, size), memory-mappable (``numpy.load(path, mmap_mode="r")``)
    labels.npy      int64 (N,), -1 = unlabelled
    manifest.json   source, split, side, the hash of the source's file list, counts, class names, channel
                    mean and std, the files skipped as unreadable (with the reason) and those ignored (not images)

Building decodes the images in worker processes (forked on Linux, spawned elsewhere; a progress bar
shows images/s and the ETA), each writing its rows into the array; unreadable images are left out, with one warning naming how many
and the first few, and listed in the manifest. Every file is written under a temporary name and
moved into place (``os.replace``), the manifest last, so an entry is either complete or not used.
An entry is rebuilt when its source's file list changes (the hash differs); another split or side is
another entry. ``store_builtin`` keeps a built-in split (at its own side) the same way, from the
arrays torchvision gives, for ``stream`` residency; ``stored_builtin`` finds it again.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import hashlib
import json
import math
import multiprocessing
import os
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from desupcon.core.artefacts import atomic_write_json, read_json
from desupcon.core.errors import CheckpointError, DatasetUnavailableError
from desupcon.core.paths import cache_root
from desupcon.images.sources import BUILTIN_SIDES, Listing, Source, decode_chunk, listing

FORMAT = 1
SHOWN_SKIPS = 3  # unreadable files named in the warning (the manifest lists them all)
RESIZE = "shorter side to the size (bicubic, antialiased), centre crop"


@dataclass(frozen=True)
class Prepared:
    """One cache entry: ``folder`` and its ``manifest`` (the dict stored in ``manifest.json``)."""

    folder: Path
    manifest: dict

    @property
    def images_path(self) -> Path:
        return self.folder / "images.npy"

    @property
    def count(self) -> int:
        return self.manifest["shape"][0]

    @property
    def nbytes(self) -> int:
        return math.prod(self.manifest["shape"])

    @property
    def classes(self) -> tuple[str, ...]:
        return tuple(self.manifest["classes"])

    @property
    def mean_std(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        return tuple(self.manifest["mean"]), tuple(self.manifest["std"])

    def labels(self) -> np.ndarray:
        """(N,) int64 labels, -1 = unlabelled."""
        return np.load(self.folder / "labels.npy")


def human_bytes(n: float) -> str:
    """``2.76 GB``, ``1.1 MB``: decimal units, as disk sizes are given."""
    return f"{n / 1e9:.2f} GB" if n >= 1e9 else f"{n / 1e6:.1f} MB"


def entry_folder(source: Source, split: str, size: int) -> Path:
    """The folder of the entry of ``split`` of ``source`` at ``size`` (its key hashes everything that changes the array)."""
    key = json.dumps([FORMAT, dataclasses.astuple(source), split, size])
    return cache_root() / f"{source.title}-{split}-{size}px-{hashlib.sha256(key.encode()).hexdigest()[:8]}"


def prepare(source: Source, split: str, size: int, workers: int | None = None) -> Prepared:
    """The entry of ``split`` of a folder or Hugging Face ``source`` at ``size`` x ``size``, built if it is
    missing, incomplete or older than the source's file list.

    Args:
        source: a ``desupcon.images.sources.Source`` of kind "folder" or "hf".
        split: a split of it, or several joined by ``+``.
        size: side of the stored square images.
        workers: decoding processes (default: the CPU cores this process may use, at most 16).
    """
    found = listing(source, split)
    folder = entry_folder(source, split, size)
    entry, stale = _valid_entry(folder, found.fingerprint)
    if entry is not None:
        return entry
    if stale:
        print(f"[data] rebuilding {folder}: {stale}")
    if not found.items:
        raise _empty(source, split)
    return _build(source, split, size, found, folder, workers or min(16, _cores()))


def stored_builtin(source: Source, split: str) -> Prepared | None:
    """The entry of a built-in split (at its own side) if ``store_builtin`` made one, else None."""
    return _valid_entry(entry_folder(source, split, BUILTIN_SIDES[source.location]), "builtin")[0]


def store_builtin(source: Source, split: str, dataset) -> Prepared:
    """Store ``dataset`` (a ``desupcon.images.datasets.ImageDataset`` in host memory: the built-in ``split`` of ``source``)
    as its entry, at its own side."""
    folder = entry_folder(source, split, BUILTIN_SIDES[source.location])
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "manifest.json").unlink(missing_ok=True)
    images = dataset.images.cpu().numpy()
    _replace(folder / "images.npy", lambda f: np.save(f, images))
    _replace(folder / "labels.npy", lambda f: np.save(f, dataset.labels.cpu().numpy()))
    manifest = {"format": FORMAT, "source": dataclasses.asdict(source), "split": split, "size": images.shape[-1],
                "fingerprint": "builtin", "shape": list(images.shape), "classes": [str(c) for c in range(dataset.num_classes)],
                "mean": list(dataset.mean), "std": list(dataset.std), "skipped": [], "ignored": []}
    return _write_manifest(folder, manifest)


def _cores() -> int:
    """CPU cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _empty(source: Source, split: str) -> Exception:
    return DatasetUnavailableError(f"split '{split}' of {source.location} holds no images (a labelled source keeps "
                                   f"1 in 5 images of each class as its test split): add images")


def _valid_entry(folder: Path, fingerprint: str) -> tuple[Prepared | None, str]:
    """``(entry, "")`` when ``folder`` holds a complete entry made from ``fingerprint``, else
    ``(None, why it cannot be used)`` (``""`` when there is no entry at all)."""
    path = folder / "manifest.json"
    if not path.exists():
        return None, ""
    try:
        manifest = read_json(path)
    except CheckpointError as err:
        return None, f"its manifest is damaged ({err})"
    if manifest.get("format") != FORMAT or manifest.get("fingerprint") != fingerprint:
        return None, "its source changed since it was prepared (another file list)"
    try:
        shape = np.load(folder / "images.npy", mmap_mode="r").shape
        labels = np.load(folder / "labels.npy", mmap_mode="r").shape
    except (OSError, ValueError) as err:
        return None, f"its arrays cannot be read ({type(err).__name__}: {err})"
    if list(shape) != manifest["shape"] or labels != (shape[0],):
        return None, f"its arrays {shape} and {labels} do not match the manifest's shape {manifest['shape']}"
    return Prepared(folder, manifest), ""


def _replace(path: Path, write) -> None:
    """``write(file)`` into a temporary file beside ``path``, then move it into place."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            write(f)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _write_manifest(folder: Path, manifest: dict) -> Prepared:
    atomic_write_json(manifest, folder / "manifest.json")
    return Prepared(folder, manifest)


def _decode_all(source: Source, found: Listing, size: int, out: Path, workers: int, what: str) -> list[tuple[int, str]]:
    """Decode every item of ``found`` into the ``.npy`` file ``out`` in ``workers`` processes; returns the failures
    as ``(item index, reason)``, sorted."""
    n = len(found.items)
    chunk = max(1, min(256, -(-n // (4 * workers))))
    # fork on Linux, as torch's DataLoader: no re-import, so scripts without a main guard and notebooks work;
    # what the workers import is imported here first, so each of them starts with it
    import torchvision.datasets.folder  # noqa: F401
    import torchvision.transforms.functional  # noqa: F401

    context = multiprocessing.get_context("fork" if sys.platform == "linux" else "spawn")
    failed = []
    with concurrent.futures.ProcessPoolExecutor(workers, mp_context=context) as pool, \
            tqdm(total=n, desc=what, unit="img", mininterval=1.0) as bar:
        jobs = {pool.submit(decode_chunk, source, found.items[s:s + chunk], size, str(out), s): s for s in range(0, n, chunk)}
        for job in concurrent.futures.as_completed(jobs):
            start = jobs[job]
            failed += [(start + i, reason) for i, reason in job.result()]
            bar.update(min(chunk, n - start))
    return sorted(failed)


def _channel_stats(images: np.ndarray, block_bytes: int = 2 ** 27) -> tuple[list[float], list[float]]:
    """Per-channel mean and standard deviation in [0, 1] of uint8 ``(N, C, H, W)`` images, in float64 blocks
    of at most ``block_bytes``."""
    rows = max(1, block_bytes // (8 * math.prod(images.shape[1:])))
    total = np.zeros(images.shape[1])
    squares = np.zeros(images.shape[1])
    for start in range(0, len(images), rows):
        block = images[start:start + rows].astype(np.float64) / 255
        total += block.sum(axis=(0, 2, 3))
        squares += (block ** 2).sum(axis=(0, 2, 3))
    count = images.shape[0] * images.shape[2] * images.shape[3]
    mean = total / count
    return mean.tolist(), np.sqrt(np.maximum(squares / count - mean ** 2, 0)).tolist()


def _build(source: Source, split: str, size: int, found: Listing, folder: Path, workers: int) -> Prepared:
    start = time.time()
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "manifest.json").unlink(missing_ok=True)  # no reader takes a half-rebuilt entry for the old one
    n = len(found.items)
    decoded = folder / f".images.npy.{os.getpid()}.decoded.tmp"
    try:
        np.lib.format.open_memmap(decoded, mode="w+", dtype=np.uint8, shape=(n, 3, size, size)).flush()
        failed = _decode_all(source, found, size, decoded, workers, f"prepare {source.title} {split} {size}px")
        readable = np.ones(n, dtype=bool)
        readable[[i for i, _ in failed]] = False
        keep = np.flatnonzero(readable)
        if failed:  # copy the readable rows into an array of their own
            full = np.load(decoded, mmap_mode="r")

            def compact(f):
                np.lib.format.write_array_header_1_0(f, {"descr": "|u1", "fortran_order": False,
                                                         "shape": (len(keep), 3, size, size)})
                for s in range(0, len(keep), 4096):
                    f.write(np.ascontiguousarray(full[keep[s:s + 4096]]).tobytes())

            _replace(folder / "images.npy", compact)
        else:
            os.replace(decoded, folder / "images.npy")
    finally:
        decoded.unlink(missing_ok=True)
    if len(keep) == 0:
        raise _empty(source, split)
    _replace(folder / "labels.npy", lambda f: np.save(f, found.labels[keep]))
    mean, std = _channel_stats(np.load(folder / "images.npy", mmap_mode="r"))
    skipped = [{"file": found.names[i], "reason": reason} for i, reason in failed]
    manifest = {"format": FORMAT, "source": dataclasses.asdict(source), "split": split, "size": size, "resize": RESIZE,
                "fingerprint": found.fingerprint, "listed": n, "shape": [len(keep), 3, size, size],
                "classes": list(found.classes), "mean": mean, "std": std, "skipped": skipped, "ignored": found.ignored,
                "seconds": round(time.time() - start, 1)}
    entry = _write_manifest(folder, manifest)
    if skipped:
        first = ", ".join(f"{s['file']} ({s['reason'].split(':')[0]})" for s in skipped[:SHOWN_SKIPS])
        warnings.warn(f"{source.location} ({split}): skipped {len(skipped)} unreadable image(s) of {n} (first: {first}"
                      f"{', ...' if len(skipped) > SHOWN_SKIPS else ''}); every one and its reason are in {folder / 'manifest.json'}",
                      stacklevel=3)
    ignored = f"; ignored {len(found.ignored)} file(s) that are not images" if found.ignored else ""
    print(f"[data] prepared {entry.count:,} images of {source.location} ({split}) at {size}x{size} in "
          f"{manifest['seconds']} s: {folder} ({human_bytes(entry.nbytes)}{ignored})")
    return entry
