"""Value checks on tensors: input checks that never make a training step wait, and divergence bounds.

On the CPU a failed input check raises ``ValueError`` at once. On an accelerator the condition is
asserted on the device (``torch._assert_async``), so the step queues no host-device sync; a
failure surfaces as a device-side assertion carrying the same message. The bounds of the trainer's
divergence guard live here too.
"""

from __future__ import annotations

import contextlib
import contextvars

import torch

from desupcon.core.errors import DivergenceError

_ON_DEVICE = contextvars.ContextVar("on_device", default=False)


@contextlib.contextmanager
def asserts_on_device():
    """Inside, ``require`` asserts on the device for CPU tensors too, as it does on a GPU: a fake
    tensor (the memory tracer's) has no value to read back."""
    token = _ON_DEVICE.set(True)
    try:
        yield
    finally:
        _ON_DEVICE.reset(token)


def require(ok: torch.Tensor, message: str) -> None:
    """Raise ``ValueError(message)`` unless the boolean scalar ``ok`` is true."""
    if ok.device.type == "cpu" and not _ON_DEVICE.get():
        if not bool(ok):
            raise ValueError(message)
    else:
        torch._assert_async(ok, message)


def require_in_range(name: str, values: torch.Tensor, high: int, what: str = "class ids") -> None:
    """``values`` are integer ``what`` in ``[0, high)``."""
    if values.is_floating_point() or values.dtype == torch.bool:
        raise ValueError(f"{name} must hold integer {what}, got dtype {values.dtype}")
    require(((values >= 0) & (values < high)).all(), f"{name} must lie in [0, {high}) ({what})")


# Bounds past which training has diverged even while every value is still finite (documented in
# the README's "When things go wrong"): a loss or gradient norm above 1e6, or a weight above 1e4 in
# absolute value, is far outside anything a converging run of these networks produces.
LOSS_BOUND = 1e6
GRAD_NORM_BOUND = 1e6
WEIGHT_BOUND = 1e4


def require_finite(name: str, values: torch.Tensor, where: str) -> None:
    """``DivergenceError`` unless every entry of ``values`` is finite (one host sync; not for the hot path)."""
    finite = torch.isfinite(values)
    if not bool(finite.all()):
        bad = int((~finite).sum())
        raise DivergenceError(f"{where}: {bad} of {values.numel()} values of {name} are NaN or infinite; the network "
                              f"diverged, so it is neither evaluated nor plotted")
