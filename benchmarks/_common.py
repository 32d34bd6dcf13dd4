"""What the benchmark scripts share (imported as ``_common``: the scripts run as ``python benchmarks/NAME.py``)."""

from __future__ import annotations

import os
import platform
from pathlib import Path

import torch

__all__ = ["machine"]


def machine(device: torch.device) -> str:
    """One line naming the CPU model, its cores, torch's threads, the GPU (on CUDA) and torch's version."""
    cpu = platform.processor() or platform.machine()
    info = Path("/proc/cpuinfo")
    for line in info.read_text().splitlines() if info.exists() else []:
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    gpu = f", GPU {torch.cuda.get_device_name(device)}" if device.type == "cuda" else ""
    return f"{cpu}, {os.cpu_count()} cores, torch threads: {torch.get_num_threads()}{gpu}; torch {torch.__version__}"
