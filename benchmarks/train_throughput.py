"""Training tokens/s of capitu's GPT against HF transformers' GPT2LMHeadModel, same shapes,
same loop (AdamW, fp32 on CPU, bf16 autocast on CUDA, the same batches), in one run.

    python benchmarks/train_throughput.py [--presets tiny small] [--steps 8] [--rounds 3]

Needs `transformers` (the test extra). Prints tokens/s of each and the ratio ours/HF.
"""

import argparse
import contextlib
import time

import torch
import torch.nn.functional as F
import transformers

from capitu.config import load_config
from capitu.models import GPT

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--presets", nargs="+", default=["tiny", "small"])
parser.add_argument("--vocab-size", type=int, default=16384)
parser.add_argument("--micro-batch", type=int, default=0, help="sequences per step (default: the preset's)")
parser.add_argument("--steps", type=int, default=8, help="timed steps per round")
parser.add_argument("--rounds", type=int, default=3, help="alternating rounds; the best of each is kept")
args = parser.parse_args()
device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext()


def hf_twin(config):
    hf_config = transformers.GPT2Config(
        vocab_size=config.vocab_size, n_positions=config.block_size, n_embd=config.n_embd, n_layer=config.n_layer,
        n_head=config.n_head, n_inner=config.hidden, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
        bos_token_id=0, eos_token_id=0,
    )
    return transformers.GPT2LMHeadModel(hf_config)


def ours_loss(model, x, y):
    return model(x, y)[1]


def hf_loss(model, x, y):
    logits = model(input_ids=x).logits
    return F.cross_entropy(logits.float().view(-1, logits.size(-1)), y.reshape(-1))


def run_steps(model, loss_fn, optimizer, batches) -> float:
    """Seconds to train on `batches`, one optimizer step each."""
    start = time.perf_counter()
    for x, y in batches:
        with autocast:
            loss_fn(model, x, y).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def tokens_per_second(model, loss_fn, batches):
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    run_steps(model, loss_fn, optimizer, batches[:2])  # warm-up
    return sum(x.numel() for x, _ in batches[2:]) / run_steps(model, loss_fn, optimizer, batches[2:])


print(f"device {device}, torch {torch.__version__}, transformers {transformers.__version__}, threads {torch.get_num_threads()}")
print(f"{'preset':<7} {'params':>12} {'batch':>10} {'capitu tok/s':>13} {'HF tok/s':>10} {'ratio':>6}")
for preset in args.presets:
    config = load_config(preset, overrides=[f"model.vocab_size={args.vocab_size}"])
    micro = args.micro_batch or config.optim.micro_batch
    torch.manual_seed(0)
    ours = GPT(config.model).to(device).train()
    hf = hf_twin(config.model).to(device).train()
    batches = [
        (torch.randint(0, args.vocab_size, (micro, config.model.block_size), device=device),
         torch.randint(0, args.vocab_size, (micro, config.model.block_size), device=device))
        for _ in range(args.steps + 2)
    ]
    best = {"ours": 0.0, "hf": 0.0}
    for _ in range(args.rounds):
        best["ours"] = max(best["ours"], tokens_per_second(ours, ours_loss, batches))
        best["hf"] = max(best["hf"], tokens_per_second(hf, hf_loss, batches))
    print(f"{preset:<7} {ours.num_params():>12,} {micro:>4}x{config.model.block_size:<5} {best['ours']:>13,.0f} "
          f"{best['hf']:>10,.0f} {best['ours'] / best['hf']:>6.2f}")
