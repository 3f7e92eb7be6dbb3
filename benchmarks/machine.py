"""What the benchmarks record of the machine they ran on: CPU model, SIMD flags, clock, nominal and measured
fp32 peak, load."""

import json
import os
import platform
import time
from pathlib import Path

import torch

SIMD_FLAGS = ("sse4_2", "avx", "fma", "avx2", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16")


def _cpuinfo_field(name: str) -> str | None:
    """The first ``name : value`` of ``/proc/cpuinfo`` (None where there is none, e.g. not Linux)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.split(":", 1)[0].strip() == name:
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else what ``platform`` knows."""
    return _cpuinfo_field("model name") or platform.processor() or "unknown"


def cpu_flags() -> list[str]:
    """The SIMD flags of ``SIMD_FLAGS`` this CPU reports in ``/proc/cpuinfo``, in that order."""
    flags = set((_cpuinfo_field("flags") or "").split())
    return [f for f in SIMD_FLAGS if f in flags]


def fp32_peak() -> dict:
    """This CPU's nominal fp32 peak: cores x GHz x fp32 FLOPs per cycle and core, and how each was read.

    FLOPs per cycle assume two FMA units (2 FLOPs per lane): 512-bit AVX-512 on Intel = 64; AVX2 + FMA,
    and AVX-512 on AMD (Zen 4 runs it on 256-bit units) = 32; otherwise SSE = 8. GHz is the ``cpu MHz``
    of ``/proc/cpuinfo`` (in a virtual machine the host's nominal clock; turbo is not counted).
    """
    flags, vendor = cpu_flags(), _cpuinfo_field("vendor_id") or ""
    if "avx512f" in flags and vendor != "AuthenticAMD":
        simd, per_cycle = "AVX-512, 2 FMA units", 64
    elif "avx2" in flags and "fma" in flags:
        simd = "AVX-512 on 256-bit units (AMD), 2 FMA units" if "avx512f" in flags else "AVX2, 2 FMA units"
        per_cycle = 32
    else:
        simd, per_cycle = "SSE", 8
    mhz = _cpuinfo_field("cpu MHz")
    ghz = float(mhz) / 1000 if mhz else None
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    gflops = cores * ghz * per_cycle if ghz else None
    return {"cores": cores, "ghz": ghz, "simd": simd, "flops_per_cycle": per_cycle, "gflops": gflops}


def load_average() -> float:
    """The 1-minute load average (runnable processes; above the core count the cores are shared)."""
    return os.getloadavg()[0]


def matmul_gflops(side: int = 2048, repeats: int = 5) -> float:
    """GFLOP/s of the fastest of ``repeats`` fp32 ``side`` x ``side`` matmuls with torch's current threads: the
    ceiling a compute-bound fp32 step can hope for on this CPU, measured (turbo and shared cores included)."""
    a, b = torch.randn(side, side), torch.randn(side, side)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - start)
    return 2 * side ** 3 / best / 1e9


def write_json(path: Path | None, figures: dict) -> None:
    """Write ``figures`` to ``path`` (``--json``; its folder made) and say so; nothing where ``path`` is None."""
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(figures, indent=2) + "\n")
        print(f"wrote {path}")
