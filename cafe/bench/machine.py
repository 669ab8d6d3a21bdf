"""What the benchmark ran on, and that machine's float32 matmul peak: the yardstick of every utilisation ratio."""

from __future__ import annotations

import os
import platform
from typing import Any

import torch

from cafe.bench.harness import cpu_flags
from cafe.bench.measure import Timer

PEAK_SIZES = (2048, 3072, 4096)  # square float32 matmuls; the best of them is this machine's peak
QUICK_PEAK_SIZES = (1024, 2048)


def cpu_model() -> str:
    """The CPU's marketing name (Linux /proc/cpuinfo; the platform's word elsewhere)."""
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def describe(device: torch.device) -> dict[str, Any]:
    """CPU and its bf16/AMX/AVX-512 flags, cores, torch, threads, device and load: enough to tell whether two runs
    are comparable."""
    info: dict[str, Any] = {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "device": str(device),
        "cpu_flags": cpu_flags(),
        "load_average_1min": os.getloadavg()[0],
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def matmul_peak(timer: Timer, quick: bool) -> dict[str, Any]:
    """Best FLOP/s of a few large square float32 matmuls on the bench device, with torch's configured threads."""
    per_size = {}
    for n in QUICK_PEAK_SIZES if quick else PEAK_SIZES:
        a, b = (torch.randn(n, n, device=timer.device) for _ in range(2))
        seconds = timer.measure(lambda a=a, b=b: a @ b).min_seconds  # the peak: the best run
        per_size[str(n)] = 2 * n**3 / seconds
    return {"flop_per_s": max(per_size.values()), "per_size": per_size, "dtype": "float32"}
