"""Thin helpers over ``torch.distributed`` (no-ops in a single process).

Under ``torchrun`` every rank computes its loss on its local anchors against keys gathered from
all ranks with PyTorch's differentiable all-gather (``_functional_collectives.all_gather_single``,
the successor of ``torch.distributed.nn.functional.all_gather``), whose backward sums the key
gradients back to their owners; with DDP averaging parameter gradients this equals the gradient
of one process on the concatenated batch.
"""

from __future__ import annotations

import atexit
import contextlib
import contextvars
import os

import torch
import torch.distributed as dist
import torch.nn as nn


_ALONE = contextvars.ContextVar("alone", default=False)


def is_distributed() -> bool:
    """This process is one of several ranks (and not inside ``single_process()``)."""
    return not _ALONE.get() and dist.is_available() and dist.is_initialized()


@contextlib.contextmanager
def single_process():
    """Inside, this process acts as the only rank: no DDP wrapper, no collectives (rank 0 of 1).

    The memory tracer builds and traces a run's task so, on rank 0 alone, while the real run's
    process group stays up.
    """
    token = _ALONE.set(True)
    try:
        yield
    finally:
        _ALONE.reset(token)


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main() -> bool:
    return rank() == 0


def init_from_env() -> bool:
    """Initialise the process group when launched by ``torchrun`` (``WORLD_SIZE`` > 1).

    NCCL on GPUs (each process on GPU ``LOCAL_RANK``), gloo on CPUs; the rendezvous comes from the
    ``MASTER_ADDR``/``MASTER_PORT``/``RANK`` variables torchrun sets. The group is destroyed at exit.
    Returns whether this process is one of several.
    """
    if is_distributed() or int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return is_distributed()
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend)
    atexit.register(dist.destroy_process_group)
    return True


def wrap(module: nn.Module) -> nn.Module:
    """``module`` in ``DistributedDataParallel`` (gradients averaged over ranks), or itself alone.

    ``module`` must be on this rank's device, and every trainable parameter must get a gradient each
    step (freeze the ones a run never uses).
    """
    if not is_distributed():
        return module
    return nn.parallel.DistributedDataParallel(module)


@contextlib.contextmanager
def main_first():
    """Run the block on rank 0 first and then on the other ranks (e.g. a download the others read)."""
    if not is_main():
        dist.barrier()
    yield
    if is_main() and is_distributed():
        dist.barrier()


def gather_local_first(x: torch.Tensor) -> torch.Tensor:
    """All ranks' ``x`` concatenated with this rank's rows first; differentiable for every part.

    Putting the local rows first keeps "key i is the positive of local anchor i" true.
    """
    if not is_distributed():
        return x
    from torch.distributed._functional_collectives import all_gather_single

    parts = all_gather_single(x, 0, dist.group.WORLD).chunk(world_size())  # rank order
    return torch.cat([parts[rank()], *parts[:rank()], *parts[rank() + 1:]])


@torch.no_grad()
def gather(x: torch.Tensor) -> torch.Tensor:
    """All ranks' ``x`` concatenated in rank order, without gradient."""
    if not is_distributed():
        return x
    parts = [torch.empty_like(x) for _ in range(world_size())]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts)


@torch.no_grad()
def sum_over_ranks(x: torch.Tensor) -> torch.Tensor:
    """The sum of every rank's ``x`` (a new tensor; ``x`` itself in a single process)."""
    if not is_distributed():
        return x
    total = x.clone()
    dist.all_reduce(total)
    return total


@torch.no_grad()
def broadcast_(x: torch.Tensor) -> torch.Tensor:
    """Overwrite ``x`` in place with rank 0's ``x`` (nothing to do in a single process)."""
    if is_distributed():
        dist.broadcast(x, src=0)
    return x


def broadcast_object(obj):
    """Rank 0's ``obj`` (any picklable value) on every rank; the others wait here for rank 0."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]
