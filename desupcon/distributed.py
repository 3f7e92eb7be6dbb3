"""Thin helpers over ``torch.distributed`` (no-ops in a single process).

Under ``torchrun`` every rank computes its loss on its local anchors against keys gathered from
all ranks with ``torch.distributed.nn.functional.all_gather``, whose backward sums the key
gradients back to their owners; with DDP averaging parameter gradients this equals the gradient
of one process on the concatenated batch.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main() -> bool:
    return rank() == 0


def init_from_env() -> bool:
    """Initialise the process group when launched by ``torchrun`` (``WORLD_SIZE`` > 1)."""
    if is_distributed() or int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return is_distributed()
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend)
    return True


def gather_local_first(x: torch.Tensor) -> torch.Tensor:
    """All ranks' ``x`` concatenated with this rank's rows first; differentiable for every part.

    Putting the local rows first keeps "key i is the positive of local anchor i" true.
    """
    if not is_distributed():
        return x
    from torch.distributed.nn.functional import all_gather

    parts = list(all_gather(x))
    return torch.cat([parts[rank()]] + parts[:rank()] + parts[rank() + 1:])


@torch.no_grad()
def gather(x: torch.Tensor) -> torch.Tensor:
    """All ranks' ``x`` concatenated in rank order, without gradient."""
    if not is_distributed():
        return x
    parts = [torch.empty_like(x) for _ in range(world_size())]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts)
