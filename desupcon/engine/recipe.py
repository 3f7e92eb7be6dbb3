"""``Recipe``: what the trainer core reads of a run's config, and the learning-rate schedule."""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Recipe:
    """What the trainer core reads from a run's config (``RunConfig.recipe``, ``SSLConfig.recipe``).

    batch_size: global images per forward; accum_steps forwards make one optimiser step.
    lr: the peak learning rate (after any batch scaling); schedule: "cosine" or "constant",
        after ``warmup_epochs`` of linear warmup.
    amp: mixed precision allowed: under ``Trainer(fast="auto")`` bf16 wherever the device runs it
        natively (``native_bf16``; fp16 with a grad scaler on CUDA GPUs without bf16), fp32 elsewhere.
    checkpoint_every: epochs between checkpoints (and the last epoch); ``snapshots`` keeps each one.
    """

    epochs: int
    batch_size: int
    accum_steps: int
    seed: int
    optimizer: str
    lr: float
    weight_decay: float
    sgd_momentum: float
    schedule: str
    warmup_epochs: int
    amp: bool
    checkpoint_every: int
    snapshots: bool


def lr_factor(step: int, warmup: int, total: int, schedule: str = "cosine") -> float:
    """Linear warmup to 1 over ``warmup`` steps, then cosine annealing to 0 at ``total`` (or constant 1)."""
    if step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))
