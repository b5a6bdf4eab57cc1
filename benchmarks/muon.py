"""Muon against AdamW in tokens: how many training tokens Muon needs to reach the validation
loss AdamW ends at, on the default study's model and budget, each learning rate tuned.

    python benchmarks/muon.py --data studies/tiny/data [--tokens 1000000] [--adamw-lrs 3e-3 6e-3 1e-2]
                              [--muon-lrs 6e-3 1e-2 2e-2] [--set key=value ...]

The model and settings are the default study's (capitu/presets/study/tiny.toml), unless
--set says otherwise. First AdamW is trained at each of --adamw-lrs; the best (lowest final
validation loss) is AdamW's result; its learning rate is kept for the parameters AdamW still
trains under Muon (embeddings, output layer, norms) unless --muon-adamw-lr is given (the
study's own pair was tuned together). Then Muon is trained at each of --muon-lrs.
For each run the table gives the final validation loss and the first evaluated token count
at which the run's validation loss is at or below the best AdamW's final loss; the ratio of
the best Muon's to AdamW's is the figure. Validation is dense (every --eval-every steps).
"""

import argparse
import json
import tempfile
import time
from pathlib import Path

from capitu.config import load_config
from capitu.folders import RunFolder
from capitu.study.config import load_study
from capitu.train.trainer import train

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--data", required=True, type=Path, help="a prepared data folder (e.g. studies/tiny/data)")
parser.add_argument("--tokens", type=int, default=0, help="training tokens per run (default: the study's)")
parser.add_argument("--adamw-lrs", type=float, nargs="+", default=[3e-3, 6e-3, 1e-2])
parser.add_argument("--muon-lrs", type=float, nargs="+", default=[6e-3, 1e-2, 2e-2])
parser.add_argument("--muon-adamw-lr", type=float, default=0.0, help="under Muon, the learning rate of the "
                    "parameters AdamW still trains (default: the best AdamW run's)")
parser.add_argument("--eval-every", type=int, default=10, help="steps between validations")
parser.add_argument("--seed", type=int, default=1337)
parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="more overrides")
args = parser.parse_args()
study, _ = load_study("tiny")
tokens = args.tokens or study.tokens


def run(overrides: list[str]) -> list[tuple[int, float]]:
    """Train one run; its (tokens, validation loss) curve."""
    config = load_config("tiny", overrides=[*study.set, f"data.path={json.dumps(str(args.data.resolve()))}",
                                            f"run.eval_every={args.eval_every}", f"run.seed={args.seed}",
                                            *args.set, *overrides])
    config.run.tokens, config.run.steps, config.run.checkpoint_every = tokens, 0, 10**9
    with tempfile.TemporaryDirectory() as folder:
        train(config, Path(folder) / "run", progress=False)
        records = RunFolder(Path(folder) / "run").metrics()
    return [(r["tokens"], r["val_loss"]) for r in records if "val_loss" in r]


def reached(curve: list[tuple[int, float]], target: float) -> int | None:
    return next((t for t, loss in curve if loss <= target), None)


print(f"{tokens:,} tokens per run, study settings {' '.join(study.set)} {' '.join(args.set)}")
results = []


def timed(name: str, lr: float, overrides: list[str]) -> None:
    started = time.perf_counter()
    curve = run(overrides)
    results.append((name, lr, curve, time.perf_counter() - started))
    print(f"  {name} lr {lr:g}: final validation loss {curve[-1][1]:.4f}", flush=True)


for lr in args.adamw_lrs:
    timed("adamw", lr, ["optim.name=adamw", f"optim.lr={lr}"])
adamw_best = min((r for r in results if r[0] == "adamw"), key=lambda r: r[2][-1][1])
target = adamw_best[2][-1][1]
for lr in args.muon_lrs:
    timed("muon", lr, ["optim.name=muon", f"optim.lr={args.muon_adamw_lr or adamw_best[1]}", f"optim.muon_lr={lr}"])
muon_best = min((r for r in results if r[0] == "muon"), key=lambda r: reached(r[2], target) or float("inf"))

print(f"\ntarget: the best AdamW's final validation loss, {target:.4f} (lr {adamw_best[1]:g})")
print(f"{'optimizer':<10} {'lr':>8} {'final val loss':>15} {'tokens to target':>17} {'seconds':>8}")
for name, lr, curve, seconds in results:
    hit = reached(curve, target)
    print(f"{name:<10} {lr:>8g} {curve[-1][1]:>15.4f} {f'{hit:,}' if hit else 'never':>17} {seconds:>8.1f}")
hit = reached(muon_best[2], target)
if hit:
    print(f"\nMuon (lr {muon_best[1]:g}) reaches AdamW's final loss in {hit:,} tokens: "
          f"{hit / reached(adamw_best[2], target):.2f}x AdamW's {reached(adamw_best[2], target):,}")
else:
    print("\nno Muon run reached AdamW's final loss")
