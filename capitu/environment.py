"""What a result was measured with: the code's commit, the libraries' versions, the machine."""

from __future__ import annotations

import os
import platform
import subprocess
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
