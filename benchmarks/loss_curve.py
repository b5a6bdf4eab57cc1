"""A run's validation loss against training tokens, with the references' validation loss as
horizontal lines (the study's plot, for one run): the README's ten-minute figure.

    python benchmarks/loss_curve.py RUN --references STUDY/references.json --out docs/tiny_ten_minutes.png

The references file is a study's (`capitu study` writes it); it must be of the same data.
"""

import argparse
import json
from pathlib import Path

from capitu.folders import RunFolder
from capitu.study.plots import validation_curves

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("run", type=Path)
parser.add_argument("--references", type=Path, required=True)
parser.add_argument("--out", type=Path, required=True)
args = parser.parse_args()
references = json.loads(args.references.read_text(encoding="utf-8"))
points = [(r["tokens"], r["val_loss"]) for r in RunFolder(args.run).metrics() if "val_loss" in r]
lines = {"PPMd primed with train": references["val_loss"]["ppmd"],
         f"Kneser-Ney {references['ngram']['order']}-gram": references["val_loss"]["ngram"]}
args.out.write_bytes(validation_curves({args.run.name: points}, lines))
print(f"{args.out}: {len(points)} validations, last {points[-1][1]:.4f} nats/token at {points[-1][0]:,} tokens")
