"""Data, run and study folders: the one place that knows their file names and opens their files.

A data folder is what `capitu prepare` writes, a run folder what `capitu train` writes (a model folder,
such as an import or `best/`, holds its model files alone), a study folder what `capitu study` writes;
the README's Layout section lists their files."""

from __future__ import annotations

import json
from functools import cached_property
from pathlib import Path

import numpy as np

from capitu.errors import UserError
from capitu.paths import atomic_write_json

TOKENIZER = "tokenizer.json"


class DataFolder:
    META = "meta.json"

    def __init__(self, path: Path | str):
        self.path = Path(path)
        self.tokenizer_path = self.path / TOKENIZER

    def split_path(self, split: str) -> Path:
        return self.path / f"{split}.bin"

    def is_prepared(self) -> bool:
        return (self.path / self.META).is_file()

    def require(self, hint: str = "run capitu prepare first") -> DataFolder:
        if not self.is_prepared():
            raise UserError(f"data folder not found or not prepared: {self.path} ({hint})")
        return self

    @cached_property
    def meta(self) -> dict:
        try:
            return json.loads((self.path / self.META).read_text(encoding="utf-8"))
        except (OSError, ValueError) as error:
            raise UserError(f"{self.path / self.META} is missing or unreadable ({error})") from None

    def write_meta(self, meta: dict) -> None:
        (self.path / self.META).write_text(json.dumps(meta, indent=1, ensure_ascii=False), encoding="utf-8")

    def tokens(self, split: str) -> np.memmap:
        """A split's token ids, read from disk as they are used (meta["splits"][split] counts them)."""
        return np.memmap(self.split_path(split), dtype=self.meta["dtype"], mode="r")

    @property
    def vocab_size(self) -> int:
        return self.meta["tokenizer"]["vocab_size"]

    @property
    def trained_documents(self) -> set[str]:
        """The SHA-256 of the training split's documents (the manifest's), to know a text a model has seen."""
        return {entry["sha256"] for entry in self.meta["manifest"] if entry["split"] == "train"}


class RunFolder:
    WEIGHTS = "model.safetensors"
    CONFIG = "config.json"
    INFO = "run.json"
    METRICS = "metrics.jsonl"

    def __init__(self, path: Path | str):
        self.path = Path(path)
        self.weights = self.path / self.WEIGHTS
        self.config_path = self.path / self.CONFIG
        self.tokenizer_path = self.path / TOKENIZER
        self.info_path = self.path / self.INFO
        self.metrics_path = self.path / self.METRICS
        self.best = self.path / "best"
        self.bench_path = self.path / "bench.json"  # a study's bench rounds of this model
        self.generalization_path = self.path / "eval_generalization.json"  # a study's other texts and minimal pairs

    def evaluation_path(self, split: str | None) -> Path:
        """What capitu eval saved: eval_SPLIT.json, or eval_text.json for a --text."""
        return self.path / f"eval_{split or 'text'}.json"

    def info(self) -> dict:
        """run.json: the resolved config, the data, the code and machine, the step plan."""
        return json.loads(self.info_path.read_text(encoding="utf-8"))

    def write_info(self, content: dict) -> None:
        atomic_write_json(self.info_path, content)

    def metrics(self) -> list[dict]:
        if not self.metrics_path.exists():
            return []
        lines = self.metrics_path.read_text(encoding="utf-8").splitlines()
        return [json.loads(line) for line in lines if line.strip()]

    def append_metrics(self, record: dict) -> None:
        with open(self.metrics_path, "a") as log:
            log.write(json.dumps(record) + "\n")

    def keep_metrics_until(self, step: int) -> None:
        """On resume, drop the records logged after the checkpoint (they will be logged again)."""
        kept = [record for record in self.metrics() if record["step"] <= step]
        self.metrics_path.write_text("".join(json.dumps(record) + "\n" for record in kept))


class StudyFolder:
    VOTES = "votes.sqlite"  # capitu serve's blind votes (beside a study, or in the first folder it serves)

    def __init__(self, path: Path | str):
        self.path = Path(path)
        self.plan = self.path / "study.json"  # settings, grid and data: the same --out must mean the same study
        self.budgets = self.path / "budgets.json"  # each variant's training tokens under the study's budget
        self.generations = self.path / "generations.json"
        self.results = self.path / "results.json"  # every number of the report
        self.references = self.path / "references.json"  # PPMd, xz and the n-gram model on the same test split
        self.generalization = self.path / "generalization"  # the other texts' tokens and the minimal pairs
        self.votes = self.path / self.VOTES

    def run(self, name: str, seed: int) -> Path:
        return self.path / "runs" / f"{name}-s{seed}"

    def first_seed_runs(self) -> list[tuple[str, Path]]:
        """(variant, run folder) of each variant's first-seed run, in the plan's order: the study's models as serve,
        generate and the report's samples show them."""
        try:
            content = json.loads(self.plan.read_text(encoding="utf-8"))
            return [(variant["name"], self.run(variant["name"], content["study"]["first_seed"]))
                    for variant in content["variants"]]
        except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as error:
            runs = sorted(path.parent for path in self.path.glob("runs/*/config.json"))
            hint = f"; give one of its runs, such as {runs[0]}" if runs else ""
            problem = f"no {error}" if isinstance(error, KeyError) else str(error)
            raise UserError(f"{self.plan} is not a study plan capitu can read ({problem}){hint}") from None
