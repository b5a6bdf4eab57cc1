"""What a study runs: a `[study]` table (budget, seeds, evaluation, prompts, grid) and the grid of `[[variant]]`s.
Layers: the dataclass defaults, `capitu/presets/study/PRESET.toml`, a user's `--config` file (whose `[[variant]]`s,
if any, replace the shipped grid), then `--seeds` and `--grid`."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from capitu.config import PRESETS_DIR, apply, preset_names, read_toml
from capitu.errors import UserError
from capitu.generate import PROMPTS
from capitu.study.variants import Variant, load_grid, parse_grid

BUDGETS = ("tokens", "flops", "seconds")


@dataclass
class StudyConfig:
    preset: str = "tiny"  # the model preset every variant starts from
    seeds: int = 2  # training seeds per variant: first_seed, first_seed + 1, ...
    first_seed: int = 1337
    grid: str = "full"  # a shipped grid (full, core) or a grid TOML file; a --config's [[variant]]s replace it
    budget: str = "tokens"  # tokens: equal training tokens; flops: equal training FLOPs; seconds: equal time
    tokens: int = 0  # training tokens per run (the baseline's, under a flops budget); 0: the preset's run.tokens
    seconds: float = 0.0  # budget = "seconds": training seconds per run, turned into tokens by a measured rate
    set: list[str] = field(default_factory=list)  # overrides applied to every run, before the variant's
    vocab_size: int = 16384  # when the study prepares its data from --source
    tokenizer: str = "bpe"
    eval_lengths: list[int] = field(default_factory=lambda: [128, 512, 1024])  # besides the training context
    # generalization (capitu/study/generalization.py): every run is also scored on these texts (name -> text files or
    # folders; documents of the training split left out) and on minimal pairs, built from the CoNLL-U treebanks in
    # `ud` unless `pairs` names a pairs file (capitu pairs); a path that is not there is skipped with a warning
    eval_texts: dict[str, list[str]] = field(default_factory=dict)
    ud: str = "../shared/eval/ud-portuguese"
    pairs: str = ""
    pairs_per_phenomenon: int = 0  # 0: every pair; else a fixed random sample of at most this many per phenomenon
    prompts: list[str] = field(default_factory=lambda: list(PROMPTS))
    new_tokens: int = 60
    temperature: float = 0.8
    top_k: int = 40
    sample_seed: int = 1234
    bench: bool = True
    bench_train_steps: int = 5
    bench_repeats: int = 1  # generation runs per batch size in one bench; the fastest counts
    bench_rounds: int = 3  # benches per variant, interleaved across variants: the spread of the timings
    bench_compile: bool = True  # decode through the compiled step (its compiling is not timed, but takes a while)

    @property
    def seed_list(self) -> list[int]:
        return [self.first_seed + i for i in range(self.seeds)]

    def validate(self) -> None:
        if self.preset not in preset_names():
            raise UserError(f"unknown preset '{self.preset}' (known: {', '.join(preset_names())})")
        if self.seeds < 1:
            raise UserError(f"study.seeds must be at least 1, got {self.seeds}")
        if self.tokens < 0 or self.new_tokens < 1 or self.bench_train_steps < 1 or self.bench_repeats < 1 \
                or self.bench_rounds < 1:
            raise UserError("study.tokens must be >= 0; new_tokens, bench_train_steps, bench_repeats and "
                            "bench_rounds >= 1")
        if self.budget not in BUDGETS:
            raise UserError(f"study.budget must be one of {', '.join(BUDGETS)}, got '{self.budget}'")
        if self.budget == "seconds" and not self.seconds > 0:
            raise UserError("study.budget = \"seconds\" needs study.seconds > 0 (training seconds per run)")
        if self.budget != "seconds" and self.seconds:  # it would be ignored
            raise UserError(f"study.seconds applies to budget = \"seconds\" only; this study's budget is "
                            f"{self.budget}")
        if self.budget == "seconds" and self.tokens:  # it would be ignored: the seconds make the tokens
            raise UserError(f"--tokens (study.tokens) does not apply to this study's budget of {self.seconds:g} "
                            "training seconds a run (study.seconds); a study file with budget = \"tokens\" or "
                            "\"flops\" takes it")
        if not all(name.replace("-", "").replace("_", "").isalnum() for name in self.eval_texts):
            raise UserError(f"study.eval_texts: names are letters, digits, - and _, got {', '.join(self.eval_texts)}")
        if not all(isinstance(paths, list) and paths and all(isinstance(p, str) for p in paths)
                   for paths in self.eval_texts.values()):
            raise UserError("study.eval_texts maps a name to a list of paths, e.g. { poetry = [\"texts/poems\"] }")
        if self.pairs_per_phenomenon < 0:
            raise UserError(f"study.pairs_per_phenomenon must be >= 0, got {self.pairs_per_phenomenon}")
        if any(length < 1 for length in self.eval_lengths):
            raise UserError(f"study.eval_lengths must be positive, got {self.eval_lengths}")


def load_study(preset: str, file: Path | None = None, seeds: int | None = None,
               grid: str | None = None, tokens: int | None = None) -> tuple[StudyConfig, list[Variant]]:
    study = StudyConfig(preset=preset)
    shipped = PRESETS_DIR / "study" / f"{preset}.toml"
    if shipped.exists():
        apply(study, read_toml(shipped).get("study", {}), "study.")
    variants = None
    if file:
        content = read_toml(file)
        unknown = set(content) - {"study", "variant"}
        if unknown:
            raise UserError(f"{file}: unknown table(s) {', '.join(sorted(unknown))} (a study file has [study] "
                            "and [[variant]])")
        apply(study, content.get("study", {}), "study.")
        if "variant" in content:
            variants = parse_grid(content)
    if grid is not None:
        study.grid = grid
    if variants is None or grid is not None:
        variants = load_grid(study.grid)
    if seeds is not None:
        study.seeds = seeds
    if tokens is not None:
        if tokens < 1:
            raise UserError(f"--tokens must be positive, got {tokens}")
        study.tokens = tokens
    study.validate()
    if "baseline" not in {v.name for v in variants}:
        raise UserError("the grid needs a variant named baseline: every other is compared with it")
    return study, variants
