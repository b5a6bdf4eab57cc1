"""The sweep behind the `tiny` preset: which model, context, vocabulary and optimizer settings
learn the most Portuguese in a fixed number of seconds of training, run the way a user runs it.

    python benchmarks/tiny_sweep.py --seconds 600 --data 4096=DIR4K 8192=DIR8K --out sweep.jsonl \\
        --candidate "4L 256w ctx128" "model.n_layer=4 model.n_embd=256 model.block_size=128" \\
        --candidate ...

Each candidate is a name and `--set` overrides on top of the tiny preset (`vocab=N` picks the
data folder prepared at that vocabulary). Each is trained with `capitu train --preset tiny
--time SECONDS`, the command of the README's Training section, one after another (never two
at once: they would share the cores), then scored with `capitu eval RUN --split test --json`.
One JSON line per candidate goes to --out as it ends (a rerun skips the names already there),
and a table of all of them is printed at the end.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--data", nargs="+", required=True, metavar="VOCAB=DIR", help="prepared folders by vocabulary")
parser.add_argument("--candidate", nargs=2, action="append", required=True, metavar=("NAME", "OVERRIDES"))
parser.add_argument("--seconds", type=float, default=600.0, help="training seconds per candidate (--time)")
parser.add_argument("--out", type=Path, required=True, help="JSON lines, one per candidate")
parser.add_argument("--runs", type=Path, help="keep the run folders here (default: a temporary folder)")
args = parser.parse_args()
folders = dict(item.split("=", 1) for item in args.data)
done = {}
if args.out.exists():
    done = {r["name"]: r for r in map(json.loads, args.out.read_text().splitlines())}


def capitu(*command: str) -> str:
    result = subprocess.run([sys.executable, "-m", "capitu", *command], capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"capitu {' '.join(command)} failed:\n{result.stderr[-2000:]}")
    return result.stdout


def trial(name: str, overrides: str, runs: Path) -> dict:
    items = overrides.split()
    vocab = next((item.split("=", 1)[1] for item in items if item.startswith("vocab=")), next(iter(folders)))
    sets = sum((["--set", item] for item in items if not item.startswith("vocab=")), [])
    run = runs / name.replace(" ", "_")
    capitu("train", "--data", folders[vocab], "--preset", "tiny", "--time", str(args.seconds), "--out", str(run),
           "--quiet", *sets)
    scores = json.loads(capitu("eval", str(run), "--split", "test", "--json"))
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    info = json.loads((run / "run.json").read_text())
    return {"name": name, "overrides": overrides, "vocab": int(vocab), "seconds": args.seconds,
            "bpb": scores["bpb"], "tokens": metrics[-1]["tokens"], "steps": metrics[-1]["step"],
            "parameters": info["parameters"], "val_loss": metrics[-1].get("val_loss"),
            "load": os.getloadavg()[0]}


with tempfile.TemporaryDirectory() as scratch:
    runs = args.runs or Path(scratch)
    for name, overrides in args.candidate:
        if name in done:
            continue
        done[name] = trial(name, overrides, runs)
        with args.out.open("a") as out:
            out.write(json.dumps(done[name]) + "\n")
        print(json.dumps(done[name]), flush=True)

print("| candidate | vocab | parameters | tokens in the time | test bits/byte |")
print("|---|---|---|---|---|")
for name, _ in args.candidate:
    r = done[name]
    print(f"| {name} | {r['vocab']:,} | {r['parameters'] / 1e6:.1f} M | {r['tokens']:,} | {r['bpb']:.3f} |")
