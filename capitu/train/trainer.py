"""`capitu train`: train a model on a prepared data folder, with exact resume and DDP.

A run folder holds `checkpoints/` (the last two crash-consistent checkpoints: weights, config,
optimizer, sampler and RNG states; see checkpoints.py), `model.safetensors` + `config.json`
(the last checkpoint's model: enough to evaluate and generate), `best/` (the model with the
best validation loss), `metrics.jsonl` and `run.json`.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import platform
import resource
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from tqdm import tqdm

import capitu
from capitu.checkpoint import CONFIG, TOKENIZER, WEIGHTS, restore_weights, save_model
from capitu.config import Config, from_dict, to_dict
from capitu.errors import UserError
from capitu.models import build_model
from capitu.paths import atomic_write_json, check_output, check_writable, staged_folder
from capitu.train.checkpoints import checkpoint_folders, load_checkpoint, save_checkpoint
from capitu.train.optim import make_optimizer, schedule
from capitu.train.sampler import WindowSampler, evaluation_starts, windows

METRICS = "metrics.jsonl"
RUN_INFO = "run.json"
PEAK_BF16_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L4": 121e12, "4090": 165e12}


@dataclass
class Distributed:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def setup_distributed(device_type: str) -> Distributed:
    if "RANK" not in os.environ:
        return Distributed()
    dist.init_process_group(backend="nccl" if device_type == "cuda" else "gloo")
    return Distributed(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))


def pick_device(name: str, local_rank: int) -> torch.device:
    if name != "auto":
        try:
            device = torch.device(name)
        except RuntimeError:
            raise UserError(f"unknown device '{name}'") from None
        if device.type == "cuda" and not torch.cuda.is_available():
            raise UserError("device cuda asked for, but CUDA is not available")
        return device
    if torch.cuda.is_available():
        return torch.device("cuda", local_rank)
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def bf16_supported(device: torch.device) -> bool:
    """Whether bf16 matmuls run natively: CUDA's own check; on CPU, AVX-512 BF16 or AMX
    (elsewhere oneDNN emulates bf16, slower than fp32)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    return False


def resolve_dtype(device: torch.device, dtype: str) -> str:
    """run.dtype as used: `auto` is bfloat16 autocast where the device has bf16 matmuls, else float32."""
    if dtype == "auto":
        return "bfloat16" if bf16_supported(device) else "float32"
    return dtype


def autocast_context(device: torch.device, dtype: str):
    dtype = resolve_dtype(device, dtype)
    if dtype == "float32":
        return contextlib.nullcontext()
    if dtype == "bfloat16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    raise UserError(f"run.dtype must be auto, float32 or bfloat16, got '{dtype}'")


def load_data(config: Config) -> tuple[dict, np.ndarray, np.ndarray]:
    folder = Path(config.data.path)
    if not config.data.path or not (folder / "meta.json").is_file():
        raise UserError(f"data folder not found or not prepared: {folder} (run capitu prepare first)")
    meta = json.loads((folder / "meta.json").read_text(encoding="utf-8"))
    train = np.memmap(folder / "train.bin", dtype=meta["dtype"], mode="r")
    val = np.memmap(folder / "val.bin", dtype=meta["dtype"], mode="r")
    block = config.model.block_size
    for name, tokens in (("train", train), ("val", val)):
        if len(tokens) <= block + 1:
            raise UserError(
                f"context model.block_size={block} is longer than the {name} split ({len(tokens)} tokens)"
            )
    vocab = meta["tokenizer"]["vocab_size"]
    if config.model.vocab_size == 0:
        config.model.vocab_size = vocab
    elif config.model.vocab_size < vocab:
        raise UserError(f"model.vocab_size {config.model.vocab_size} is smaller than the tokenizer's {vocab}")
    return meta, train, val


def git_commit() -> str | None:
    try:
        result = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                                cwd=Path(__file__).resolve().parent)
        return result.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def versions() -> dict:
    import safetensors
    import tokenizers

    return {"capitu": capitu.__version__, "python": platform.python_version(), "torch": torch.__version__,
            "numpy": np.__version__, "tokenizers": tokenizers.__version__, "safetensors": safetensors.__version__}


def peak_memory_bytes(device: torch.device) -> int:
    """CUDA: the most memory torch has allocated; otherwise the process's peak resident set.
    On Linux that is VmHWM, which starts afresh at exec (ru_maxrss carries the parent's peak
    into a subprocess)."""
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
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((flops for key, flops in PEAK_BF16_FLOPS.items() if key in name), None)


class StopRequest:
    """SIGINT/SIGTERM set a flag; the loop checkpoints at the end of the step and stops."""

    def __init__(self):
        self.signal = None
        self.previous = {}

    def __enter__(self):
        for sig in (signal.SIGINT, signal.SIGTERM):
            self.previous[sig] = signal.signal(sig, self.handle)
        return self

    def handle(self, signum, frame):
        self.signal = signal.Signals(signum).name

    def __exit__(self, *exc):
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)


def total_steps(config: Config, batch_tokens: int) -> int:
    if config.run.steps:
        return config.run.steps
    if config.run.tokens:
        return math.ceil(config.run.tokens / batch_tokens)
    raise UserError("no budget: set run.tokens or run.steps (--tokens, --steps); --time only stops earlier")


def read_saved_config(folder: Path) -> dict:
    try:
        return json.loads((folder / CONFIG).read_text(encoding="utf-8"))["config"]
    except (OSError, ValueError, KeyError, TypeError):
        raise UserError(f"{folder}: no readable config.json of a training run to resume") from None


@torch.no_grad()
def evaluate(model, tokens: np.ndarray, starts: np.ndarray, block: int, micro_batch: int, device, autocast) -> float:
    model.eval()
    losses = []
    for i in range(0, len(starts), micro_batch):
        x, y = windows(tokens, starts[i: i + micro_batch], block)
        with autocast:
            _, loss = model(x.to(device), y.to(device))
        losses.append(loss.item() * len(x))
    model.train()
    return sum(losses) / len(starts)


def train(config: Config | None, out: Path, resume: bool = False, pause_at: int = 0, progress: bool = True,
          run_settings: dict | None = None) -> dict:
    """Train the run in `out` with `config`, or resume it with its saved config (`config` is
    then ignored); `run_settings` ({"tokens", "steps", "time", "device"}) replace those [run]
    values, the saved ones too on resume (a budget can be extended, a run moved to a device)."""
    out = Path(out)
    writer = int(os.environ.get("RANK", 0)) == 0  # under torchrun, rank 0 writes (and checks where)
    checkpoint = None
    if resume:
        if writer:
            check_writable(out)
        checkpoint = load_checkpoint(out, repair=writer)
        config = from_dict(Config, read_saved_config(checkpoint[0]))
    elif writer and (checkpoint_folders(out) or (out / CONFIG).exists()):
        raise UserError(f"{out} already holds a run; use --resume to continue it, or another --out")
    elif writer and (out / RUN_INFO).exists():
        raise UserError(f"{out} holds a run stopped before its first checkpoint; remove it or use another --out")
    elif writer:
        check_output(out, new=True)
    for key, value in (run_settings or {}).items():
        setattr(config.run, key, value)
    config.validate()
    device = pick_device(config.run.device, int(os.environ.get("LOCAL_RANK", 0)))
    ddp = setup_distributed(device.type)
    try:
        return _train(config, out, checkpoint, pause_at, progress, device, ddp)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def _train(config: Config, out: Path, checkpoint: tuple[Path, dict] | None, pause_at: int, show_progress: bool, device,
           ddp: Distributed) -> dict:
    meta, train_tokens, val_tokens = load_data(config)
    torch.manual_seed(config.run.seed)
    if device.type == "cuda":
        torch.cuda.set_device(device)
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    autocast = autocast_context(device, config.run.dtype)
    model = build_model(config.model).to(device)
    optimizer = make_optimizer(model, config.optim, device.type)
    block, micro = config.model.block_size, config.optim.micro_batch
    accumulation = max(1, round(config.optim.batch_tokens / (micro * block * ddp.world)))
    step_tokens = accumulation * micro * block * ddp.world
    steps = total_steps(config, step_tokens)
    sampler = WindowSampler(train_tokens, block, config.run.seed)
    val_starts = evaluation_starts(len(val_tokens), block, config.run.eval_windows)
    progress = {"step": 0, "tokens": 0, "best_val": float("inf"), "elapsed": 0.0}

    resume = checkpoint is not None
    if resume:
        folder, state = checkpoint
        restore_weights(model, folder / WEIGHTS)
        optimizer.load_state_dict(state["optimizer"])
        sampler.load_state_dict(state["sampler"])
        torch.set_rng_state(state["rng_cpu"])
        if device.type == "cuda" and state["rng_cuda"]:
            torch.cuda.set_rng_state_all(state["rng_cuda"])
        progress = {key: state[key] for key in progress}
    elif ddp.main:
        out.mkdir(parents=True, exist_ok=True)
        tokenizer = Path(config.data.path) / TOKENIZER
        if tokenizer.exists():
            shutil.copyfile(tokenizer, out / TOKENIZER)
        atomic_write_json(out / RUN_INFO, {
            "config": to_dict(config), "data_fingerprint": meta.get("fingerprint"), "git_commit": git_commit(),
            "versions": versions(), "device": str(device), "dtype": resolve_dtype(device, config.run.dtype),
            "world_size": ddp.world,
            "accumulation": accumulation, "step_tokens": step_tokens, "total_steps": steps,
            "parameters": model.num_params(), "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
        })
        (out / METRICS).write_text("")

    trained = model
    if config.run.compile:
        trained = torch.compile(model)
    if ddp.world > 1:
        trained = torch.nn.parallel.DistributedDataParallel(trained, device_ids=[device.index] if device.type == "cuda" else None)
    if ddp.main and resume:
        keep_metrics_until(out / METRICS, progress["step"])

    board = tensorboard_writer(out) if ddp.main else None
    flops_per_token = model.flops_per_token()
    peak = peak_flops(device)
    target = min(steps, pause_at) if pause_at else steps
    bar = tqdm(total=target, initial=progress["step"], desc="train", unit=" steps", disable=None if show_progress and ddp.main else True)
    stop_reason = "pause-at" if target < steps else "budget"
    last = {}
    started = time.perf_counter() - progress["elapsed"]
    window_start, window_tokens = time.perf_counter(), 0
    model.train()
    with StopRequest() as stop:
        while progress["step"] < target:
            starts = sampler.step_starts(accumulation * ddp.world * micro)
            factor = schedule(progress["step"], steps, config.optim)
            optimizer.set_schedule(factor)
            lr = config.optim.lr * factor
            loss_sum = 0.0
            for m in range(accumulation):
                first = (m * ddp.world + ddp.rank) * micro
                x, y = windows(train_tokens, starts[first: first + micro], block)
                x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
                sync = ddp.world == 1 or m == accumulation - 1
                with (contextlib.nullcontext() if sync else trained.no_sync()), autocast:
                    _, loss = trained(x, y)
                    (loss / accumulation).backward()
                loss_sum += loss.item()
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), config.optim.grad_clip or float("inf")).item()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            progress["step"] += 1
            progress["tokens"] += step_tokens
            progress["elapsed"] = time.perf_counter() - started
            window_tokens += step_tokens
            bar.update(1)

            step = progress["step"]
            record = {"step": step, "tokens": progress["tokens"], "train_loss": loss_sum / accumulation, "lr": lr,
                      "grad_norm": grad_norm}
            validate = step % config.run.eval_every == 0 or step == target
            if validate:
                record["val_loss"] = evaluate(model, val_tokens, val_starts, block, micro, device, autocast)
            if step % config.run.log_every == 0 or validate or step == 1:
                rate = window_tokens / max(time.perf_counter() - window_start, 1e-9)
                record.update(tokens_per_s=rate, peak_memory_bytes=peak_memory_bytes(device),
                              elapsed_s=progress["elapsed"])
                if peak:
                    record["mfu"] = flops_per_token * rate / (peak * ddp.world)
                window_start, window_tokens = time.perf_counter(), 0
                bar.set_postfix(loss=f"{record['train_loss']:.3f}", tok_s=f"{rate:,.0f}")
                if ddp.main:
                    with open(out / METRICS, "a") as log:
                        log.write(json.dumps(record) + "\n")
                    if board is not None:
                        for key, value in record.items():
                            board.add_scalar(key, value, step)
            last = record
            stopping = stop.signal is not None
            if config.run.time and progress["elapsed"] >= config.run.time:
                stop_reason, stopping = "time", True
            if ddp.world > 1:  # every process must agree to stop at the same step
                flag = torch.tensor([int(stopping)], device=device)
                dist.all_reduce(flag)
                stopping = bool(flag.item())
            if validate and record["val_loss"] < progress["best_val"]:
                progress["best_val"] = record["val_loss"]
                if ddp.main:
                    with staged_folder(out / "best") as staging:
                        save_model(staging, model, {"config": to_dict(config), "step": step, "val_loss": record["val_loss"]})
            if ddp.main and (stopping or step % config.run.checkpoint_every == 0 or step == target):
                state = {"optimizer": optimizer.state_dict(), "sampler": sampler.state_dict(),
                         "rng_cpu": torch.get_rng_state(),
                         "rng_cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [], **progress}
                save_checkpoint(out, model, state, {"config": to_dict(config), "data_fingerprint": meta.get("fingerprint")})
            if stopping:
                stop_reason = stop.signal or stop_reason
                break
    bar.close()
    if board is not None:
        board.close()
    if ddp.world > 1:
        dist.barrier()
    last["stopped"] = stop_reason if progress["step"] < steps else "budget"
    return last


def tensorboard_writer(out: Path):
    """TensorBoard event files in `out/tensorboard`, when tensorboard is installed."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(str(out / "tensorboard"))


def keep_metrics_until(path: Path, step: int) -> None:
    """On resume, drop lines logged after the checkpoint (they will be logged again)."""
    if not path.exists():
        return
    kept = [line for line in path.read_text().splitlines() if line and json.loads(line)["step"] <= step]
    path.write_text("".join(line + "\n" for line in kept))
