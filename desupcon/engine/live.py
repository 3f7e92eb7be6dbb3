"""Live curves: an optional TensorBoard writer of the per-epoch scalars of the JSON training log.

Off by default and no required dependency: set ``DESUPCON_TENSORBOARD=1`` (or pass ``--tensorboard`` to
``python -m desupcon train``, ``pretrain`` or ``sweep``, which sets it for every worker) and each run writes
``<output home>/tensorboard/<run>/``; then TensorBoard pointed at ``<output home>/tensorboard`` (its
logdir option) shows every run live. The scalars are exactly the numbers of each epoch's entry in
``json_results/training_logs/<run>.json`` (loss, train_acc, lr, seconds, grad_norm and, for MoCo-v3,
momentum), at step = epoch. Not being a config field, the switch never changes a run's name or cache.
"""

from __future__ import annotations

import os

from desupcon.core.paths import tensorboard_dir

ENV = "DESUPCON_TENSORBOARD"


def enabled() -> bool:
    return os.environ.get(ENV, "").lower() in ("1", "true", "yes", "on")


class EpochWriter:
    """Writes each epoch's numeric log entries as TensorBoard scalars, or nothing when not ``enabled()``.

    Args:
        run_name: the run (its folder under ``<output home>/tensorboard``).
        first_epoch: epochs already in the history (a resumed run); events after it are purged so a
            resume never leaves two curves (default 0).
    """

    def __init__(self, run_name: str, first_epoch: int = 0):
        self.writer = None
        if not enabled():
            return
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise ImportError(f"{ENV}=1 needs the tensorboard package: pip install 'desupcon[tensorboard]' "
                              f"(or unset {ENV})") from None
        self.writer = SummaryWriter(str(tensorboard_dir(run_name)), purge_step=first_epoch + 1)

    def add(self, entry: dict):
        """One epoch's log entry (``{"epoch": E, "loss": ..., ...}``)."""
        if self.writer is None:
            return
        for key, value in entry.items():
            if key != "epoch" and isinstance(value, (int, float)) and not isinstance(value, bool):
                self.writer.add_scalar(key, value, entry["epoch"])
        self.writer.flush()

    def close(self):
        if self.writer is not None:
            self.writer.close()
