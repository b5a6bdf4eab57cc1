"""What a result was measured with: the code's commit, the libraries' versions, the machine."""

from __future__ import annotations

import os
import platform
import subprocess
import time
from pathlib import Path

import capitu


def git_commit() -> str | None:
    try:
        result = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                                cwd=Path(__file__).resolve().parent)
        return result.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def versions() -> dict:
    import numpy as np  # here, not above: `capitu --help` imports this module through prepare's options
    import safetensors
    import tokenizers
    import torch

    return {"capitu": capitu.__version__, "python": platform.python_version(), "torch": torch.__version__,
            "numpy": np.__version__, "tokenizers": tokenizers.__version__, "safetensors": safetensors.__version__}


def hardware() -> str:
    import torch

    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (f"{platform.platform()}, {platform.machine()}, {os.cpu_count()} CPU cores, torch threads "
            f"{torch.get_num_threads()}, {device}")


class MachineLoad:
    """How busy the rest of the machine was while a block ran: the CPU time other programs took
    over the block's wall time, in cores and as a share of all cores (from /proc/stat, less this
    process's own CPU time), the cores the block's work left free for them (`spare_cores`), and the
    1-minute load average at the end. Where /proc/stat is missing (macOS, Windows), only the load
    average.

        with MachineLoad("cpu") as load:
            ...
        load.result  # {"others": 0.02, "others_cores": 0.04, "spare_cores": 0, "loadavg": 1.9, "cores": 2}
    """

    # other programs kept this many cores busy on average beyond the spare ones: PyTorch runs each CPU operation on
    # all its threads and waits for the slowest at its end, so a neighbour on any of their cores slows all of it
    # (benchmarks/busy_neighbour.py)
    BUSY_CORES = 0.3

    @staticmethod
    def busy_seconds() -> float | None:
        try:
            with open("/proc/stat", encoding="ascii") as stat:
                fields = [int(v) for v in stat.readline().split()[1:]]
        except (OSError, ValueError):
            return None
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle and iowait
        return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")

    @classmethod
    def sample(cls) -> tuple[float, float | None, float]:
        return time.perf_counter(), cls.busy_seconds(), sum(os.times()[:4])

    def __init__(self, device_type: str = "cpu"):
        self.spare = spare_cores(device_type)
        self.start = self.sample()

    def __enter__(self) -> MachineLoad:
        self.start = self.sample()
        return self

    def __exit__(self, *exc) -> None:
        self.result = self.lap()

    def lap(self) -> dict:
        """The load since the start or the last lap (a training loop's logging window)."""
        (wall, busy, own), (wall0, busy0, own0) = self.sample(), self.start
        self.start = (wall, busy, own)
        cores = os.cpu_count() or 1
        others_cores = None
        if busy is not None and busy0 is not None:
            others_cores = max(0.0, (busy - busy0) - (own - own0)) / max(wall - wall0, 1e-9)
        loadavg = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
        return {"others": None if others_cores is None else min(1.0, others_cores / cores),
                "others_cores": others_cores, "spare_cores": self.spare, "loadavg": loadavg, "cores": cores}


def spare_cores(device_type: str) -> int:
    """The cores a measurement on `device_type` leaves to other programs: none on a CPU, where capitu keeps torch's
    threads on every core; on a GPU, all but the one whose thread launches the kernels, so that the other runs of
    `capitu study --jobs` and the references computed beside them are no disturbance where the machine has the cores
    for them."""
    return 0 if device_type == "cpu" else max(0, (os.cpu_count() or 1) - 1)


def is_busy(load: dict | None) -> bool:
    """Whether a measurement's recorded load says other programs disturbed it: they kept busy more cores than the
    measurement left them (`spare_cores`; 0 where not recorded) by over `MachineLoad.BUSY_CORES`."""
    if not load:
        return False
    if load.get("others_cores") is not None:
        return load["others_cores"] > MachineLoad.BUSY_CORES + (load.get("spare_cores") or 0)
    # no /proc: the load average, which counts the measurement's own threads too, is a rougher sign
    return load.get("loadavg") is not None and load["loadavg"] > load["cores"] + 1
