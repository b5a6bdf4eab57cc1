"""`capitu train`: train a model on a prepared data folder, with exact resume and DDP.

`setup` builds a `Session` (data, model, optimizer, sampler: new, or resumed from a checkpoint of
checkpoints.py), `optimizer_step` runs one step over its micro-batches, `evaluate` the validation loss,
`log_step` a metrics record, `save_best` and `save_state` best/ and a checkpoint; `run_loop` drives them."""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import signal
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from tqdm import tqdm

from capitu.checkpoint import restore_weights, save_model
from capitu.config import Config, from_dict, to_dict
from capitu.device import (
    autocast_context,
    grad_scaler,
    peak_flops,
    peak_memory_bytes,
    pick_device,
    resolve_dtype,
    use_tf32,
)
from capitu.environment import MachineLoad, git_commit, versions
from capitu.errors import UserError, warn
from capitu.folders import DataFolder, RunFolder
from capitu.models import build_model
from capitu.paths import check_output, check_writable, staged_folder
from capitu.train.checkpoints import checkpoint_folders, load_checkpoint, save_checkpoint
from capitu.train.optim import make_optimizer, schedule
from capitu.train.sampler import WindowSampler, evaluation_starts, windows


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


@dataclass
class Progress:
    """How far a run has come: saved in every checkpoint, restored on resume."""
    step: int = 0
    tokens: int = 0
    best_val: float = float("inf")
    elapsed: float = 0.0


@dataclass
class Session:
    """Everything one training run works with, built by `setup`."""
    config: Config
    run: RunFolder
    device: torch.device
    ddp: Distributed
    data: DataFolder
    train_tokens: np.ndarray
    val_tokens: np.ndarray
    val_starts: np.ndarray
    model: torch.nn.Module
    trained: torch.nn.Module  # the model as stepped: compiled, wrapped in DDP
    optimizer: object
    sampler: WindowSampler
    autocast: object
    scaler: torch.amp.GradScaler  # float16's loss scaling (disabled for the other dtypes)
    accumulation: int
    step_tokens: int
    steps: int
    progress: Progress


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


def load_data(config: Config) -> tuple[DataFolder, np.ndarray, np.ndarray]:
    data = DataFolder(config.data.path).require()
    train, val = data.tokens("train"), data.tokens("val")
    block = config.model.block_size
    for name, tokens in (("train", train), ("val", val)):
        if len(tokens) <= block + 1:
            raise UserError(f"context model.block_size={block} is longer than the {name} split ({len(tokens)} tokens)")
    if config.model.vocab_size == 0:
        config.model.vocab_size = data.vocab_size
    elif config.model.vocab_size < data.vocab_size:
        raise UserError(f"model.vocab_size {config.model.vocab_size} is smaller than the tokenizer's {data.vocab_size}")
    return data, train, val


def accumulation_steps(config: Config, world: int = 1) -> int:
    """Micro-batches each process runs per optimizer step: `optim.batch_tokens` over the tokens of one micro-batch
    in every process (at least 1)."""
    return max(1, round(config.optim.batch_tokens / (config.optim.micro_batch * config.model.block_size * world)))


def total_steps(config: Config, batch_tokens: int) -> int:
    """The schedule's length in steps; 0 when only seconds are given (run.time sets it then)."""
    if config.run.steps:
        return config.run.steps
    if config.run.tokens:
        return math.ceil(config.run.tokens / batch_tokens)
    if config.run.time:
        return 0
    raise UserError("no budget: set run.tokens, run.steps or run.time (--tokens, --steps, --time)")


def budget_spent(session: Session) -> float:
    """The share of the budget used, after warmup: of the steps, or of the seconds for a run
    with a time budget only (its schedule then depends on the machine's speed)."""
    if not session.steps:
        return session.progress.elapsed / session.config.run.time
    warmup = session.config.optim.warmup_steps
    return (session.progress.step - warmup) / max(1, session.steps - warmup)


def read_saved_config(folder: Path) -> dict:
    try:
        return json.loads(RunFolder(folder).config_path.read_text(encoding="utf-8"))["config"]
    except (OSError, ValueError, KeyError, TypeError):
        raise UserError(f"{folder}: no readable config.json of a training run to resume") from None


def optimizer_step(model, optimizer, micro_batches, autocast, grad_clip: float, trained=None,
                   last_syncs: bool = False, scaler=None) -> tuple[torch.Tensor, torch.Tensor]:
    """One optimizer step over `micro_batches` ([(x, y)], gradients averaged): forward and backward through
    `trained` (the model, compiled or in DDP), clipping, the update. Returns the micro-batches' losses (n,) and the
    gradient norm, left on the device: reading them waits for the device, so the loop reads them only when it logs.
    With `last_syncs` (DDP), gradients are all-reduced on the last micro-batch only. With an enabled `scaler`
    (float16), the loss is scaled for the backward pass and the gradients unscaled before clipping; a step whose
    gradients overflowed is skipped."""
    scaling = scaler is not None and scaler.is_enabled()
    trained = model if trained is None else trained
    losses = []
    for number, (x, y) in enumerate(micro_batches):
        sync = not last_syncs or number == len(micro_batches) - 1
        with (contextlib.nullcontext() if sync else trained.no_sync()), autocast:
            _, loss = trained(x, y)
            share = loss / len(micro_batches)
            (scaler.scale(share) if scaling else share).backward()
        losses.append(loss.detach())
    if scaling:
        scaler.unscale_(optimizer)
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip or float("inf"))
    if scaling:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return torch.stack(losses), grad_norm


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


RESUME_SETTINGS = ("tokens", "steps", "time", "device")  # the [run] values a resume may change


def check_resumed_config(given: Config, saved: Config) -> None:
    """A config given with a resume must be the run's own: a change to it is refused, not ignored, so that no one
    takes the resumed run for the changed one (an exact resume replays the saved config)."""
    given, saved = to_dict(given), to_dict(saved)
    if given["model"]["vocab_size"] == 0:  # taken from the data, as the run took it
        given["model"]["vocab_size"] = saved["model"]["vocab_size"]
    changed = [f"{section}.{key} {saved[section][key]!r} -> {value!r}" for section, values in given.items()
               for key, value in values.items()
               if value != saved[section][key] and not (section == "run" and key in RESUME_SETTINGS)]
    if changed:
        raise UserError(f"--resume continues the run with its own config, which this command changes: "
                        f"{', '.join(changed)} (a resume changes only --tokens, --steps, --time and --device)")


def train(config: Config | None, out: Path, resume: bool = False, pause_at: int = 0, progress: bool = True,
          run_settings: dict | None = None) -> dict:
    """Train the run in `out` with `config`, or resume it with its saved config (`config`, if
    given, must be that one: check_resumed_config); `run_settings` ({"tokens", "steps", "time",
    "device"}) replace those [run] values, the saved ones too on resume (a budget can be
    extended, a run moved to a device)."""
    out = Path(out)
    writer = int(os.environ.get("RANK", 0)) == 0  # under torchrun, rank 0 writes (and checks where)
    checkpoint = None
    if resume:
        if writer:
            check_writable(out)
        def accept(folder: Path) -> None:  # before the run's files are repaired: a refused resume writes nothing
            if config is not None:
                check_resumed_config(config, from_dict(Config, read_saved_config(folder)))

        checkpoint = load_checkpoint(out, repair=writer, accept=accept)
        config = from_dict(Config, read_saved_config(checkpoint[0]))
    elif writer and (checkpoint_folders(out) or RunFolder(out).config_path.exists()):
        raise UserError(f"{out} already holds a run; use --resume to continue it, or another --out")
    elif writer and RunFolder(out).info_path.exists():
        raise UserError(f"{out} holds a run stopped before its first checkpoint; remove it or use another --out")
    elif writer:
        check_output(out, new=True)
    for key, value in (run_settings or {}).items():
        setattr(config.run, key, value)
    config.validate()
    device = pick_device(config.run.device, int(os.environ.get("LOCAL_RANK", 0)))
    ddp = setup_distributed(device.type)
    try:
        return run_loop(setup(config, RunFolder(out), checkpoint, device, ddp), pause_at, progress)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def setup(config: Config, run: RunFolder, checkpoint: tuple[Path, dict] | None, device, ddp: Distributed) -> Session:
    """The session of a new run (run.json and an empty metrics.jsonl written), or of a run
    resumed from `checkpoint` (weights, optimizer, sampler, RNG and progress restored)."""
    data, train_tokens, val_tokens = load_data(config)
    torch.manual_seed(config.run.seed)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    use_tf32(device)
    model = build_model(config.model).to(device)
    optimizer = make_optimizer(model, config.optim, device.type)
    block, micro = config.model.block_size, config.optim.micro_batch
    accumulation = accumulation_steps(config, ddp.world)
    step_tokens = accumulation * micro * block * ddp.world
    if step_tokens != config.optim.batch_tokens and ddp.main:
        processes = f" x {ddp.world} processes" if ddp.world > 1 else ""
        warn(f"optim.batch_tokens {config.optim.batch_tokens:,} is not a whole number of micro-batches ({micro} x "
             f"{block} tokens{processes}): a step takes {step_tokens:,} tokens")
    steps = total_steps(config, step_tokens)
    sampler = WindowSampler(train_tokens, block, config.run.seed)
    val_starts = evaluation_starts(len(val_tokens), block, config.run.eval_windows)
    progress = Progress()
    scaler = grad_scaler(device, config.run.dtype)
    if checkpoint is not None:
        folder, state = checkpoint
        restore_weights(model, RunFolder(folder).weights)
        optimizer.load_state_dict(state["optimizer"])
        sampler.load_state_dict(state["sampler"])
        if state.get("scaler"):  # a disabled scaler (not float16) saves an empty state
            scaler.load_state_dict(state["scaler"])
        torch.set_rng_state(state["rng_cpu"])
        if device.type == "cuda" and state["rng_cuda"]:
            torch.cuda.set_rng_state_all(state["rng_cuda"])
        progress = Progress(**{f.name: state[f.name] for f in fields(Progress)})
    elif ddp.main:
        run.path.mkdir(parents=True, exist_ok=True)
        if data.tokenizer_path.exists():
            shutil.copyfile(data.tokenizer_path, run.tokenizer_path)
        run.write_info({
            "config": to_dict(config), "data_fingerprint": data.meta.get("fingerprint"), "git_commit": git_commit(),
            "versions": versions(), "device": str(device), "dtype": resolve_dtype(device, config.run.dtype),
            "world_size": ddp.world, "accumulation": accumulation, "step_tokens": step_tokens, "total_steps": steps,
            "parameters": model.num_params(), "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
        })
        run.metrics_path.write_text("")
    trained = torch.compile(model) if config.run.compile else model
    if ddp.world > 1:
        trained = torch.nn.parallel.DistributedDataParallel(
            trained, device_ids=[device.index] if device.type == "cuda" else None)
    if ddp.main and checkpoint is not None:
        run.keep_metrics_until(progress.step)
    return Session(config=config, run=run, device=device, ddp=ddp, data=data, train_tokens=train_tokens,
                   val_tokens=val_tokens, val_starts=val_starts, model=model, trained=trained, optimizer=optimizer,
                   sampler=sampler, autocast=autocast_context(device, config.run.dtype), scaler=scaler,
                   accumulation=accumulation,
                   step_tokens=step_tokens, steps=steps, progress=progress)


def micro_batches(session: Session) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """This process's micro-batches of the next step (each rank takes its own windows)."""
    micro, ddp, device = session.config.optim.micro_batch, session.ddp, session.device
    starts = session.sampler.step_starts(session.accumulation * ddp.world * micro)
    batches = []
    for m in range(session.accumulation):
        first = (m * ddp.world + ddp.rank) * micro
        x, y = windows(session.train_tokens, starts[first: first + micro], session.config.model.block_size)
        batches.append((x.to(device, non_blocking=True), y.to(device, non_blocking=True)))
    return batches


def step_record(session: Session, losses: torch.Tensor, grad_norm: torch.Tensor, lr: float) -> dict:
    """The step's metrics: reading the losses and the norm waits for the device."""
    return {"step": session.progress.step, "tokens": session.progress.tokens,
            "train_loss": sum(losses.tolist()) / session.accumulation, "lr": lr, "grad_norm": grad_norm.item()}


def log_step(session: Session, record: dict, rate: float, board) -> None:
    """Add speed and memory to a record; the main process writes it to metrics.jsonl (and TensorBoard)."""
    record.update(tokens_per_s=rate, peak_memory_bytes=peak_memory_bytes(session.device),
                  elapsed_s=session.progress.elapsed)
    peak = peak_flops(session.device)
    if peak:
        record["mfu"] = session.model.flops_per_token() * rate / (peak * session.ddp.world)
    if session.ddp.main:
        session.run.append_metrics(record)
        if board is not None:
            for key, value in record.items():
                board.add_scalar(key, value, record["step"])


def save_best(session: Session, val_loss: float) -> None:
    """best/: the model with the lowest validation loss so far."""
    session.progress.best_val = val_loss
    if session.ddp.main:
        with staged_folder(session.run.best) as staging:
            save_model(staging, session.model, {"config": to_dict(session.config), "step": session.progress.step,
                                                "val_loss": val_loss})


def save_state(session: Session) -> None:
    """A checkpoint of everything a resume needs (main process)."""
    state = {"optimizer": session.optimizer.state_dict(), "sampler": session.sampler.state_dict(),
             "scaler": session.scaler.state_dict(),
             "rng_cpu": torch.get_rng_state(),
             "rng_cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
             **asdict(session.progress)}
    save_checkpoint(session.run.path, session.model, state,
                    {"config": to_dict(session.config), "data_fingerprint": session.data.meta.get("fingerprint")})


def agreed(session: Session, stopping: bool) -> bool:
    """Under DDP every process must stop at the same step (any one's stop is everyone's) and,
    since a time budget's schedule reads the clock, take the same elapsed time (the slowest's)."""
    if session.ddp.world == 1:
        return stopping
    shared = torch.tensor([float(stopping), session.progress.elapsed], dtype=torch.float64, device=session.device)
    dist.all_reduce(shared, op=dist.ReduceOp.MAX)
    session.progress.elapsed = shared[1].item()
    return bool(shared[0].item())


def run_loop(session: Session, pause_at: int, show_progress: bool) -> dict:
    """Step until the budget, `pause_at`, the time limit or a signal; returns the last
    step's record with "stopped" (budget, pause-at, time, SIGINT or SIGTERM)."""
    config, progress = session.config, session.progress
    board = tensorboard_writer(session.run.path) if session.ddp.main else None
    budget = session.steps or math.inf  # a run with only a time budget has no step count
    target = min(budget, pause_at) if pause_at else budget
    in_seconds = not session.steps  # then the bar counts seconds, so its ETA is the budget's
    bar = tqdm(total=round(config.run.time) if in_seconds else target,
               initial=round(progress.elapsed) if in_seconds else progress.step, desc="train",
               unit=" s" if in_seconds else " steps", disable=None if show_progress and session.ddp.main else True)
    stop_reason = "pause-at" if target < budget else "budget"
    last = {"step": progress.step, "tokens": progress.tokens}  # if no step runs (resumed at its end)
    started = time.perf_counter() - progress.elapsed
    window_start, window_tokens, window_load = time.perf_counter(), 0, MachineLoad(session.device.type)
    session.model.train()
    with StopRequest() as stop:
        while progress.step < target:
            factor = schedule(progress.step, budget_spent(session), config.optim)
            session.optimizer.set_schedule(factor)
            losses, grad_norm = optimizer_step(session.model, session.optimizer, micro_batches(session),
                                               session.autocast, config.optim.grad_clip, session.trained,
                                               last_syncs=session.ddp.world > 1, scaler=session.scaler)
            progress.step += 1
            progress.tokens += session.step_tokens
            before, progress.elapsed = progress.elapsed, time.perf_counter() - started
            stopping = agreed(session, stop.signal is not None)
            out_of_time = bool(config.run.time) and progress.elapsed >= config.run.time
            window_tokens += session.step_tokens
            bar.update(progress.elapsed - before if in_seconds else 1)
            step, record = progress.step, None
            validate = step % config.run.eval_every == 0 or step == target or out_of_time
            if step % config.run.log_every == 0 or validate or step == 1:
                record = step_record(session, losses, grad_norm, config.optim.lr * factor)
                if validate:
                    record["val_loss"] = evaluate(session.model, session.val_tokens, session.val_starts,
                                                  config.model.block_size, config.optim.micro_batch, session.device,
                                                  session.autocast)
                rate = window_tokens / max(time.perf_counter() - window_start, 1e-9)
                load = window_load.lap()
                if load["others_cores"] is not None:  # others' CPU in the window (under DDP, the other ranks' too)
                    record["others_cores"], record["spare_cores"] = load["others_cores"], load["spare_cores"]
                log_step(session, record, rate, board)
                window_start, window_tokens = time.perf_counter(), 0
                bar.set_postfix(loss=f"{record['train_loss']:.3f}", tok_s=f"{rate:,.0f}")
            if out_of_time:
                stop_reason, stopping = "time", True
            last = record or (step_record(session, losses, grad_norm, config.optim.lr * factor) if stopping else last)
            if validate and record["val_loss"] < progress.best_val:
                save_best(session, record["val_loss"])
            if session.ddp.main and (stopping or step % config.run.checkpoint_every == 0 or step == target):
                save_state(session)
            if stopping:
                stop_reason = stop.signal or stop_reason
                break
    bar.close()
    if board is not None:
        board.close()
    if session.ddp.world > 1:
        dist.barrier()
    budget_reached = progress.step >= budget or (in_seconds and stop_reason == "time")
    last["stopped"] = "budget" if budget_reached else stop_reason
    return last


def tensorboard_writer(out: Path):
    """TensorBoard event files in `out/tensorboard`, when tensorboard is installed."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(str(out / "tensorboard"))
