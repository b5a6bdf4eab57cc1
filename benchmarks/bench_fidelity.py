"""Does `capitu bench` time the step the trainer runs? Its training step (random tokens) against the trainer's own
(the session `capitu train` would build for the run: its model, optimizer, sampler and batches of the run's data),
in one process, in interleaved rounds of timed steps, and the trainer's tokens/s over the bench's in each round.

    python benchmarks/bench_fidelity.py studies/tiny/runs/baseline-s1337 [--rounds 10] [--steps 10] [--device cpu]

The run folder gives the config (its config.json) and, through it, the data folder. A study's seconds budget and
its report's "equal seconds" come from bench rates; a ratio near 1 says they are the trainer's. Two processes run
minutes apart on a shared machine can differ by more than any difference between the two steps: this is why both
run here, in turn, in one process.
"""

import argparse
import json
import statistics
import tempfile
from pathlib import Path

from capitu.bench import median_step_seconds, training_step
from capitu.config import Config, from_dict
from capitu.device import pick_device
from capitu.folders import RunFolder
from capitu.train.trainer import micro_batches, optimizer_step, setup, setup_distributed

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("run", type=Path, help="a training run's folder (config.json)")
parser.add_argument("--rounds", type=int, default=10)
parser.add_argument("--steps", type=int, default=10, help="timed steps of each contender in a round")
parser.add_argument("--device", default="auto")


def main():
    args = parser.parse_args()
    if not (args.run / "config.json").is_file():
        parser.error(f"{args.run} is not a training run's folder (no config.json)")
    config = from_dict(Config, json.loads((args.run / "config.json").read_text(encoding="utf-8"))["config"])
    device = pick_device(args.device)
    with tempfile.TemporaryDirectory() as scratch:
        session = setup(config, RunFolder(Path(scratch) / "run"), None, device, setup_distributed(device.type))
        _, _, bench_step, step_tokens = training_step(config, device)

        def trainer_step():
            optimizer_step(session.model, session.optimizer, micro_batches(session), session.autocast,
                           config.optim.grad_clip, session.trained, scaler=session.scaler)

        contenders = {"bench": bench_step, "trainer": trainer_step}
        for step in contenders.values():
            for _ in range(3):  # warm-up, as the bench does
                step()
        rates = {name: [] for name in contenders}
        print(f"{device}, {step_tokens:,} tokens a step, {args.steps} steps a contender a round (median step)")
        print(f"{'round':>5} {'bench tok/s':>12} {'trainer tok/s':>14} {'trainer/bench':>14}", flush=True)
        for number in range(1, args.rounds + 1):
            for name, step in contenders.items():
                rates[name].append(step_tokens / median_step_seconds(step, device, args.steps))
            bench, trainer = rates["bench"][-1], rates["trainer"][-1]
            print(f"{number:>5} {bench:>12,.0f} {trainer:>14,.0f} {trainer / bench:>14.3f}", flush=True)
        ratios = [t / b for t, b in zip(rates["trainer"], rates["bench"])]
        print(f"trainer/bench: median {statistics.median(ratios):.3f} (range {min(ratios):.3f}-{max(ratios):.3f}) "
              f"over {args.rounds} rounds")


if __name__ == "__main__":
    main()
