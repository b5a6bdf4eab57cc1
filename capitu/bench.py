"""`capitu bench`: speed and memory of a model, training and generating.

Each measurement runs in a fresh subprocess, so that on CPU its peak resident memory (the
only peak the OS keeps) belongs to that task alone; on CUDA the peak is
`torch.cuda.max_memory_allocated`. Tokens are random: speed does not depend on them."""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass

import torch

from capitu.config import Config, from_dict, to_dict
from capitu.device import autocast_context, grad_scaler, peak_memory_bytes, pick_device, synchronize, use_tf32
from capitu.environment import MachineLoad, is_busy
from capitu.errors import UserError

SDPA_KERNELS = {  # the aten op scaled_dot_product_attention dispatched to -> its name
    "_scaled_dot_product_flash_attention_for_cpu": "flash (cpu)", "_scaled_dot_product_flash_attention": "flash",
    "_scaled_dot_product_efficient_attention": "memory-efficient", "_scaled_dot_product_cudnn_attention": "cudnn",
    "_scaled_dot_product_attention_math": "math"}


@dataclass
class BenchOptions:
    train_steps: int = 5  # timed optimizer steps (after three warm-up steps)
    prompt_length: int = 0  # 0: half the context
    new_tokens: int = 0  # 0: half the context
    batch_sizes: tuple[int, ...] = (1, 16)
    repeats: int = 3  # generation runs per batch size; the fastest counts
    device: str = "auto"
    compile: bool = True  # decode through the compiled step (decode.Decoder); False: eager


class TokenClock:
    """Marks the time of each new token (`generate`'s on_tokens) without stopping a GPU: CUDA
    events there, so the host queues the next step while the GPU runs this one (a sync per token
    would add the host's time to every step); the host's clock elsewhere."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.marks: list = []

    def __call__(self, token: torch.Tensor) -> None:
        if self.cuda:
            self.marks.append(torch.cuda.Event(enable_timing=True))
            self.marks[-1].record()
        else:
            self.marks.append(time.perf_counter())

    def span(self) -> float:
        """Seconds from the first mark to the last."""
        if self.cuda:
            self.marks[-1].synchronize()
            return self.marks[0].elapsed_time(self.marks[-1]) / 1e3
        return self.marks[-1] - self.marks[0]


def sdpa_kernel(call) -> str:
    """Which SDPA implementation `call()` ran, read from the profiler's op names."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
    with profile(activities=activities) as prof:
        call()
    names = {event.name.removeprefix("aten::") for event in prof.events()}
    found = [label for op, label in SDPA_KERNELS.items() if op in names]
    return ", ".join(found) or "none"


def training_step(config: Config, device: torch.device):
    """(model, autocast, step, step_tokens): `step()` is one trainer's optimizer step of the model on random tokens
    (speed does not depend on them), over as many micro-batches as the trainer accumulates in one process, so that
    the optimizer's share of the time is the trainer's; `step_tokens` the tokens it trains on."""
    from capitu.models import build_model
    from capitu.train.optim import make_optimizer
    from capitu.train.trainer import accumulation_steps, optimizer_step

    model = build_model(config.model).to(device).train()
    optimizer = make_optimizer(model, config.optim, device.type)
    autocast, scaler = autocast_context(device, config.run.dtype), grad_scaler(device, config.run.dtype)
    batch, block, accumulation = config.optim.micro_batch, config.model.block_size, accumulation_steps(config)
    generator = torch.Generator().manual_seed(0)

    def step():
        x = torch.randint(0, config.model.vocab_size, (accumulation, batch, block + 1), generator=generator).to(device)
        optimizer_step(model, optimizer, [(m[:, :-1], m[:, 1:]) for m in x], autocast, config.optim.grad_clip,
                       scaler=scaler)

    return model, autocast, step, accumulation * batch * block


def median_step_seconds(step, device: torch.device, steps: int) -> float:
    """The median seconds of `steps` calls of `step()`, each timed alone (the device waited for at both ends), so that
    a neighbour's burst spoils one, not the median."""
    seconds = []
    for _ in range(steps):
        synchronize(device)
        started = time.perf_counter()
        step()
        synchronize(device)
        seconds.append(time.perf_counter() - started)
    return statistics.median(seconds)


def measure_training(config: Config, device: torch.device, options: BenchOptions, kernel: bool = True) -> dict:
    """Training tokens/s of the trainer's own optimizer step, from the median of `options.train_steps` timed steps
    after warm-up steps, the peak memory, and (with `kernel`) the SDPA kernel the model's attention runs."""
    model, autocast, step, step_tokens = training_step(config, device)
    batch, block = config.optim.micro_batch, config.model.block_size
    for _ in range(3):  # warm-up: allocations, kernel selection, oneDNN's bf16 kernels built on first use
        step()
    result = {"train_tok_s": step_tokens / median_step_seconds(step, device, options.train_steps),
              "train_batch": [batch, block],
              "train_accumulation": step_tokens // (batch * block), "peak_train_bytes": peak_memory_bytes(device)}
    if kernel:
        with torch.no_grad(), autocast:
            result["sdpa_kernel_train"] = sdpa_kernel(
                lambda: model(torch.zeros(batch, block, dtype=torch.long, device=device)))
    return result


def generation_lengths(config: Config, options: BenchOptions) -> tuple[int, int]:
    """(prompt length, new tokens): by default half the context each, so the
    cache never shifts (a window model, which has no cache, uses the same lengths)."""
    window = config.model.block_size
    prompt_length = options.prompt_length or window // 2
    new_tokens = options.new_tokens or window - prompt_length
    if config.model.kind == "gpt" and prompt_length >= window - 1:
        raise UserError(f"a prompt of {prompt_length} tokens leaves no room for 2 new tokens in the "
                        f"{window}-token context (--prompt-length at most {window - 2})")
    if prompt_length < 1 or new_tokens < 2:
        raise UserError("bench needs a prompt of at least 1 token and at least 2 new tokens")
    if config.model.kind == "gpt" and prompt_length + new_tokens > window:
        raise UserError(f"prompt {prompt_length} + new tokens {new_tokens} exceed the context {window}")
    return prompt_length, new_tokens


@torch.no_grad()
def measure_generation(config: Config, weights: str | None, device: torch.device, options: BenchOptions) -> dict:
    from capitu.checkpoint import restore_weights
    from capitu.decode import make_decoder
    from capitu.generate import Sampling, for_generation, generate
    from capitu.models import build_model

    model = build_model(config.model)
    if weights:
        restore_weights(model, weights)
    model = for_generation(model, device)
    prompt_length, new_tokens = generation_lengths(config, options)
    result = {"prompt_length": prompt_length, "new_tokens": new_tokens, "prefill_tok_s": {}, "decode_tok_s": {},
              "compile_s": 0.0}
    generator = torch.Generator().manual_seed(0)
    for batch in options.batch_sizes:
        decoder = make_decoder(model, batch, options.compile)  # compiled once per batch size, not timed
        result.update(decode_path=decoder.path, decode_path_reason=decoder.reason)
        result["compile_s"] += decoder.compile_s
        prompt = torch.randint(0, config.model.vocab_size, (batch, prompt_length), generator=generator).to(device)
        prefill, decode = 0.0, 0.0
        for _ in range(options.repeats):
            synchronize(device)
            started = time.perf_counter()
            decoder.prefill(prompt, 0)
            synchronize(device)
            prefill = max(prefill, batch * prompt_length / (time.perf_counter() - started))
            clock = TokenClock(device)
            generate(decoder, prompt, new_tokens, Sampling(temperature=0), on_tokens=clock)
            # from the first new token (prefill done) to the last: decode steps only
            decode = max(decode, batch * (new_tokens - 1) / clock.span())
        result["prefill_tok_s"][str(batch)] = prefill
        result["decode_tok_s"][str(batch)] = decode
    if not result["decode_path_reason"]:
        del result["decode_path_reason"]
    value_bytes = torch.finfo(next(model.parameters()).dtype).bits // 8
    if config.model.kind == "gpt":
        decoder = make_decoder(model, 1, compile=False)
        prompt = torch.zeros(1, 1, dtype=torch.long, device=device)
        allocated, kernel = decoder.cache.bytes_per_token(), sdpa_kernel(lambda: decoder.prefill(prompt, 0))
    else:
        allocated, kernel = 0, "none (no attention)"
    result.update(peak_generate_bytes=peak_memory_bytes(device), sdpa_kernel_decode=kernel,
                  kv_bytes_per_token={"shapes": model.kv_bytes_per_token(value_bytes), "allocated": allocated,
                                      "value_bytes": value_bytes})
    return result


def worker() -> None:
    """Entry of the measuring subprocess: a JSON job on stdin, a JSON result on stdout."""
    job = json.loads(sys.stdin.read())
    config, options = from_dict(Config, job["config"]), BenchOptions(**job["options"])
    options.batch_sizes = tuple(options.batch_sizes)
    device = pick_device(options.device)
    use_tf32(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    start_bytes = peak_memory_bytes(device)
    try:
        with MachineLoad(device.type) as load:
            if job["task"] == "train":
                result = measure_training(config, device, options)
            else:
                result = measure_generation(config, job.get("weights"), device, options)
        result[f"{job['task']}_load"] = load.result
    except UserError as error:
        result = {"error": str(error)}
    result[f"{job['task']}_start_bytes"] = start_bytes
    result["device"] = torch.cuda.get_device_name(device) if device.type == "cuda" else str(device)
    print(json.dumps(result))


def run_worker(task: str, config: Config, weights: str | None, options: BenchOptions) -> dict:
    job = json.dumps({"task": task, "config": to_dict(config), "weights": weights, "options": asdict(options)})
    process = subprocess.run([sys.executable, "-c", "from capitu.bench import worker; worker()"],
                             input=job, capture_output=True, text=True)
    lines = process.stdout.strip().splitlines()
    if process.returncode != 0 or not lines:
        tail = (process.stderr.strip().splitlines() or ["no output"])[-1]
        raise UserError(f"the {task} benchmark failed: {tail}")
    result = json.loads(lines[-1])
    if "error" in result:
        raise UserError(result["error"])
    return result


def bench(config: Config, weights: str | None = None, options: BenchOptions | None = None) -> dict:
    """Training and generation measurements of the model `config` describes (with `weights`,
    a run's model.safetensors, when there is one)."""
    options = options or BenchOptions()
    if options.train_steps < 1 or options.repeats < 1 or not options.batch_sizes or min(options.batch_sizes) < 1:
        raise UserError("bench needs at least one training step, one repeat and positive batch sizes")
    config.model.validate()
    generation_lengths(config, options)
    training = run_worker("train", config, None, options)
    generation = run_worker("generate", config, weights, options)
    device = training.pop("device")
    generation.pop("device")
    return {"device": device, "model": to_dict(config.model), **training, **generation}


def config_of_run(content: dict) -> Config:
    """A run's config.json as a Config: its training settings (the defaults for a bare model
    folder, such as an import) and the model it holds."""
    config = from_dict(Config, content.get("config", {}))
    config.model = from_dict(type(config.model), content["model"])
    return config


def format_table(result: dict) -> str:
    def size(n):
        return f"{n / 2**20:,.1f} MiB"

    kv, micro = result["kv_bytes_per_token"], result["train_accumulation"]
    lines = [
        f"device {result['device']}; training batch {result['train_batch'][0]} x {result['train_batch'][1]}"
        f"{f', {micro} of them a step' if micro > 1 else ''}; "
        f"generation prompt {result['prompt_length']}, {result['new_tokens']} new tokens",
        f"{'training':<22} {result['train_tok_s']:>12,.0f} tok/s   peak {size(result['peak_train_bytes'])}"
        f" (at start {size(result['train_start_bytes'])})   SDPA {result['sdpa_kernel_train']}",
    ]
    for batch in result["prefill_tok_s"]:
        lines.append(f"{'prefill, batch ' + batch:<22} {result['prefill_tok_s'][batch]:>12,.0f} tok/s")
        lines.append(f"{'decode, batch ' + batch:<22} {result['decode_tok_s'][batch]:>12,.0f} tok/s")
    path = result["decode_path"]
    why = f"compiling took {result['compile_s']:.1f} s, not counted above" if path == "compiled" else None
    lines.append(f"{'decode path':<22} {path:>12}   " + (why or result["decode_path_reason"]))
    lines.append(f"{'generation peak':<22} {size(result['peak_generate_bytes']):>18}"
                 f" (at start {size(result['generate_start_bytes'])})   SDPA {result['sdpa_kernel_decode']}")
    lines.append(f"{'KV cache per token':<22} {kv['shapes']:>12,} B from shapes, {kv['allocated']:,} B allocated "
                 f"({kv['value_bytes']}-byte values)")
    lines.append(load_line(result))
    return "\n".join(lines)


def load_line(result: dict) -> str:
    """What the rest of the machine did while the timings ran, and whether that spoils them."""
    loads = {task: result.get(f"{task}_load") for task in ("train", "generate")}
    parts = [f"{task} {load['others_cores']:.2f} cores ({load['others']:.0%})" if load and load["others"] is not None
             else f"{task} load average {load['loadavg']:.1f}" if load and load["loadavg"] is not None
             else f"{task} unknown" for task, load in loads.items()]
    verdict = ("BUSY: other programs ran beside the timings; they are not results, measure again on a quiet machine"
               if any(is_busy(load) for load in loads.values()) else "quiet")
    return f"{'other programs':<22} {'; '.join(parts)}: {verdict}"
