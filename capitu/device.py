"""The device a command runs on: which one, in which dtype, how fast it can be, how much
memory a task took, and the compiler settings of the decode step."""

from __future__ import annotations

import contextlib
import resource
import sys
from pathlib import Path

import torch

from capitu.errors import UserError

PEAK_BF16_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L4": 121e12, "4090": 165e12}


def pick_device(name: str, local_rank: int = 0) -> torch.device:
    """A device by name, or with `auto` the best available (CUDA, then MPS, then CPU)."""
    if name != "auto":
        try:
            device = torch.device(name)
        except RuntimeError:
            raise UserError(f"unknown device '{name}'") from None
        if device.type == "cuda" and not torch.cuda.is_available():
            raise UserError("device cuda asked for, but CUDA is not available")
        if device.type == "mps" and not torch.backends.mps.is_available():
            raise UserError("device mps asked for, but MPS is not available")
        return device
    if torch.cuda.is_available():
        return torch.device("cuda", local_rank)
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def use_tf32(device: torch.device, on: bool = True) -> None:
    """fp32 matrix products and convolutions in TF32 on CUDA (as nanoGPT): what training and
    benchmarks run with (`on=False`: exact fp32, for parity checks)."""
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = on
        torch.backends.cudnn.allow_tf32 = on


def bf16_supported(device: torch.device) -> bool:
    """Whether bf16 matmuls run natively: CUDA cards of compute capability 8.0 or more (Ampere on;
    `torch.cuda.is_bf16_supported()` also says yes on a T4 or V100, which emulate it); on CPU,
    AVX-512 BF16 or AMX (elsewhere oneDNN emulates bf16, slower than fp32)."""
    if device.type == "cuda":
        return torch.cuda.get_device_capability(device) >= (8, 0)
    if device.type == "cpu":
        return torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    return False


def resolve_dtype(device: torch.device, dtype: str) -> str:
    """run.dtype as used: `auto` is bfloat16 autocast where the device has native bf16 matmuls, float16 (with a
    gradient scaler) on older CUDA cards (T4, V100), float32 elsewhere."""
    if dtype == "auto":
        if bf16_supported(device):
            return "bfloat16"
        return "float16" if device.type == "cuda" else "float32"
    return dtype


def autocast_context(device: torch.device, dtype: str):
    dtype = resolve_dtype(device, dtype)
    if dtype == "float32":
        return contextlib.nullcontext()
    if dtype in ("bfloat16", "float16"):
        return torch.autocast(device.type, dtype=getattr(torch, dtype))
    raise UserError(f"run.dtype must be auto, float32, bfloat16 or float16, got '{dtype}'")


def grad_scaler(device: torch.device, dtype: str) -> torch.amp.GradScaler:
    """Loss scaling for float16, whose 5 exponent bits lose small gradients to zero: the loss is multiplied before
    the backward pass and the gradients divided back; a step whose gradients overflowed is skipped and the scale
    halved. A no-op for the other dtypes."""
    return torch.amp.GradScaler(device.type, enabled=resolve_dtype(device, dtype) == "float16")


def inference_dtype(device: torch.device) -> torch.dtype:
    """What a model is cast to for generation: on CUDA bf16 where it is native, else float16; float32 elsewhere."""
    if device.type != "cuda":
        return torch.float32
    return torch.bfloat16 if bf16_supported(device) else torch.float16


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA runs asynchronously): before reading a clock."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_memory_bytes(device: torch.device) -> int:
    """CUDA: the most memory torch has allocated; otherwise the process's peak resident set. On Linux that is VmHWM,
    which starts afresh at exec (ru_maxrss carries the parent's peak into a subprocess)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024  # kB
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # macOS reports bytes, Linux KiB


def peak_flops(device: torch.device) -> float | None:
    """The datasheet's dense bf16 FLOP/s of a known CUDA card (None elsewhere): MFU's denominator."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((flops for key, flops in PEAK_BF16_FLOPS.items() if key in name), None)


def compile_step(step, device: torch.device):
    """`step` compiled for fixed shapes, as a CUDA graph on CUDA. Every decoder compiles the same code for its own
    model and batch: a process serving or benchmarking several needs more than dynamo's default 8 versions of it."""
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
    return torch.compile(step, dynamic=False, fullgraph=True,
                         mode="reduce-overhead" if device.type == "cuda" else None)
