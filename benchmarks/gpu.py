"""capitu's CUDA paths, measured in one run on one GPU.

    python benchmarks/gpu.py [--data DIR] [--smoke-seconds 75] [--only 1,2,3,4,5] [--out FILE]

Sections, most needed first (each one that fails is reported and the run goes on; the report
is rewritten after every line, so a run cut short keeps what it measured):

1. Parity on CUDA, fp32 (TF32 off): greedy tokens of the compiled decode step (CUDA graphs)
   against the eager loop, for every position encoding and MHA/GQA/MQA at the `tiny` shape,
   with a prompt that fills the context, so the context-full shift runs too.
2. Decode tokens/s at the `gpt2` shape (GPT-2 small, vocabulary 50,257, bf16 weights), batch
   1 and 32, 128-token prompt, greedy: capitu eager and compiled against HF `generate` with
   its static cache, best of two interleaved rounds, over the whole call and over the decode
   steps alone; compile time apart; then the compiled step alone, two ways.
3. Training tokens/s and MFU at the `gpt2` shape (batch 16 x 1024, bf16 autocast, fused
   AdamW): capitu eager and compiled against HF GPT2LMHeadModel eager and compiled, the same
   batches, interleaved rounds (median), and capitu compiled at GPT-2's vocabulary padded to
   50,304 (nanoGPT's), and with its logits materialised before the cross-entropy (its fused
   loss left out), both ways; then where a compiled step's GPU time goes. capitu's compiled
   contenders are built first, and each one's first pass is written as it ends, so that a run
   cut short in this section keeps them.
4. A smoke training through the command line under torchrun (NCCL, world 1) with
   run.compile on: `small` preset, Muon, --smoke-seconds on a prepared folder (--data);
   the loss must fall.
5. `capitu bench` at the same shape, compiled and `--no-compile`: the JSON fields a user sees.
6. float16 forced on a bf16 card (what a T4 or V100 gets from run.dtype = "auto"): the same
   run (`--fp16-steps` steps of the `--parity-preset` shape, the same seed and batches) in
   float32, bfloat16 and float16 with its gradient scaler, on a prepared folder (--data): the
   losses side by side, the scaler's last scale and the steps it skipped.

MFU is given against the datasheet's dense bf16 rate and against a bf16 matrix product
measured at the start of the run.
"""

import argparse
import json
import math
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch
import transformers
from twins import LogitsThenLoss, hf_twin

from capitu.config import load_config
from capitu.decode import Decoder, make_decoder, reduction_linears_pay
from capitu.device import peak_flops, synchronize, use_tf32
from capitu.generate import Sampling, generate
from capitu.models import GPT
from capitu.train.trainer import optimizer_step

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--data", type=Path, help="a prepared data folder for the smoke training (skipped without)")
parser.add_argument("--smoke-seconds", type=float, default=75.0)
parser.add_argument("--steps", type=int, default=10, help="timed training steps per round")
parser.add_argument("--rounds", type=int, default=3)
parser.add_argument("--out", type=Path, help="also write the report here (rewritten after every line)")
parser.add_argument("--preset", default="gpt2", help="the training and decode shape (a dry run elsewhere: tiny)")
parser.add_argument("--parity-preset", default="tiny")
parser.add_argument("--smoke-preset", default="small")
parser.add_argument("--new-tokens", type=int, default=128)
parser.add_argument("--no-compile", action="store_true", help="skip the compiled contenders (a quick dry run)")
parser.add_argument("--only", default="1,2,3,4,5,6", help="the sections to run, in this order, e.g. 6,3 (default all)")
parser.add_argument("--fp16-steps", type=int, default=300, help="training steps of each dtype in section 6")
parser.add_argument("--fp16-set", action="append", default=[], help="more --set overrides for section 6 (a dry run)")
args = parser.parse_args()
device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
card = torch.cuda.get_device_name(0) if device.type == "cuda" else "CPU (a dry run)"
began = time.perf_counter()
lines = []


def say(text=""):
    print(text, flush=True)
    lines.append(text)
    if args.out:
        args.out.write_text("\n".join(lines) + "\n", encoding="utf-8")


def failure(error: Exception) -> str:
    """An exception as one line of the report."""
    return f"FAILED: {type(error).__name__}: {str(error).splitlines()[0][:200] if str(error) else ''}"


def run_command(command: list[str]) -> str:
    """A capitu command's standard output; its last error line in the report if it fails."""
    finished = subprocess.run(command, capture_output=True, text=True)
    if finished.returncode != 0:
        raise RuntimeError(f"exit {finished.returncode}: {finished.stderr.strip().splitlines()[-1:]}")
    return finished.stdout


def section(title, body):
    """Run one section; a failure is reported (its traceback to stderr) and the run goes on."""
    say(f"\n## {title}\n")
    started = time.perf_counter()
    try:
        body()
    except Exception as error:  # noqa: BLE001 (a benchmark reports every failure and goes on)
        traceback.print_exc()
        say(failure(error))
    say(f"\n({time.perf_counter() - started:.0f} s; {time.perf_counter() - began:.0f} s since the start)")


def matmul_rate() -> float:
    """bf16 FLOP/s of a large matrix product on random data, the mean of 10 after 3 warm-ups."""
    n = 8192 if device.type == "cuda" else 512
    a, b = (torch.randn(n, n, device=device, dtype=torch.bfloat16) for _ in range(2))
    for _ in range(3):
        a @ b
    synchronize(device)
    started = time.perf_counter()
    for _ in range(10):
        a @ b
    synchronize(device)
    return 10 * 2 * n**3 / (time.perf_counter() - started)


use_tf32(device)
datasheet, measured = peak_flops(device), matmul_rate()
say(f"# capitu on {card}")
say("")
say(f"torch {torch.__version__}, transformers {transformers.__version__}, CUDA {torch.version.cuda}, "
    f"Python {sys.version.split()[0]}. Dense bf16 rate: datasheet {(datasheet or 0) / 1e12:.0f} TFLOP/s, "
    f"measured here {measured / 1e12:.0f} TFLOP/s (8192^3 product, random data).")


def variant_config(preset, overrides):
    return load_config(preset, overrides=overrides).model


# ---- 1. parity -----------------------------------------------------------------------------
VARIANTS = [("learned, MHA", []), ("sinusoidal, MHA", ["model.pos=sinusoidal"]),
            ("rope, GQA 2 groups", ["model.pos=rope", "model.n_kv_head=2"]),
            ("alibi, MQA", ["model.pos=alibi", "model.n_kv_head=1"]), ("none, MHA", ["model.pos=none"])]


def parity():
    use_tf32(device, on=False)
    say("fp32, TF32 off; batch 2; a prompt 8 tokens short of the context and 24 new tokens, so the "
        "context-full shift runs; greedy.\n")
    say("| variant | same tokens (compiled vs eager) | decode path | compile s |")
    say("|---|---|---|---|")
    for name, overrides in VARIANTS:
        config = variant_config(args.parity_preset, ["model.vocab_size=4096", *overrides])
        torch.manual_seed(0)
        model = GPT(config).to(device).eval()
        prompt = torch.randint(0, config.vocab_size, (2, config.block_size - 8), device=device)
        eager = generate(make_decoder(model, 2, compile=False), prompt, 24, Sampling(temperature=0))
        decoder = make_decoder(model, 2, compile=not args.no_compile)
        compiled = generate(decoder, prompt, 24, Sampling(temperature=0))
        same = (eager == compiled).all(dim=0)[prompt.shape[1]:].float().mean().item()
        say(f"| {name} | {same:.1%} | {decoder.path} | {decoder.compile_s:.1f} |")
    use_tf32(device)


# ---- 2. decode -----------------------------------------------------------------------------
config = variant_config(args.preset, ["model.vocab_size=50257"])


def decode():
    torch.manual_seed(0)
    capitu_model = GPT(config).to(device).eval().to(torch.bfloat16)
    hf_model = hf_twin(config).to(device).eval().to(torch.bfloat16)
    prompt_length, new_tokens = 128, args.new_tokens
    say(f"{prompt_length}-token prompt, {new_tokens} new tokens, greedy, bf16 weights, best of 2 rounds; compile "
        "time apart. tokens/s two ways: over the whole call (prefill included), and over the decode steps alone: "
        f"{new_tokens - 1} tokens over the time of the call less that of a call for 1 new token (the prefill and "
        "the first token), as `capitu bench` counts decode, with no sync per token.\n")
    say("| batch | capitu eager | capitu compiled | HF generate, static cache | compiled / HF | compiled / eager | "
        "decode steps: capitu compiled | decode steps: HF | decode path | compile s | same tokens |")
    say("|---|---|---|---|---|---|---|---|---|---|---|")
    for batch in (1, 32):
        prompt = torch.randint(1, config.vocab_size, (batch, prompt_length), device=device)
        eager, decoder = make_decoder(capitu_model, batch, compile=False), make_decoder(capitu_model, batch)
        contenders = {
            "eager": lambda n: generate(eager, prompt, n, Sampling(temperature=0)),
            "compiled": lambda n: generate(decoder, prompt, n, Sampling(temperature=0)),
            "hf": lambda n: hf_model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=n,
                                              min_new_tokens=n, do_sample=False, cache_implementation="static",
                                              pad_token_id=0),
        }
        best = {(name, n): math.inf for name in contenders for n in (1, new_tokens)}
        outputs = {}
        for _ in range(2):
            for name, run in contenders.items():
                for n in (1, new_tokens):
                    synchronize(device)
                    started = time.perf_counter()
                    try:
                        with torch.no_grad():
                            outputs[name] = run(n)
                    except Exception as error:  # noqa: BLE001 (HF failing must not cost capitu's figures)
                        if name != "hf":
                            raise
                        say(f"HF generate {failure(error)}\n")
                        started = -math.inf
                    synchronize(device)
                    best[name, n] = min(best[name, n], time.perf_counter() - started)
        whole = {name: batch * new_tokens / best[name, new_tokens] for name in contenders}
        steps = {name: batch * (new_tokens - 1) / (best[name, new_tokens] - best[name, 1]) for name in contenders}
        same = (outputs["eager"] == outputs["compiled"]).float().mean().item()
        say(f"| {batch} | {whole['eager']:,.0f} | {whole['compiled']:,.0f} | {whole['hf']:,.0f} | "
            f"{whole['compiled'] / whole['hf'] if whole['hf'] else math.nan:.2f}x | "
            f"{whole['compiled'] / whole['eager']:.2f}x | {steps['compiled']:,.0f} | {steps['hf']:,.0f} | "
            f"{decoder.path} | {decoder.compile_s:.1f} | {same:.1%} |")
    if not args.no_compile:
        step_table(capitu_model, prompt_length)


def step_table(model, start):
    """The compiled step alone, with the library's linear layers and with ReductionLinear: 256
    steps queued then one sync (the GPU's time a step), and the host's time to queue one."""
    say("\nThe compiled step alone (256 steps, one sync at the end):\n")
    say("| linear layers | batch | compile s | ms a step | ms to queue a step | default here |")
    say("|---|---|---|---|---|---|")
    for batch in (1, 4):
        tokens = torch.randint(1, config.vocab_size, (batch, 1), device=device)
        for reduction in (False, True):
            decoder = Decoder(model, batch, reduction=reduction)
            with torch.no_grad():
                for i in range(8):  # CUDA graphs: warm-up, then recording
                    decoder.step(tokens, start + i)
                synchronize(device)
                started = time.perf_counter()
                for i in range(256):
                    decoder.step(tokens, (start + i) % config.block_size)
                queued = time.perf_counter() - started
                synchronize(device)
                total = time.perf_counter() - started
            default = reduction == reduction_linears_pay(device, batch)
            say(f"| {'ReductionLinear' if reduction else 'the library (nn.Linear)'} | {batch} | "
                f"{decoder.compile_s:.1f} | {total / 256 * 1e3:.3f} | {queued / 256 * 1e3:.3f} | "
                f"{'yes' if default else ''} |")


# ---- 3. training ---------------------------------------------------------------------------
def contender(name, model, compiled, batches):
    """`model` answers (x, y) with (None, loss); each step is the trainer's own."""
    model = model.to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type == "cuda")
    forward = torch.compile(model) if compiled else model
    autocast = torch.autocast(device.type, dtype=torch.bfloat16)

    def step(batch):
        optimizer_step(model, optimizer, [(batch[:, :-1], batch[:, 1:])], autocast, 1.0, trained=forward)

    def steps(run_batches):
        synchronize(device)
        started = time.perf_counter()
        for batch in run_batches:
            step(batch)
        synchronize(device)
        return time.perf_counter() - started

    started = time.perf_counter()
    steps(batches[:3])
    return {"name": name, "steps": steps, "step": step, "setup_s": time.perf_counter() - started, "rates": []}


def kernel_profile(c, batches, step_s):
    """Where three steps' GPU time goes: the kernels by self time, grouped, against the time of
    an unprofiled step (`step_s`; the profiler slows the host, not the kernels)."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as trace:
        for batch in batches[:3]:
            c["step"](batch)
        synchronize(device)

    def self_us(event):
        return getattr(event, "self_device_time_total", None) or getattr(event, "self_cuda_time_total", 0)

    events = trace.key_averages()
    kernels = [e for e in events if e.device_type.name == "CUDA"] or \
        [e for e in events if self_us(e) > 0 and e.cpu_time_total == 0]  # kernels have no CPU time
    groups = {"attention": ("flash", "fmha", "attention", "sdpa"),  # before matrix products: names share sm90_
              "matrix products": ("gemm", "nvjet", "cutlass", "sm90_", "xmma", "cublas"),
              "fused by inductor (triton)": ("triton",), "optimizer": ("adam", "multi_tensor", "foreach")}
    totals = dict.fromkeys([*groups, "other"], 0.0)
    for event in kernels:
        group = next((g for g, keys in groups.items() if any(k in event.key.lower() for k in keys)), "other")
        totals[group] += self_us(event)
    busy = sum(totals.values()) / 1e6 / 3
    say(f"\n{c['name']}, 3 steps profiled: {busy * 1e3:.1f} ms of kernels a step, against {step_s * 1e3:.1f} ms "
        f"a step unprofiled (the median round): the GPU is busy {busy / step_s:.0%} of a step.\n")
    say("| kernels | ms a step | share of kernel time |")
    say("|---|---|---|")
    for group, us in totals.items():
        say(f"| {group} | {us / 1e3 / 3:.2f} | {us / 1e6 / 3 / max(busy, 1e-9):.0%} |")
    say("\n| top kernels | ms | calls |")
    say("|---|---|---|")
    for event in sorted(kernels, key=self_us, reverse=True)[:10]:
        say(f"| `{event.key[:90]}` | {self_us(event) / 1e3:.1f} | {event.count} |")


def training():
    micro, block = 16, config.block_size
    batches = [torch.randint(0, config.vocab_size, (micro, block + 1), device=device) for _ in range(args.steps)]
    # nanoGPT's padding of GPT-2's vocabulary to a multiple of 64: 50,257 columns of logits are
    # not 16-byte aligned in bf16, which keeps cuBLAS off its Hopper kernels for the output layer
    padded = variant_config(args.preset, ["model.vocab_size=50304"])
    torch.manual_seed(0)
    # capitu's compiled contenders first: a session cut short keeps the first passes of those it reached
    plan = []
    if not args.no_compile:
        plan += [("capitu compiled", lambda: GPT(config), True, config),
                 ("capitu compiled, vocabulary padded to 50,304", lambda: GPT(padded), True, padded),
                 # the profile's other lead: the fused loss's fp32 passes over the logits; here inductor fuses
                 # the cross-entropy of materialised bf16 logits instead
                 ("capitu compiled, logits then cross-entropy", lambda: LogitsThenLoss(GPT(config)), True, config),
                 ("capitu compiled, padded, logits then cross-entropy", lambda: LogitsThenLoss(GPT(padded)), True,
                  padded),
                 ("HF compiled", lambda: LogitsThenLoss(hf_twin(config), hf=True), True, config)]
    plan += [("capitu eager", lambda: GPT(config), False, config),
             ("HF eager", lambda: LogitsThenLoss(hf_twin(config), hf=True), False, config)]

    def rate(c):  # tokens/s of one pass over the batches
        return args.steps * micro * block / c["steps"](batches)

    def preferred(*names):  # the first of these contenders that ran, else the first that did
        return next((c for name in names for c in contenders if c["name"] == name), contenders[0])

    say(f"First pass of each contender as it is built ({args.steps} steps, after warm-up and compiling), "
        "then the interleaved rounds:\n")
    contenders = []
    for name, build, compiled, shape in plan:
        try:
            contenders.append(contender(name, build(), compiled, batches))
            contenders[-1]["flops"] = GPT(shape).flops_per_token()  # HF's model: the same shape as capitu's
            first = rate(contenders[-1])
            mfu = f"{contenders[-1]['flops'] * first / datasheet:.1%}" if datasheet else "—"
            say(f"- {name}: {first:,.0f} tokens/s, MFU {mfu} (datasheet); warm-up + compile "
                f"{contenders[-1]['setup_s']:.1f} s")
        except Exception as error:  # noqa: BLE001 (one contender failing must not cost the others)
            traceback.print_exc()
            say(f"- {name}: {failure(error)}")
    say()
    for _ in range(args.rounds):
        for c in contenders:
            c["rates"].append(rate(c))
    reference = preferred("HF compiled", "HF eager")
    say(f"{micro} x {block} tokens a step, vocabulary {config.vocab_size:,}, bf16 autocast, fused AdamW, "
        f"gradient clipping; {args.rounds} rounds of {args.steps} steps, interleaved; "
        f"{GPT(config).flops_per_token() / 1e9:.3f} GFLOP a token (capitu's count, as nanoGPT's; the padded model's "
        "count includes its padding, as nanoGPT's does).\n")
    say(f"| contender | tokens/s (median) | range | MFU (datasheet) | MFU (measured peak) | "
        f"vs {reference['name']} | warm-up + compile s |")
    say("|---|---|---|---|---|---|---|")
    reference_rate = statistics.median(reference["rates"])
    for c in contenders:
        median = statistics.median(c["rates"])
        mfu = f"{c['flops'] * median / datasheet:.1%}" if datasheet else "—"
        say(f"| {c['name']} | {median:,.0f} | {min(c['rates']):,.0f}-{max(c['rates']):,.0f} | {mfu} | "
            f"{c['flops'] * median / measured:.1%} | {median / reference_rate:.2f}x | {c['setup_s']:.1f} |")
    if device.type == "cuda":
        say(f"\npeak memory allocated: {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB")
    profiled = preferred("capitu compiled", "capitu eager")
    kernel_profile(profiled, batches, micro * block / statistics.median(profiled["rates"]))


# ---- 4. smoke training ---------------------------------------------------------------------
def smoke():
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "run"
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1",
                   "-m", "capitu", "train", "--data", str(args.data), "--preset", args.smoke_preset, "--out", str(out),
                   "--time", str(args.smoke_seconds), "--quiet", "--set", "optim.name=muon",
                   "--set", "optim.muon_lr=0.01", "--set", "run.eval_every=50", "--set", "run.log_every=10",
                   "--set", "run.checkpoint_every=100000", "--set", "run.tokens=1000000000",
                   "--set", f"run.compile={'false' if args.no_compile else 'true'}"]
        say(f"`{' '.join(command[2:])}` (run.compile on, NCCL world 1; the DDP wrapper itself needs 2 GPUs)\n")
        started = time.perf_counter()
        run_command(command)
        records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    first, final = records[0], records[-1]
    validations = [f"{r['val_loss']:.3f} (step {r['step']})" for r in records if "val_loss" in r]
    timed = [r for r in records if "tokens_per_s" in r][-1]
    say(f"{time.perf_counter() - started:.0f} s in all; steps {final['step']}, tokens {final['tokens']:,}; train loss "
        f"{first['train_loss']:.3f} -> {final['train_loss']:.3f}; validation {', '.join(validations) or 'none'}; "
        f"{timed['tokens_per_s']:,.0f} tokens/s, MFU {timed.get('mfu', 0):.1%}, peak "
        f"{timed['peak_memory_bytes'] / 2**30:.1f} GiB")
    say(f"\nloss falls by more than 1 nat: {final['train_loss'] < first['train_loss'] - 1.0}")


# ---- 5. the command line's bench -----------------------------------------------------------
def cli_bench():
    """`capitu bench` at the gpt2 shape, compiled and --no-compile: the contract's fields on CUDA."""
    say("| command | decode path | compile s | prefill tok/s (batch 1, 16) | decode tok/s (batch 1, 16) | "
        "train tok/s |")
    say("|---|---|---|---|---|---|")
    for flag in ("--compile", "--no-compile"):
        command = [sys.executable, "-m", "capitu", "bench", "--preset", args.preset, "--set", "model.vocab_size=50257",
                   "--device", device.type, "--prompt-length", "128", "--new-tokens", str(args.new_tokens), flag,
                   "--json"]
        result = json.loads(run_command(command))
        rates = {key: ", ".join(f"{v:,.0f}" for v in result[key].values()) for key in ("prefill_tok_s", "decode_tok_s")}
        say(f"| `capitu bench --preset {args.preset} {flag}` | {result['decode_path']} "
            f"{result.get('decode_path_reason', '')} | {result['compile_s']:.1f} | {rates['prefill_tok_s']} | "
            f"{rates['decode_tok_s']} | {result.get('train_tok_s', 0):,.0f} |")


# ---- 6. float16 with its gradient scaler, forced on a bf16 card ------------------------------
def float16_check():
    say("| run.dtype | train loss, first -> last | last validation loss | tokens/s | scaler scale at the end |")
    say("|---|---|---|---|---|")
    for dtype in ("float32", "bfloat16", "float16"):
        with tempfile.TemporaryDirectory() as folder:
            out = Path(folder) / "run"
            overrides = [f"run.dtype={dtype}", f"run.steps={args.fp16_steps}", "run.eval_every=50",
                         "run.log_every=10", f"run.checkpoint_every={args.fp16_steps}", *args.fp16_set]
            run_command([sys.executable, "-m", "capitu", "train", "--data", str(args.data), "--preset",
                         args.parity_preset, "--out", str(out), "--quiet", "--device", device.type,
                         *[item for override in overrides for item in ("--set", override)]])
            records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
            state = torch.load(next((out / "checkpoints").iterdir()) / "train_state.pt", weights_only=True)
        losses = [r["train_loss"] for r in records if "train_loss" in r]
        validation = [r["val_loss"] for r in records if "val_loss" in r]
        rate = statistics.median(r["tokens_per_s"] for r in records if "tokens_per_s" in r)
        scale = state.get("scaler", {}).get("scale")
        say(f"| {dtype} | {losses[0]:.3f} -> {losses[-1]:.3f} | {validation[-1]:.4f} | {rate:,.0f} | "
            f"{'—' if scale is None else f'{scale:g}'} |")


sections = [(f"1. Parity of the compiled decode step ({args.parity_preset} shape)", parity),
            (f"2. Decode ({args.preset} shape)", decode), (f"3. Training ({args.preset} shape)", training),
            (f"4. Smoke training: `{args.smoke_preset}`, torchrun, compiled, Muon, {args.smoke_seconds:.0f} s", smoke),
            (f"5. `capitu bench` ({args.preset} shape), compiled and not", cli_bench),
            (f"6. float16 with loss scaling against bf16 and fp32 ({args.parity_preset} shape)", float16_check)]
for number in args.only.split(","):  # in the order given: a session short of time names the most needed first
    title, body = sections[int(number) - 1]
    if body not in (smoke, float16_check) or args.data:
        section(title, body)
