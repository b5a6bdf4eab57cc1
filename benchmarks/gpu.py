"""capitu's CUDA paths, measured in one run on one GPU.

    python benchmarks/gpu.py [--data DIR] [--smoke-seconds 120] [--steps 20] [--out FILE]

1. Training tokens/s and MFU at the `gpt2` preset's shape (GPT-2 small: 12 layers, 768 wide,
   batch 16 x 1024, vocabulary 50,257), bf16 autocast, AdamW fused: capitu eager and
   compiled against HF transformers' GPT2LMHeadModel eager and compiled, same batches,
   interleaved rounds (median).
2. Decode tokens/s at batch 1 and 32 (128-token prompt, 256 new tokens, greedy, bf16
   weights): capitu's KV-cache loop, eager and compiled (the static-cache step, CUDA graphs),
   against HF `generate` with its static cache; the compiled tokens against the eager ones.
3. A smoke training of the `small` preset on a prepared data folder (--data) for
   --smoke-seconds with Muon: the run's loss must fall.

Prints a Markdown report (and writes it to --out): the card, versions, every figure.
"""

import argparse
import json
import math
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
import transformers

from capitu.config import load_config
from capitu.decode import static_decoder
from capitu.generate import Sampling, generate
from capitu.models import GPT
from capitu.train.trainer import PEAK_BF16_FLOPS, peak_flops, train

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--data", type=Path, help="a prepared data folder for the smoke training (skipped without)")
parser.add_argument("--smoke-seconds", type=float, default=120.0)
parser.add_argument("--steps", type=int, default=10, help="timed training steps per round")
parser.add_argument("--rounds", type=int, default=3)
parser.add_argument("--out", type=Path, help="also write the report here")
parser.add_argument("--preset", default="gpt2", help="the training shape (a dry run elsewhere: tiny)")
parser.add_argument("--smoke-preset", default="small")
parser.add_argument("--new-tokens", type=int, default=128)
parser.add_argument("--no-compile", action="store_true", help="skip the compiled contenders (a quick dry run)")
args = parser.parse_args()
device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
torch.backends.cuda.matmul.allow_tf32 = True
torch.backends.cudnn.allow_tf32 = True
card = torch.cuda.get_device_name(0) if device.type == "cuda" else "CPU (a dry run)"
lines = [f"# capitu on {card}", "",
         f"torch {torch.__version__}, transformers {transformers.__version__}, CUDA {torch.version.cuda}; "
         f"peak bf16 taken as {(peak_flops(device) or 0) / 1e12:.0f} TFLOP/s ({PEAK_BF16_FLOPS})", ""]


def say(text=""):
    print(text, flush=True)
    lines.append(text)


def hf_twin(config):
    return transformers.GPT2LMHeadModel(transformers.GPT2Config(
        vocab_size=config.vocab_size, n_positions=config.block_size, n_embd=config.n_embd, n_layer=config.n_layer,
        n_head=config.n_head, n_inner=config.hidden, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
        bos_token_id=0, eos_token_id=0))


# ---- 1. training throughput ---------------------------------------------------------------
config = load_config(args.preset, overrides=["model.vocab_size=50257"]).model
micro, block = 16, config.block_size
batches = [torch.randint(0, config.vocab_size, (micro, block + 1), device=device) for _ in range(args.steps)]


def synchronize():
    if device.type == "cuda":
        torch.cuda.synchronize()


def contender(name, model, loss_fn, compiled):
    model = model.to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16)
    forward = torch.compile(model) if compiled else model

    def steps(run_batches):
        synchronize()
        started = time.perf_counter()
        for batch in run_batches:
            with autocast:
                loss = loss_fn(forward, batch[:, :-1], batch[:, 1:])
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        synchronize()
        return time.perf_counter() - started

    started = time.perf_counter()
    steps(batches[:3])
    return {"name": name, "steps": steps, "setup_s": time.perf_counter() - started, "rates": [], "model": model}


def capitu_loss(model, x, y):
    return model(x, y)[1]


def hf_loss(model, x, y):
    logits = model(input_ids=x).logits
    return F.cross_entropy(logits.float().view(-1, logits.size(-1)), y.reshape(-1))


def attempt(name, build, loss_fn, compiled):
    """A contender, or None (said in the report) when it fails: one failure must not cost the run."""
    try:
        return contender(name, build(), loss_fn, compiled)
    except Exception as error:  # noqa: BLE001 (a benchmark reports every failure and goes on)
        say(f"{name}: FAILED: {type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}")
        return None


torch.manual_seed(0)
plan = [("HF eager", lambda: hf_twin(config), hf_loss, False), ("capitu eager", lambda: GPT(config), capitu_loss, False)]
if not args.no_compile:
    plan += [("HF compiled", lambda: hf_twin(config), hf_loss, True),
             ("capitu compiled", lambda: GPT(config), capitu_loss, True)]
contenders = [c for c in (attempt(*entry) for entry in plan) if c is not None]
for _ in range(args.rounds):
    for c in contenders:
        c["rates"].append(args.steps * micro * block / c["steps"](batches))
flops_per_token = GPT(config).flops_per_token()
peak = peak_flops(device)
reference = statistics.median(contenders[-2]["rates"])  # HF compiled (HF eager in a dry run)
say(f"## Training, gpt2 shape ({micro} x {block}, vocabulary {config.vocab_size:,}, bf16 autocast, fused AdamW)")
say("")
say(f"| contender | tokens/s (median of rounds) | range | MFU | vs {contenders[-2]['name']} | warm-up + compile s |")
say("|---|---|---|---|---|---|")
for c in contenders:
    median = statistics.median(c["rates"])
    mfu = f"{flops_per_token * median / peak:.1%}" if peak else "—"
    say(f"| {c['name']} | {median:,.0f} | {min(c['rates']):,.0f}-{max(c['rates']):,.0f} | {mfu} | "
        f"{median / reference:.2f}x | {c['setup_s']:.1f} |")
if device.type == "cuda":
    say(f"\npeak memory allocated: {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB")
capitu_model = next(c["model"] for c in contenders if c["name"] == "capitu eager")
hf_model = next(c["model"] for c in contenders if c["name"] == "HF eager")
del contenders

# ---- 2. decode -------------------------------------------------------------------------------
say(f"\n## Decode (128-token prompt, {args.new_tokens} new tokens, greedy, bf16 weights)\n")
say("| batch | capitu eager tok/s | capitu compiled (CUDA graphs) tok/s | compile s | HF generate (static cache) "
    "tok/s | compiled / HF | same tokens (compiled vs eager) |")
say("|---|---|---|---|---|---|---|")
capitu_model = capitu_model.eval().to(torch.bfloat16)
hf_model = hf_model.eval().to(torch.bfloat16)
prompt_length, new_tokens = 128, args.new_tokens
for batch in (1, 32):
    prompt = torch.randint(1, config.vocab_size, (batch, prompt_length), device=device)
    timings = {"eager": [], "compiled": [], "hf": []}
    outputs = {}
    compile_s = float("nan")
    for _ in range(2):
        for name in ("eager", "compiled"):
            synchronize()
            started = time.perf_counter()
            with torch.no_grad():
                outputs[name] = generate(capitu_model, prompt, new_tokens, Sampling(temperature=0),
                                         compile=name == "compiled")
            synchronize()
            timings[name].append(time.perf_counter() - started)
            if name == "compiled" and math.isnan(compile_s):
                compile_s = static_decoder(capitu_model, batch, config.block_size).compile_s
        started = time.perf_counter()
        with torch.no_grad():
            hf_model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=new_tokens,
                              min_new_tokens=new_tokens, do_sample=False, cache_implementation="static",
                              pad_token_id=0)
        synchronize()
        timings["hf"].append(time.perf_counter() - started)
    eager, compiled, theirs = (batch * new_tokens / min(timings[k]) for k in ("eager", "compiled", "hf"))
    same = (outputs["eager"] == outputs["compiled"]).float().mean().item()
    say(f"| {batch} | {eager:,.0f} | {compiled:,.0f} | {compile_s:.1f} | {theirs:,.0f} | {compiled / theirs:.2f}x | "
        f"{same:.1%} |")
del capitu_model, hf_model

# ---- 3. smoke training --------------------------------------------------------------------
if args.data:
    say(f"\n## Smoke training: `{args.smoke_preset}` preset, Muon, {args.smoke_seconds:.0f} s on {args.data}\n")
    config = load_config(args.smoke_preset, overrides=[f"data.path={json.dumps(str(args.data.resolve()))}", "optim.name=muon",
                                             "optim.muon_lr=0.01", "run.eval_every=50", "run.log_every=10",
                                             "run.checkpoint_every=100000", "run.tokens=1000000000"])
    config.run.time = args.smoke_seconds
    with tempfile.TemporaryDirectory() as folder:
        last = train(config, Path(folder) / "run", progress=False)
        records = [json.loads(line) for line in (Path(folder) / "run" / "metrics.jsonl").read_text().splitlines()]
    first, final = records[0], records[-1]
    validations = [f"{r['val_loss']:.3f} (step {r['step']})" for r in records if "val_loss" in r]
    timed = [r for r in records if "tokens_per_s" in r][-1]
    say(f"steps {final['step']}, tokens {final['tokens']:,}, stopped: {last.get('stopped')}; train loss "
        f"{first['train_loss']:.3f} -> {final['train_loss']:.3f}; validation {', '.join(validations) or 'none'}; "
        f"{timed['tokens_per_s']:,.0f} tokens/s, MFU {timed.get('mfu', 0):.1%}, peak "
        f"{timed['peak_memory_bytes'] / 2**30:.1f} GiB")
    say(f"loss falls by more than 1 nat: {final['train_loss'] < first['train_loss'] - 1.0}")
if args.out:
    args.out.write_text("\n".join(lines) + "\n", encoding="utf-8")
