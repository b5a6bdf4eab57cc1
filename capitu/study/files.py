"""The files a study leaves in its folder: the runner writes them, the report reads them."""

from __future__ import annotations

from pathlib import Path

PLAN = "study.json"  # the study's settings, grid and data: the same --out must mean the same study
BUDGETS = "budgets.json"  # each variant's training tokens under the study's budget
EVAL = "eval_test.json"  # in each run folder: the test-split evaluation
BENCH = "bench.json"  # in each first-seed run folder: one capitu bench result per round
GENERATIONS = "generations.json"


def run_folder(out: Path, name: str, seed: int) -> Path:
    return out / "runs" / f"{name}-s{seed}"
