"""Does bf16 autocast train as well as fp32? The default study's model trained with both,
several seeds each, on the same batches: the validation loss curves and the final test loss.

    python benchmarks/bf16_loss.py --data studies/tiny/data [--seeds 3] [--tokens 300000]

Prints, per seed, the final validation and test loss of each dtype, then the mean and sample
standard deviation over seeds, the mean of the per-seed differences (bf16 - fp32) with its
paired t-test, and whether the difference stays within the seeds' own spread (|mean
difference| <= the standard deviation over seeds of fp32).
"""

import argparse
import json
import statistics
import tempfile
from pathlib import Path

from capitu.config import load_config
from capitu.evaluate import evaluate_run
from capitu.folders import RunFolder
from capitu.study.config import load_study
from capitu.study.stats import paired_t_test
from capitu.train.trainer import train

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--data", required=True, type=Path)
parser.add_argument("--seeds", type=int, default=3)
parser.add_argument("--tokens", type=int, default=300_000)
args = parser.parse_args()
study, _ = load_study("tiny")
results = {"float32": [], "bfloat16": []}
for seed in range(1337, 1337 + args.seeds):
    for dtype in results:
        config = load_config("tiny", overrides=[*study.set, f"data.path={json.dumps(str(args.data.resolve()))}",
                                                f"run.seed={seed}", f"run.dtype={dtype}"])
        config.run.tokens, config.run.steps = args.tokens, 0
        with tempfile.TemporaryDirectory() as folder:
            run = Path(folder) / "run"
            train(config, run, progress=False)
            curve = RunFolder(run).metrics()
            test = evaluate_run(run, "test", device="cpu", progress=False)["loss"]
        validation = [r["val_loss"] for r in curve if "val_loss" in r]
        results[dtype].append({"seed": seed, "val": validation[-1], "test": test})
        print(f"seed {seed} {dtype:<9} final validation loss {validation[-1]:.4f}, test loss {test:.4f}", flush=True)

for key in ("val", "test"):
    fp32, bf16 = ([r[key] for r in results[d]] for d in ("float32", "bfloat16"))
    test = paired_t_test(bf16, fp32)
    spread = statistics.stdev(fp32) if len(fp32) > 1 else 0.0
    print(f"{key}: fp32 {statistics.fmean(fp32):.4f} ± {spread:.4f}, bf16 {statistics.fmean(bf16):.4f} ± "
          f"{statistics.stdev(bf16) if len(bf16) > 1 else 0.0:.4f}; bf16 - fp32 = {test['mean_difference']:+.4f} "
          f"(p = {test['p']:.3g}); within the seeds' spread: {abs(test['mean_difference']) <= spread}")
