"""Training tokens/s of capitu's GPT, lever by lever, against HF transformers'
GPT2LMHeadModel eager fp32 at the same shapes, in one process, in interleaved rounds.

    python benchmarks/train_throughput.py [--shapes study tiny] [--steps 20] [--rounds 5] [--compile]

Shapes: `study` is the default study's model (2 layers, 128 wide, context 128, vocabulary
4,096, micro-batch 8: the tiny preset with capitu/presets/study/tiny.toml's overrides);
`tiny` is the tiny preset (4 layers, context 256, micro-batch 16) at vocabulary 16,384.
Every contender trains with the trainer's loop (forward, backward, gradient clipping,
AdamW step) on the same batches. The levers, each added to the one before:

- `unfused`:     capitu as it was: fp32, logits materialised, then F.cross_entropy
- `fused-ce`:    the output layer fused with the loss (capitu/models/loss.py)
- `bf16`:        + bf16 autocast (attention kept fp32 on CPU), where the CPU supports bf16
- `fused-adamw`: + AdamW's fused kernel (the trainer's default on CPU and CUDA)
- `compile`:     + torch.compile of the model (with --compile; compile time shown apart)

Each round runs every contender for --steps timed steps, in turn; the table gives the median
over rounds and its range, and each contender's ratio to HF in the same round (the median and
range of those ratios: the machine's speed drifts between rounds). Needs `transformers`.
"""

import argparse
import contextlib
import statistics
import time

import torch
import transformers
from twins import LogitsThenLoss, hf_twin

from capitu.config import load_config
from capitu.device import bf16_supported, synchronize
from capitu.models import GPT
from capitu.train.trainer import optimizer_step

SHAPES = {
    "study": (["model.vocab_size=4096", "model.n_layer=2", "model.block_size=128"], 8),
    "tiny": (["model.vocab_size=16384"], 16),
}

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
parser.add_argument("--steps", type=int, default=20, help="timed steps per contender per round")
parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds")
parser.add_argument("--compile", action="store_true", help="also time torch.compile (its compile time is shown apart)")
args = parser.parse_args()
device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
bf16 = torch.autocast(device.type, dtype=torch.bfloat16)
fp32 = contextlib.nullcontext()


class Contender:
    def __init__(self, name, model, autocast, fused_adamw=False, compiled=False):
        """`model` answers (x, y) with (None, loss), as capitu's models do."""
        self.name, self.autocast = name, autocast
        self.model = model.to(device).train()
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=1e-4, fused=fused_adamw or None)
        self.forward = torch.compile(self.model) if compiled else self.model
        self.rates, self.setup_s = [], 0.0

    def steps(self, batches) -> float:
        """Seconds to train on `batches`, one optimizer step each, through the trainer's step."""
        start = time.perf_counter()
        for x, y in batches:
            optimizer_step(self.model, self.optimizer, [(x, y)], self.autocast, 1.0, trained=self.forward)
        synchronize(device)
        return time.perf_counter() - start

    def warm_up(self, batches):
        self.setup_s = self.steps(batches[:2])


print(f"device {device}, torch {torch.__version__}, transformers {transformers.__version__}, "
      f"threads {torch.get_num_threads()}, bf16 supported: {bf16_supported(device)}")
for shape in args.shapes:
    overrides, micro = SHAPES[shape]
    config = load_config("tiny", overrides=overrides).model
    torch.manual_seed(0)
    template = GPT(config)

    def ours():
        model = GPT(config)
        model.load_state_dict(template.state_dict())
        return model

    contenders = [
        Contender("HF GPT2LMHeadModel", LogitsThenLoss(hf_twin(config), hf=True), fp32),
        Contender("unfused", LogitsThenLoss(ours()), fp32),
        Contender("fused-ce", ours(), fp32),
    ]
    if bf16_supported(device):
        contenders.append(Contender("+ bf16", ours(), bf16))
    last_autocast = contenders[-1].autocast
    contenders.append(Contender("+ fused-adamw", ours(), last_autocast, fused_adamw=True))
    if args.compile:
        contenders.append(Contender("+ compile", ours(), last_autocast, fused_adamw=True, compiled=True))
    batches = [
        (torch.randint(0, config.vocab_size, (micro, config.block_size), device=device),
         torch.randint(0, config.vocab_size, (micro, config.block_size), device=device))
        for _ in range(args.steps)
    ]
    tokens = sum(x.numel() for x, _ in batches)
    for contender in contenders:
        contender.warm_up(batches)
    for _ in range(args.rounds):
        for contender in contenders:
            contender.rates.append(tokens / contender.steps(batches))
    reference = contenders[0].rates
    print(f"\nshape {shape}: {config.n_layer} layers, {config.n_embd} wide, context {config.block_size}, vocabulary "
          f"{config.vocab_size:,}, micro-batch {micro}; {args.rounds} rounds x {args.steps} steps")
    print(f"{'contender':<20} {'tok/s median':>13} {'range':>17} {'vs HF':>6} {'ratio range':>12} "
          f"{'first 2 steps':>14}")
    for contender in contenders:
        rates = contender.rates
        # the machine's speed drifts between rounds: compare within each round, then take the median
        ratios = [rate / hf for rate, hf in zip(rates, reference)]
        print(f"{contender.name:<20} {statistics.median(rates):>13,.0f} {min(rates):>8,.0f}-{max(rates):<8,.0f} "
              f"{statistics.median(ratios):>6.2f} {min(ratios):>5.2f}-{max(ratios):<5.2f} {contender.setup_s:>12.1f} s")
