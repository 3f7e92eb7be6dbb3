"""``stream`` residency: a prepared uint8 ``(N, C, H, W)`` array file on the host, batches read ahead of the step.

``ArrayFile`` is a prepared ``images.npy``. ``read(rows, out)`` copies rows with positioned reads
(``os.preadv``), so they come from the operating system's page cache and the process holds only its
buffers: a memory map would keep every page it touched in the resident set, up to the whole file.
``mapped()`` is the same file as a memory-mapped tensor, for slicing (``desupcon.engine.evaluate.embed``).

``Prefetcher`` serves one epoch's planned batches in their order: a background thread reads each
batch's rows into a buffer (pinned memory on CUDA) up to ``DEPTH`` batches ahead; ``next(idx)`` hands
the next one over, copied to the device without blocking, and a CUDA event keeps its buffer from
being refilled before the copy is done. On the CPU each batch is a fresh tensor (no copy).

A read that fails (the file cut short or unreadable after the run opened it) raises
``DatasetUnavailableError`` naming the file and the fix, in the training thread: one line from the CLI.
"""

from __future__ import annotations

import math
import os
import queue
import threading
import weakref
from pathlib import Path

import numpy as np
import torch

from desupcon.core.errors import DatasetUnavailableError

DEPTH = 4  # batches read ahead of the step


class ArrayFile:
    """A uint8 ``(N, C, H, W)`` ``.npy`` file, read by rows.

    Args:
        path: the file (a prepared cache entry's ``images.npy``).
    """

    def __init__(self, path):
        self.path = Path(path)
        header = np.load(self.path, mmap_mode="r")
        if header.dtype != np.uint8 or header.ndim != 4:
            raise ValueError(f"{self.path}: expected a uint8 (N, C, H, W) array, got {header.dtype} {header.shape}")
        self.shape, self.offset = header.shape, header.offset
        self.row_bytes = math.prod(self.shape[1:])
        self.fd = os.open(self.path, os.O_RDONLY)
        weakref.finalize(self, os.close, self.fd)

    def __len__(self) -> int:
        return self.shape[0]

    def read(self, rows: np.ndarray, out: np.ndarray) -> None:
        """Copy the images ``rows`` ((B,) integer indices) into ``out`` (uint8 ``(B, C, H, W)``, C-contiguous),
        reading them in file order; ``DatasetUnavailableError`` if the file cannot give them."""
        for j in np.argsort(rows, kind="stable"):
            try:
                got = os.preadv(self.fd, [out[j]], self.offset + int(rows[j]) * self.row_bytes)
            except OSError as err:
                raise self._unreadable(f"reading image {rows[j]} failed ({err.strerror or err})") from None
            if got != self.row_bytes:
                raise self._unreadable(f"read {got:,} of the {self.row_bytes:,} bytes of image {rows[j]}: the file "
                                       f"was cut short")

    def _unreadable(self, what: str) -> DatasetUnavailableError:
        return DatasetUnavailableError(
            f"{self.path}: {what} after this run opened it (another process rewrote it, or its disk failed); "
            f"rerun: a run checks the entry when it opens it and prepares it again, and training resumes from its "
            f"last checkpoint")

    def mapped(self) -> torch.Tensor:
        """The whole array as a uint8 tensor over a copy-on-write memory map of the file (nothing read yet)."""
        return torch.from_numpy(np.load(self.path, mmap_mode="c"))


class Prefetcher:
    """Reads planned batches of an ``ArrayFile`` ahead of the training step, in a background thread.

    Args:
        file: the images.
        batches: the index tensors ``(B,)`` of the epoch's forwards, in the order they are asked for.
        device: where ``next`` delivers each batch.
        depth: batches read ahead (default ``DEPTH``).

    Call ``close`` when done (also mid-epoch): it stops and joins the thread.
    """

    def __init__(self, file: ArrayFile, batches: list[torch.Tensor], device, depth: int = DEPTH):
        self.file, self.batches, self.device = file, batches, torch.device(device)
        sizes = [len(b) for b in batches]
        host = torch.cat(batches).cpu().numpy() if batches else np.zeros(0, dtype=np.int64)  # one device sync
        self.rows = np.split(host, np.cumsum(sizes)[:-1]) if batches else []
        self.cuda = self.device.type == "cuda"
        self.free = queue.Queue()  # (pinned buffer or None, CUDA event of its last copy or None)
        for _ in range(max(1, min(depth, len(batches)))):
            pinned = torch.empty((max(sizes), *file.shape[1:]), dtype=torch.uint8, pin_memory=True) if self.cuda else None
            self.free.put((pinned, None))
        self.ready = queue.Queue()  # (buffer, batch) in plan order, or the exception that stopped the thread
        self.position = 0
        self.closed = threading.Event()
        self.thread = threading.Thread(target=self._fill, name="desupcon-prefetch", daemon=True)
        self.thread.start()

    def _fill(self):
        try:
            for rows in self.rows:
                buffer, copied = self.free.get()
                if self.closed.is_set():
                    return
                if copied is not None:
                    copied.synchronize()  # the last copy out of this buffer has finished
                batch = buffer[:len(rows)] if buffer is not None else \
                    torch.empty((len(rows), *self.file.shape[1:]), dtype=torch.uint8)
                self.file.read(rows, batch.numpy())
                self.ready.put((buffer, batch))
        except BaseException as err:  # handed to the training thread, which raises it
            self.ready.put(err)

    def next(self, idx: torch.Tensor) -> torch.Tensor:
        """The images of ``idx`` (the next planned index tensor itself) as uint8 ``(B, C, H, W)`` on the device."""
        planned = self.batches[self.position] if self.position < len(self.batches) else None
        if planned is None or idx.data_ptr() != planned.data_ptr() or idx.shape != planned.shape:
            raise RuntimeError(f"gather was asked for {tuple(idx.shape)} indices that are not batch {self.position} of "
                               f"the {len(self.batches)} planned by ImageDataset.prefetch; ask for the planned index "
                               f"tensors, in their order")
        self.position += 1
        item = self.ready.get()
        if isinstance(item, DatasetUnavailableError):
            raise item  # one line naming the file and the fix
        if isinstance(item, BaseException):
            raise RuntimeError(f"reading {self.file.path} ahead of the step failed: {item}") from item
        buffer, batch = item
        if not self.cuda:
            self.free.put((None, None))
            return batch
        on_device = batch.to(self.device, non_blocking=True)
        copied = torch.cuda.Event()
        copied.record()
        self.free.put((buffer, copied))
        return on_device

    def close(self):
        self.closed.set()
        self.free.put((None, None))  # wakes the thread if it waits for a buffer
        self.thread.join()
