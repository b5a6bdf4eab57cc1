"""What one CPU-bound neighbour does to a training step, and why: the tiny study's model, its
steps timed one by one, with PyTorch on every core or on one fewer, alone and beside a busy
loop in another process.

    python benchmarks/busy_neighbour.py --steps 30

Prints, for each setting, the median and the slowest step and the step rate against the
same thread count alone, and what MachineLoad recorded (the share of the cores the rest of
the machine took).
"""

import argparse
import os
import statistics
import subprocess
import sys
import time

import torch

from capitu.config import load_config
from capitu.environment import MachineLoad
from capitu.models import build_model
from capitu.train.optim import make_optimizer
from capitu.train.trainer import optimizer_step

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--steps", type=int, default=30, help="timed steps per setting")
args = parser.parse_args()
cores = os.cpu_count() or 1
config = load_config("tiny", overrides=[
    "model.n_layer=2", "model.n_head=4", "model.n_embd=128", "model.block_size=64", "model.vocab_size=4096",
    "model.pos=learned", "model.tie_embeddings=true", "optim.name=muon", "optim.micro_batch=16"])
model = build_model(config.model).train()
optimizer = make_optimizer(model, config.optim, "cpu")
autocast = torch.autocast("cpu", dtype=torch.bfloat16)
x = torch.randint(0, 4096, (16, 65))


def timed_steps() -> tuple[list[float], dict]:
    for _ in range(3):
        optimizer_step(model, optimizer, [(x[:, :-1], x[:, 1:])], autocast, 1.0)
    seconds = []
    with MachineLoad() as load:
        for _ in range(args.steps):
            started = time.perf_counter()
            optimizer_step(model, optimizer, [(x[:, :-1], x[:, 1:])], autocast, 1.0)
            seconds.append(time.perf_counter() - started)
    return seconds, load.result


rows, alone = [], {}
for threads in sorted({cores, max(1, cores - 1)}, reverse=True):
    torch.set_num_threads(threads)
    for neighbours in (0, 1):
        busy = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(neighbours)]
        try:
            time.sleep(0.5)
            seconds, load = timed_steps()
        finally:
            for process in busy:
                process.kill()
        median = statistics.median(seconds)
        alone.setdefault(threads, median)
        rows.append(f"| {threads} | {neighbours} | {median * 1e3:.1f} | {max(seconds) * 1e3:.1f} | "
                    f"{alone[threads] / median:.2f}x | {load['others']:.0%} |")
print(f"{cores} cores; the tiny study's model, batch 16 x 64, bf16 autocast, Muon; {args.steps} steps each")
print("| torch threads | busy neighbours | median step ms | slowest step ms | rate vs alone | others' share |")
print("|---|---|---|---|---|---|")
print("\n".join(rows))
