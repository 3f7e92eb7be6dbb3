"""Value checks on tensors that never make a training step wait for the host.

On the CPU a failed check raises ``ValueError`` at once. On an accelerator the condition is
asserted on the device (``torch._assert_async``), so the step queues no host-device sync; a
failure surfaces as a device-side assertion carrying the same message.
"""

from __future__ import annotations

import torch


def require(ok: torch.Tensor, message: str) -> None:
    """Raise ``ValueError(message)`` unless the boolean scalar ``ok`` is true."""
    if ok.device.type == "cpu":
        if not bool(ok):
            raise ValueError(message)
    else:
        torch._assert_async(ok, message)


def require_in_range(name: str, values: torch.Tensor, high: int, what: str = "class ids") -> None:
    """``values`` are integer ``what`` in ``[0, high)``."""
    if values.is_floating_point() or values.dtype == torch.bool:
        raise ValueError(f"{name} must hold integer {what}, got dtype {values.dtype}")
    require(((values >= 0) & (values < high)).all(), f"{name} must lie in [0, {high}) ({what})")
