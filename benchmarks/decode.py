"""Decode speed of capitu's generation, against references, in one run:

1. the KV cache vs the same model recomputing its whole window every step (nanoGPT's
   sample.py loop), 256 new tokens;
2. capitu eager, capitu compiled (decode.Decoder's compiled step) and HF
   transformers' `generate` on the equivalent GPT2LMHeadModel (the same weights, through
   capitu's HF mapping), greedy, batch 1 and 16, with the compile time;
3. GQA (n_kv_head = n_head / 4) vs multi-head attention: KV bytes per token and decode speed;
4. drawing one token from the model's vocabulary, `torch.multinomial` vs `generate.draw`
   (inverse CDF), and sampled generation (temperature 0.8), eager vs compiled.

    python benchmarks/decode.py [--preset tiny] [--new-tokens 256] [--rounds 3]

Needs `transformers` (the test extra). Prints tokens/s and ratios; asserts nothing.
"""

import argparse
import time

import torch
import transformers

from capitu.config import load_config
from capitu.decode import make_decoder
from capitu.generate import Sampling, draw, generate
from capitu.hf import gpt2_config, gpt2_weights
from capitu.models import GPT

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--preset", default="tiny")
parser.add_argument("--vocab-size", type=int, default=16384)
parser.add_argument("--prompt-length", type=int, default=16)
parser.add_argument("--new-tokens", type=int, default=256)
parser.add_argument("--rounds", type=int, default=3, help="alternating rounds; the best of each is kept")
args = parser.parse_args()
device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
GREEDY = Sampling(temperature=0)


def build(*overrides: str) -> GPT:
    # context large enough for prompt + new tokens: no context shift in any of the loops
    block = max(args.prompt_length + args.new_tokens, 256)
    config = load_config(args.preset, overrides=[f"model.vocab_size={args.vocab_size}", f"model.block_size={block}",
                                                 *overrides])
    torch.manual_seed(0)
    return GPT(config.model).to(device).eval()


def timed(call) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    call()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


@torch.no_grad()
def recompute(model: GPT, prompt: torch.Tensor, new_tokens: int) -> torch.Tensor:
    """nanoGPT's sample.py: crop to the context, run the whole window, keep the last logits."""
    sequence = prompt
    for _ in range(new_tokens):
        logits, _ = model(sequence[:, -model.config.block_size:])
        sequence = torch.cat([sequence, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    return sequence


decoders = {}  # (model, batch, compiled) -> its decoder, made (and compiled) once


def decoder_for(model, batch, compile=False):
    key = (id(model), batch, compile)
    if key not in decoders:
        decoders[key] = make_decoder(model, batch, compile)
    return decoders[key]


def ours(model, prompt, compile=False):
    return generate(decoder_for(model, prompt.shape[0], compile), prompt, args.new_tokens, GREEDY)


def best_rate(calls: dict, batch: int) -> dict:
    """Tokens/s of each call, alternating, best round kept."""
    best = dict.fromkeys(calls, 0.0)
    for _ in range(args.rounds):
        for name, call in calls.items():
            best[name] = max(best[name], batch * args.new_tokens / timed(call))
    return best


def prompt_of(batch: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(1)
    return torch.randint(1, args.vocab_size, (batch, args.prompt_length), generator=generator).to(device)


print(f"device {device}, torch {torch.__version__}, transformers {transformers.__version__}, "
      f"threads {torch.get_num_threads()}, preset {args.preset}, prompt {args.prompt_length}, "
      f"new tokens {args.new_tokens}")

baseline = build()
prompt = prompt_of(1)
rates = best_rate({"cache": lambda: ours(baseline, prompt),
                   "recompute": lambda: recompute(baseline, prompt, args.new_tokens)}, 1)
same = torch.equal(ours(baseline, prompt), recompute(baseline, prompt, args.new_tokens))
print(f"\n1. KV cache vs recompute, batch 1: {rates['cache']:,.0f} vs {rates['recompute']:,.0f} tok/s, "
      f"ratio {rates['cache'] / rates['recompute']:.2f} (same tokens: {same})")

hf = transformers.GPT2LMHeadModel(transformers.GPT2Config(**gpt2_config(baseline.config)))
hf.load_state_dict(gpt2_weights(baseline), strict=False)  # the tied output layer is rebuilt by tying
hf = hf.to(device).eval()


def hf_generate(prompt):
    return hf.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=args.new_tokens,
                       min_new_tokens=args.new_tokens, do_sample=False, pad_token_id=0)


print("\n2. capitu eager, capitu compiled and HF generate (greedy, same weights)")
print(f"{'batch':>5} {'eager tok/s':>12} {'compiled':>9} {'compiled/eager':>15} {'HF tok/s':>9} {'eager/HF':>9} "
      f"{'compile s':>10} {'same tokens (compiled, HF)':>27}")
for batch in (1, 16):
    prompt = prompt_of(batch)
    compiled = ours(baseline, prompt, compile=True)  # compiles the step for this batch size
    compile_s = decoder_for(baseline, batch, compile=True).compile_s
    rates = best_rate({"ours": lambda: ours(baseline, prompt), "compiled": lambda: ours(baseline, prompt, True),
                       "hf": lambda: hf_generate(prompt)}, batch)
    eager = ours(baseline, prompt)
    same = (compiled == eager).float().mean().item(), (eager == hf_generate(prompt)).float().mean().item()
    print(f"{batch:>5} {rates['ours']:>12,.0f} {rates['compiled']:>9,.0f} {rates['compiled'] / rates['ours']:>15.2f} "
          f"{rates['hf']:>9,.0f} {rates['ours'] / rates['hf']:>9.2f} {compile_s:>10.1f} {same[0]:>13.1%}, "
          f"{same[1]:.1%}")

gqa = build(f"model.n_kv_head={baseline.config.n_head // 4}")
print(f"\n3. GQA (n_kv_head {gqa.config.kv_heads}) vs MHA (n_kv_head {baseline.config.n_head})")
mha_bytes, gqa_bytes = baseline.new_cache(1, 256).bytes_per_token(), gqa.new_cache(1, 256).bytes_per_token()
print(f"KV bytes per token (allocated cache): MHA {mha_bytes:,}, GQA {gqa_bytes:,}, ratio {gqa_bytes / mha_bytes}")
print(f"{'batch':>5} {'MHA tok/s':>10} {'GQA tok/s':>10} {'GQA/MHA':>8}")
for batch in (1, 16):
    prompt = prompt_of(batch)
    rates = best_rate({"mha": lambda: ours(baseline, prompt), "gqa": lambda: ours(gqa, prompt)}, batch)
    print(f"{batch:>5} {rates['mha']:>10,.0f} {rates['gqa']:>10,.0f} {rates['gqa'] / rates['mha']:>8.2f}")

print(f"\n4. Sampling: one token from {args.vocab_size:,} probabilities, batch 1 (microseconds, best of 5 x 300)")
probs = torch.randn(1, args.vocab_size, device=device).softmax(-1)
sampler = torch.Generator(device=device).manual_seed(0)


def per_call_us(call, calls=300):
    return min(timed(lambda: [call() for _ in range(calls)]) for _ in range(5)) / calls * 1e6


print(f"torch.multinomial {per_call_us(lambda: torch.multinomial(probs, 1, generator=sampler)):.0f} us, "
      f"draw {per_call_us(lambda: draw(probs, sampler)):.0f} us")
prompt, sampled = prompt_of(1), Sampling(temperature=0.8)
eager, compiled = decoder_for(baseline, 1), decoder_for(baseline, 1, compile=True)
rates = best_rate({"eager": lambda: generate(eager, prompt, args.new_tokens, sampled, seed=1),
                   "compiled": lambda: generate(compiled, prompt, args.new_tokens, sampled, seed=1)}, 1)
same = torch.equal(generate(eager, prompt, args.new_tokens, sampled, seed=1),
                   generate(compiled, prompt, args.new_tokens, sampled, seed=1))
print(f"sampled generation (temperature 0.8, seed 1), batch 1: eager {rates['eager']:,.0f}, compiled "
      f"{rates['compiled']:,.0f} tok/s, ratio {rates['compiled'] / rates['eager']:.2f} (same tokens: {same})")
