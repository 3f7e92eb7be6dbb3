"""The prepared cache: each split of a source decoded once, resized and stored as a memory-mappable array.

``prepare(source, split, size)`` returns the cache entry of one split of a folder or Hugging Face
source at one side, building it on first use, in ``$DESUPCON_DATA/prepared/<title>-<split>-<size>px-<key>/``:

    images.npy      uint8 (N, 3, size, size), memory-mappable (``numpy.load(path, mmap_mode="r")``)
    labels.npy      int64 (N,), -1 = unlabelled
    manifest.json   source, split, side, the hash of the source's file list, counts, class names, channel
                    mean and std, the CRC-32 of each array's bytes ("checksums"), the files skipped as
                    unreadable (with the reason) and those ignored (not images)
    .lock           the entry's lock (``flock``): exclusive while it is built, shared while it is opened

Opening an entry checks it: the manifest's own checksum, each array's header and file size against
the manifest, and the CRC-32 of each array's bytes (``CHECKSUM``: the fastest of the standard library's
SHA-256, BLAKE2b and CRC-32; the whole check takes 0.35-0.65 s per GB on one core from the page cache,
``benchmarks/RESULTS.md``). An entry that
fails is never used: it is rebuilt from its source with one ``[data] rebuilding <folder>: <what
failed>`` line; a built-in split's (``store_builtin``) is stored again, with one ``[data] re-storing
...`` line, from the arrays torchvision (scikit-learn for digits) gives. An entry is also rebuilt when its source's
file list changes (the hash differs); another split or side is another entry.

Building holds the entry's exclusive lock: a second process that wants the same entry prints one
``[data] waiting for ...`` line, waits, and then uses the finished entry. Before any image is decoded,
the old arrays and the temp files of killed builds (their process gone) are removed, and the entry's
disk must hold both arrays and the images file is allocated in full, else ``ArtefactWriteError``
names the folder, the bytes needed and free. The images are decoded in worker processes (forked on
Linux, spawned elsewhere; a progress bar shows images/s and the ETA) that end with the process that
started them, however it ends; each writes its rows into the array. Unreadable images are left out
(the readable rows are moved together in place), with one ``[data]`` line naming how many and the
first few, and listed in the manifest. Every file is written under a temporary name and moved into
place (``os.replace``), the manifest last, so an entry is either complete or not used.
``store_builtin`` keeps a built-in split (at its own side) the same way, from the arrays torchvision
gives, for ``stream`` residency; ``stored_builtin`` finds it again.

``Prepared.fingerprint`` (and ``data_fingerprint`` for a split held in memory) identifies the data of
a split for a run's identity: its source, split, file list and the checksum of its arrays.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import ctypes
import dataclasses
import hashlib
import json
import math
import multiprocessing
import os
import signal
import sys
import threading
import time
import zlib
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

try:
    import fcntl
except ImportError:  # Windows: no advisory locks, so no lock on an entry
    fcntl = None

from desupcon.core.artefacts import atomic_write_json, read_json, remove_dead_temp_files, temp_name
from desupcon.core.errors import ArtefactWriteError, CheckpointError, DatasetUnavailableError
from desupcon.core.paths import cache_root
from desupcon.images.sources import BUILTIN_SIDES, Listing, Source, decode_chunk, listing

FORMAT = 1
SHOWN_SKIPS = 3  # unreadable files named in the [data] line (the manifest lists them all)
RESIZE = "shorter side to the size (bicubic, antialiased), centre crop"
ARRAYS = ("labels.npy", "images.npy")  # in the order an entry is checked: the small file first
CHECKSUM = "crc32"  # of each array's bytes (zlib.crc32): 2-2.7x faster than SHA-256, 3-6x than BLAKE2b (benchmarks/RESULTS.md)
NPY_HEADER = 128  # bytes of the .npy header numpy writes for these arrays
READ_BYTES = 2 ** 24  # bytes read at a time for a file's checksum
MOVED_ROWS = 4096  # rows moved at a time when the readable rows are moved together
PR_SET_PDEATHSIG = 1  # prctl option (linux/prctl.h): the signal a process gets when its parent ends


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

    @property
    def fingerprint(self) -> dict:
        """The identity of the entry's data (``data_fingerprint``), from its manifest: nothing is read again."""
        sums = self.manifest["checksums"]
        return data_fingerprint(self.manifest["source"]["location"], self.manifest["split"],
                                self.manifest["fingerprint"], sums["images.npy"], sums["labels.npy"])

    def labels(self) -> np.ndarray:
        """(N,) int64 labels, -1 = unlabelled."""
        return np.load(self.folder / "labels.npy")


def human_bytes(n: float) -> str:
    """``2.76 GB``, ``1.1 MB``: decimal units, as disk sizes are given."""
    return f"{n / 1e9:.2f} GB" if n >= 1e9 else f"{n / 1e6:.1f} MB"


def checksum(array: np.ndarray) -> str:
    """CRC-32 (8 hex digits) of an array's bytes in C order: for a stored array, of what its ``.npy`` file holds
    after its header (``CHECKSUM``; 0.3-0.4 s per GB on one core)."""
    return f"{zlib.crc32(np.ascontiguousarray(array)):08x}"


def data_fingerprint(location: str, split: str, files: str, images: str, labels: str) -> dict:
    """The identity of one split's data, equal in every process that reads the same data.

    Args:
        location: the source's location (``Source.location``: a built-in's name, an absolute path).
        split: the split (several joined by '+').
        files: the hash of the source's file list (``Listing.fingerprint``), or "builtin".
        images, labels: ``checksum`` of the uint8 ``(N, 3, H, W)`` images and of the int64 ``(N,)`` labels.

    Returns ``{"source": location, "split": split, "files": files, "content": the SHA-256 (hex) of both checksums}``.
    """
    content = hashlib.sha256(f"{CHECKSUM} images {images}\nlabels {labels}\n".encode()).hexdigest()
    return {"source": location, "split": split, "files": files, "content": content}


def entry_folder(source: Source, split: str, size: int) -> Path:
    """The folder of the entry of ``split`` of ``source`` at ``size`` (its key hashes everything that changes the array)."""
    key = json.dumps([FORMAT, dataclasses.astuple(source), split, size])
    return cache_root() / f"{source.title}-{split}-{size}px-{hashlib.sha256(key.encode()).hexdigest()[:8]}"


def prepare(source: Source, split: str, size: int, workers: int | None = None) -> Prepared:
    """The entry of ``split`` of a folder or Hugging Face ``source`` at ``size`` x ``size``, built if it is
    missing, incomplete, damaged or older than the source's file list.

    Args:
        source: a ``desupcon.images.sources.Source`` of kind "folder" or "hf".
        split: a split of it, or several joined by ``+``.
        size: side of the stored square images.
        workers: decoding processes (default: the CPU cores this process may use, at most 16).
    """
    found = listing(source, split)
    folder = entry_folder(source, split, size)
    entry, _ = _opened(folder, found.fingerprint)
    if entry is not None:
        return entry
    if not found.items:
        raise _empty(source, split)
    n = len(found.items)
    needed = 2 * NPY_HEADER + n * 3 * size * size + n * 8  # images and labels
    return _made(folder, found.fingerprint, needed, f"rebuilding {folder}",
                 lambda: _build(source, split, size, found, folder, workers or min(16, _cores())))


def stored_builtin(source: Source, split: str, load) -> Prepared | None:
    """The entry of a built-in split (at its own side) if ``store_builtin`` made one, else None.

    An entry that fails its check is stored again from ``load()`` (a function returning the split in
    host memory as ``store_builtin`` takes it), with a ``[data]`` line saying why.
    """
    entry, why = _opened(_builtin_folder(source, split), "builtin")
    if entry is not None or not why:
        return entry
    return store_builtin(source, split, load())


def store_builtin(source: Source, split: str, dataset) -> Prepared:
    """Store ``dataset`` (a ``desupcon.images.datasets.ImageDataset`` in host memory: the built-in ``split`` of ``source``)
    as its entry, at its own side (unless another process stored it meanwhile)."""
    folder = _builtin_folder(source, split)
    images = np.ascontiguousarray(dataset.images.cpu().numpy())  # (N, 3, H, W) uint8
    labels = dataset.labels.cpu().numpy().astype(np.int64)  # (N,)
    loader = "scikit-learn" if source.location == "digits" else "torchvision"

    def store() -> Prepared:
        _replace(folder / "images.npy", lambda f: np.save(f, images))
        _replace(folder / "labels.npy", lambda f: np.save(f, labels))
        manifest = {"format": FORMAT, "source": dataclasses.asdict(source), "split": split, "size": images.shape[-1],
                    "fingerprint": "builtin", "shape": list(images.shape),
                    "classes": [str(c) for c in range(dataset.num_classes)], "mean": list(dataset.mean),
                    "std": list(dataset.std), "skipped": [], "ignored": [],
                    "checksum": CHECKSUM,
                    "checksums": {"images.npy": checksum(images), "labels.npy": checksum(labels)}}
        return _write_manifest(folder, manifest)

    return _made(folder, "builtin", 2 * NPY_HEADER + images.nbytes + labels.nbytes,
                 f"re-storing {folder} from the arrays {loader} gives", store)


def _builtin_folder(source: Source, split: str) -> Path:
    return entry_folder(source, split, BUILTIN_SIDES[source.location])


def _cores() -> int:
    """CPU cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _empty(source: Source, split: str) -> Exception:
    return DatasetUnavailableError(f"split '{split}' of {source.location} holds no images (a labelled source keeps "
                                   f"1 in 5 images of each class as its test split): add images")


# --- opening and checking an entry ---------------------------------------------------------------

def _valid_entry(folder: Path, fingerprint: str) -> tuple[Prepared | None, str]:
    """``(entry, "")`` when ``folder`` holds a complete, intact entry made from ``fingerprint``, else
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
    sums = manifest.get("checksums")
    if manifest.get("checksum") != CHECKSUM or not isinstance(sums, dict) or set(sums) != set(ARRAYS):
        return None, "its manifest holds no checksums of its arrays (it was prepared by an older desupcon)"
    shape = tuple(manifest["shape"])
    for name, dtype, want in zip(ARRAYS, (np.int64, np.uint8), (shape[:1], shape)):
        why = _damage(folder / name, np.dtype(dtype), want, sums[name])
        if why:
            return None, f"{name} {why}"
    return Prepared(folder, manifest), ""


def _header(path: Path) -> tuple[np.dtype, tuple, bool, int]:
    """``(dtype, shape, fortran_order, data offset)`` of a ``.npy`` file (numpy's errors for one it cannot parse)."""
    with open(path, "rb") as f:
        version = np.lib.format.read_magic(f)
        read = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}.get(version)
        if read is None:
            raise ValueError(f"a .npy file of version {version}, which desupcon never writes")
        shape, fortran_order, dtype = read(f)
        return dtype, shape, fortran_order, f.tell()


def _data_checksum(path: Path, offset: int) -> str:
    """CRC-32 (8 hex digits) of the bytes of the file ``path`` from ``offset`` on (a ``.npy`` file's array:
    ``checksum``'s value), read ``READ_BYTES`` at a time."""
    value, buffer = 0, bytearray(READ_BYTES)
    view = memoryview(buffer)
    with open(path, "rb", buffering=0) as f:
        f.seek(offset)
        while got := f.readinto(buffer):
            value = zlib.crc32(view[:got], value)
    return f"{value:08x}"


def _damage(path: Path, dtype: np.dtype, shape: tuple, expected: str) -> str:
    """What is wrong with the array file ``path`` of an entry whose manifest says ``dtype``, ``shape`` and
    the checksum ``expected``; ``""`` when nothing is."""
    if not path.exists():
        return "is missing"
    try:
        found, found_shape, fortran_order, offset = _header(path)
    except OSError as err:
        return f"cannot be read ({err.strerror or err})"
    except Exception as err:  # whatever numpy raises for a header it cannot parse (ValueError, tokenize's TokenError, ...)
        detail = str(err).splitlines()[0][:120] if str(err) else ""
        return f"cannot be read: its header is damaged ({type(err).__name__}: {detail})"
    if found != dtype or found_shape != shape or fortran_order:
        return (f"holds {found} {found_shape}{' (Fortran order)' if fortran_order else ''} where its manifest says "
                f"{dtype} {shape}")
    size, end = path.stat().st_size, offset + math.prod(shape) * dtype.itemsize
    if size != end:
        return f"is {size:,} bytes where its header and manifest make {end:,} (it was cut short or added to)"
    try:
        found_sum = _data_checksum(path, offset)
    except OSError as err:
        return f"cannot be read ({err.strerror or err})"
    if found_sum != expected:
        return (f"fails its checksum (CRC-32 {found_sum}, its manifest says {expected}: its bytes changed after it was "
                f"written, by bit rot, a bad copy or an edit)")
    return ""


_WAITED: set[Path] = set()  # entries this process has said it waits for (one [data] line each)


@contextlib.contextmanager
def _lock(folder: Path, exclusive: bool):
    """Hold the lock of the entry in ``folder`` (``flock`` on ``folder/.lock``): exclusive to make it, shared
    to open it. When another process holds it, wait, saying so in one ``[data] waiting for ...`` line (once
    per entry and process).

    The exclusive lock makes the folder and its lock file (an ``OSError`` if it cannot). A shared lock
    where neither can be opened (a missing folder, a read-only one without a lock file) is no lock:
    nothing can be built there.
    """
    fd = None
    if fcntl is not None and exclusive:
        folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(folder / ".lock", os.O_RDWR | os.O_CREAT, 0o666)
    elif fcntl is not None:
        for flags in (os.O_RDWR | os.O_CREAT, os.O_RDONLY):
            with contextlib.suppress(OSError):
                fd = os.open(folder / ".lock", flags, 0o666)
                break
    if fd is None:
        yield
        return
    try:
        kind = fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH
        try:
            fcntl.flock(fd, kind | fcntl.LOCK_NB)
        except BlockingIOError:
            if folder not in _WAITED:
                _WAITED.add(folder)
                print(f"[data] waiting for another process that is preparing or checking {folder}; this one uses "
                      f"the entry when it is done", flush=True)
            fcntl.flock(fd, kind)
        yield
    finally:
        os.close(fd)  # releases the lock


def _opened(folder: Path, fingerprint: str) -> tuple[Prepared | None, str]:
    """``_valid_entry`` under the entry's shared lock (no process is making it meanwhile)."""
    with _lock(folder, exclusive=False):
        return _valid_entry(folder, fingerprint)


def _made(folder: Path, fingerprint: str, needed: int, redo: str, make) -> Prepared:
    """The entry in ``folder`` made by ``make()`` under its exclusive lock, or the one another process made
    while this one waited for the lock.

    Args:
        folder, fingerprint: the entry and the file-list hash it must be made from.
        needed: bytes its arrays take on disk (checked against the free space before ``make`` runs).
        redo: what the ``[data]`` line says is done to an entry that cannot be used ("rebuilding <folder>").
        make: makes the entry (writes its arrays and manifest) and returns it.

    A write that fails (read-only folder, disk full) raises ``ArtefactWriteError`` naming the file, the
    bytes needed and free.
    """
    try:
        with _lock(folder, exclusive=True):
            entry, why = _valid_entry(folder, fingerprint)
            if entry is not None:
                return entry
            if why:
                print(f"[data] {redo}: {why}", flush=True)
            _clear(folder, needed)
            return make()
    except OSError as err:
        raise _write_error(Path(err.filename or folder), needed, err) from None


def _clear(folder: Path, needed: int) -> None:
    """Remove what the entry in ``folder`` held (its manifest first, so no reader takes a half-made entry for
    the old one) and the temp files of killed builds; then check its disk holds ``needed`` bytes."""
    (folder / "manifest.json").unlink(missing_ok=True)
    for name in ARRAYS:
        remove_dead_temp_files(folder / name)
        (folder / name).unlink(missing_ok=True)  # of no use without its manifest: its space is the new one's
    free, _ = _free(folder)
    if free < needed:
        raise ArtefactWriteError(f"cannot prepare {folder}: its arrays take {needed:,} bytes and {free:,} bytes are "
                                 f"free on its disk; nothing was decoded: free space, or set DESUPCON_DATA to a disk "
                                 f"with room (the cache is $DESUPCON_DATA/prepared), then rerun")


def _free(folder: Path) -> tuple[int, int]:
    """Free bytes and free inodes (files) on the file system of ``folder`` (or of its nearest existing parent)."""
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    stat = os.statvfs(folder)
    return stat.f_bavail * stat.f_frsize, stat.f_favail


def _write_error(path: Path, needed: int, err: OSError) -> ArtefactWriteError:
    where = path if path.is_dir() else path.parent
    free, inodes = _free(where)
    no_files = " and no free inodes (it holds as many files as it can)" if inodes == 0 else ""
    return ArtefactWriteError(
        f"cannot write {path} ({err.strerror or err}): the entry takes {needed:,} bytes, {free:,} bytes are free in "
        f"{where}{no_files}; the entry was not made and no temp file is left: free space or make the folder "
        f"writable, or set DESUPCON_DATA to a writable disk with room (the cache is $DESUPCON_DATA/prepared), then rerun")


# --- writing an entry -----------------------------------------------------------------------------

@contextlib.contextmanager
def _making(path: Path, tmp: Path):
    """Make ``path`` through its temp file ``tmp`` within the block: an ``OSError`` names ``path`` (not ``tmp``,
    nor no file at all), and ``tmp`` is removed whatever happens."""
    try:
        yield
    except OSError as err:
        raise OSError(err.errno, err.strerror, str(path)) from None
    finally:
        tmp.unlink(missing_ok=True)


def _replace(path: Path, write) -> None:
    """``write(file)`` into a temp file beside ``path`` (``temp_name``), then move it into place."""
    tmp = temp_name(path, "part")
    with _making(path, tmp):
        with open(tmp, "wb") as f:
            write(f)
        os.replace(tmp, path)


def _write_manifest(folder: Path, manifest: dict) -> Prepared:
    atomic_write_json(manifest, folder / "manifest.json")
    return Prepared(folder, manifest)


def _write_header(f, shape: tuple) -> None:
    """Write the ``.npy`` header of a uint8 C-order array of ``shape`` at the position of the open file ``f``
    (numpy pads it so that a longer first axis still fits: its length does not depend on ``shape[0]``)."""
    np.lib.format.write_array_header_1_0(f, {"descr": "|u1", "fortran_order": False, "shape": shape})


def _allocate(path: Path, shape: tuple) -> None:
    """Create the uint8 ``.npy`` file ``path`` of ``shape`` with every block of it allocated on its disk
    (``posix_fallocate``), so that a full disk fails here and not in a decoding worker's write."""
    with open(path, "wb") as f:
        _write_header(f, shape)
        end = f.tell() + math.prod(shape)
        if hasattr(os, "posix_fallocate"):
            os.posix_fallocate(f.fileno(), 0, end)
        else:
            f.truncate(end)


def _compact(path: Path, keep: np.ndarray) -> None:
    """Move the rows ``keep`` (ascending indices) of the uint8 ``.npy`` file ``path`` to its front, in place,
    and cut the file to them (no second copy of the array on disk)."""
    array = np.load(path, mmap_mode="r+")  # (N, 3, S, S)
    offset, shape = array.offset, (len(keep), *array.shape[1:])
    for s in range(0, len(keep), MOVED_ROWS):
        rows = keep[s:s + MOVED_ROWS]
        array[s:s + len(rows)] = array[rows]  # rows move only forward: no block overwrites a row still to be moved
    array.flush()
    del array
    with open(path, "r+b") as f:
        _write_header(f, shape)
        if f.tell() != offset:
            raise RuntimeError(f"{path}: numpy wrote a header of {f.tell()} bytes for {shape}, not {offset}")
        f.truncate(offset + math.prod(shape))


def _end_with_parent(parent: int) -> None:
    """Initializer of the decoding workers: end this worker when ``parent``, the process that started it,
    ends, however it ends (SIGKILL too): on Linux the kernel kills it (``prctl(PR_SET_PDEATHSIG, SIGKILL)``),
    elsewhere a thread watching the parent's id does. Ctrl-C is the parent's to handle (it stops the pool), so
    a worker ignores SIGINT rather than print a traceback of its own."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if sys.platform == "linux":
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
    else:
        threading.Thread(target=_watch_parent, args=(parent,), name="desupcon-parent-watch", daemon=True).start()
    if os.getppid() != parent:  # it ended before the line above took effect
        os._exit(1)


def _watch_parent(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(1)
    os._exit(1)


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
    with concurrent.futures.ProcessPoolExecutor(workers, mp_context=context, initializer=_end_with_parent,
                                                initargs=(os.getpid(),)) as pool, \
            tqdm(total=n, desc=what, unit="img", mininterval=1.0) as bar:
        jobs = {pool.submit(decode_chunk, source, found.items[s:s + chunk], size, str(out), s): s for s in range(0, n, chunk)}
        try:
            for job in concurrent.futures.as_completed(jobs):
                start = jobs[job]
                failed += [(start + i, reason) for i, reason in job.result()]
                bar.update(min(chunk, n - start))
        except BrokenProcessPool:
            free, _ = _free(out.parent)
            raise ArtefactWriteError(f"a worker decoding into {out.parent} died (killed by the system: out of memory, "
                                     f"or a write to its disk failed; {free:,} bytes are free there); the entry was not "
                                     f"made and no temp file is left: free memory (give fewer --workers) or disk "
                                     f"space, then rerun") from None
        finally:  # on an error, the chunks not started are dropped rather than decoded for nothing
            pool.shutdown(cancel_futures=True)
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
    """Decode ``found`` into the (cleared) entry ``folder``, under its exclusive lock."""
    start = time.time()
    n = len(found.items)
    images_path = folder / "images.npy"
    decoded = temp_name(images_path, "decoded")
    with _making(images_path, decoded):
        _allocate(decoded, (n, 3, size, size))
        failed = _decode_all(source, found, size, decoded, workers, f"prepare {source.title} {split} {size}px")
        readable = np.ones(n, dtype=bool)
        readable[[i for i, _ in failed]] = False
        keep = np.flatnonzero(readable)
        if len(keep) == 0:
            raise _empty(source, split)
        if failed:
            _compact(decoded, keep)
        images_sum = _data_checksum(decoded, _header(decoded)[3])
        os.replace(decoded, images_path)
    labels = found.labels[keep]
    _replace(folder / "labels.npy", lambda f: np.save(f, labels))
    mean, std = _channel_stats(np.load(images_path, mmap_mode="r"))
    skipped = [{"file": found.names[i], "reason": reason} for i, reason in failed]
    manifest = {"format": FORMAT, "source": dataclasses.asdict(source), "split": split, "size": size, "resize": RESIZE,
                "fingerprint": found.fingerprint, "listed": n, "shape": [len(keep), 3, size, size],
                "classes": list(found.classes), "mean": mean, "std": std, "skipped": skipped, "ignored": found.ignored,
                "checksum": CHECKSUM, "checksums": {"images.npy": images_sum, "labels.npy": checksum(labels)},
                "seconds": round(time.time() - start, 1)}
    entry = _write_manifest(folder, manifest)
    if skipped:
        first = ", ".join(f"{s['file']} ({s['reason'].split(':')[0]})" for s in skipped[:SHOWN_SKIPS])
        print(f"[data] {source.location} ({split}): skipped {len(skipped)} unreadable image(s) of {n} (first: {first}"
              f"{', ...' if len(skipped) > SHOWN_SKIPS else ''}); every one and its reason are in "
              f"{folder / 'manifest.json'}")
    ignored = f"; ignored {len(found.ignored)} file(s) that are not images" if found.ignored else ""
    print(f"[data] prepared {entry.count:,} images of {source.location} ({split}) at {size}x{size} in "
          f"{manifest['seconds']} s: {folder} ({human_bytes(entry.nbytes)}{ignored})")
    return entry
