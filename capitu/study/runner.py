"""Running a study: every grid entry x seed trained on the same data under one budget (equal
tokens, FLOPs or seconds: budgets.json), then evaluated, benchmarked (interleaved rounds) and
sampled. Each stage leaves a file; a stage whose file is there is skipped, so a stopped study
continues where it stopped (a half-trained run resumes from its checkpoint)."""

from __future__ import annotations

import contextlib
import copy
import json
import math
import multiprocessing
import shutil
import sys
import time
from dataclasses import asdict, replace
from functools import partial
from pathlib import Path
from typing import Callable

from capitu.checkpoint import read_config
from capitu.config import Config, from_dict, load_config, to_dict
from capitu.device import pick_device
from capitu.environment import MachineLoad, is_busy
from capitu.errors import UserError, warn
from capitu.folders import DataFolder, RunFolder, StudyFolder
from capitu.paths import atomic_write_json, check_output, clean_leftovers
from capitu.study.config import StudyConfig
from capitu.study.variants import Variant, variant_config
from capitu.train.checkpoints import checkpoint_folders

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; start shards one after another there
    fcntl = None

SETUP_LOCK = ".setup.lock"


def record_plan(out: Path, study: StudyConfig, variants: list[Variant], data: str) -> None:
    """Write study.json, or check that the study already in `out` is this one (only the
    number of seeds may change: more seeds extend a study)."""
    plan = {"study": asdict(study), "variants": [asdict(v) for v in variants], "data": data}
    path = StudyFolder(out).plan
    if path.exists():
        previous = json.loads(path.read_text(encoding="utf-8"))
        previous["study"]["seeds"] = study.seeds
        if previous != plan:
            raise UserError(f"{out} holds another study (other settings, grid or data); use another --out")
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, plan)


def prepare_data(out: Path, study: StudyConfig, data: Path | None, source: str | None, progress: bool) -> Path:
    """The study's data: --data as it is, or --source prepared into OUT/data without the evaluation texts."""
    if data is not None:
        return Path(data)
    from capitu.data.prepare import PrepareOptions, prepare
    from capitu.study.generalization import held_out

    prepare(PrepareOptions(source=source, out=out / "data", tokenizer=study.tokenizer, vocab_size=study.vocab_size,
                           exclude=held_out(study), progress=progress))
    return out / "data"


def study_configs(study: StudyConfig, variants: list[Variant], data: Path | None, vocab_size: int,
                  device: str = "auto") -> dict[str, Config]:
    """Each variant's resolved config on `data` (None: on no data, for a table of the models); a
    UserError if one is invalid or two are one run."""
    on_data = [f"data.path={json.dumps(str(data.resolve()))}"] if data else []
    base = load_config(study.preset, overrides=[*study.set, *on_data])
    if study.tokens:
        base.run.tokens, base.run.steps = study.tokens, 0
    base.model.vocab_size = vocab_size
    if device != "auto":
        base.run.device = device
    configs = {variant.name: variant_config(base, variant) for variant in variants}
    check_distinct(configs)
    return configs


def same_training(saved: dict, wanted: dict) -> bool:
    """Whether two resolved configs train the same run (the device may differ). A setting newer than
    the saved config takes its default there, which is what that run was trained with."""
    def resolved(config: dict) -> dict:
        config = to_dict(from_dict(Config, config))
        return {**config, "run": {k: v for k, v in config["run"].items() if k != "device"}}

    try:
        return resolved(saved) == resolved(wanted)
    except UserError:  # a saved setting this version does not know
        return False


def train_stage(config: Config, run: Path, progress: bool) -> str:
    """Train, resume or skip the run; returns what was done."""
    from capitu.train.trainer import train

    if checkpoint_folders(run):
        saved = read_config(run)
        if not same_training(saved.get("config", {}), to_dict(config)):
            raise UserError(f"{run} was trained with another config; remove it or use another --out")
        total = RunFolder(run).info()["total_steps"]
        if saved["step"] >= total:
            return "trained already"
        last, done = train(None, run, resume=True, progress=progress), f"resumed at step {saved['step']}"
    else:
        if run.exists():  # started, but stopped before its first checkpoint
            shutil.rmtree(run)
        last, done = train(copy.deepcopy(config), run, progress=progress), "trained"
    if last.get("stopped") in ("SIGINT", "SIGTERM"):
        warn(f"{last['stopped']}: {run} saved at step {last.get('step')}; run the same command to continue the study")
        raise KeyboardInterrupt
    return done


def evaluate_stage(run: Path, out: Path, lengths: list[int], progress: bool, device) -> None:
    """The test split (at the training context and `lengths`), then the other texts and the minimal pairs."""
    from capitu.evaluate import evaluate_run
    from capitu.study import generalization

    path = RunFolder(run).evaluation_path("test")
    previous = json.loads(path.read_text(encoding="utf-8")) if path.exists() else None
    if previous is None or set(previous.get("lengths", {})) != {str(n) for n in lengths}:
        atomic_write_json(path, evaluate_run(run, "test", lengths=lengths or None, device=device, progress=progress))
    generalization.evaluate_run(run, out, device, progress)


def bench_rounds_done(run: Path) -> list[dict]:
    path = RunFolder(run).bench_path
    return json.loads(path.read_text(encoding="utf-8")).get("rounds", []) if path.exists() else []


def bench_stage(runs: dict[str, Path], study: StudyConfig, device: str, say: Callable[[str], None]) -> None:
    """`study.bench_rounds` benches of every variant's first-seed run, interleaved (round 1 of every variant, then
    round 2...), so that a slow spell of the machine falls on all of them; each round is saved as it ends. A bench
    that fails (out of memory on a small GPU, say) costs its variant the timings, not the study its report: the
    failure is saved beside the rounds done, the report says it, and running the study again tries it again."""
    from capitu.bench import BenchOptions, bench, config_of_run

    options = BenchOptions(train_steps=study.bench_train_steps, repeats=study.bench_repeats, device=device,
                           compile=study.bench_compile)
    failed: set[str] = set()
    for round_number in range(1, study.bench_rounds + 1):
        for name, run in runs.items():
            rounds = bench_rounds_done(run)
            if len(rounds) >= round_number or name in failed:
                continue
            say(f"bench round {round_number}/{study.bench_rounds}: {name}")
            try:
                result = bench(config_of_run(read_config(run)), str(RunFolder(run).weights), options)
            except UserError as error:
                say(f"bench of {name} failed, so the report goes without its timings: {error}")
                failed.add(name)
                atomic_write_json(RunFolder(run).bench_path, {"rounds": rounds, "failed": str(error)})
                continue
            atomic_write_json(RunFolder(run).bench_path, {"rounds": [*rounds, result]})


def check_distinct(configs: dict[str, Config]) -> None:
    """Two variants that resolve to the same model and optimizer would be one comparison
    counted twice (GQA with n_head / kv_divisor = 1 key-value head is MQA, say)."""
    seen: dict[str, str] = {}
    for name, config in configs.items():
        key = json.dumps([to_dict(config.model), to_dict(config.optim)], sort_keys=True)
        if key in seen:
            raise UserError(f"variants {seen[key]} and {name} resolve to the same model and optimizer; change one "
                            "of them")
        seen[key] = name


def plan_budgets(out: Path, study: StudyConfig, configs: dict[str, Config], device) -> dict[str, dict]:
    """Each variant's training tokens under the study's budget, saved in budgets.json (a
    seconds budget is measured once; a continued study keeps it):
    - tokens: `study.tokens` each;
    - flops: the baseline's `study.tokens` x its FLOPs per token, divided by the variant's;
    - seconds: `study.seconds` x the variant's training tokens/s, measured here."""
    from capitu.models import build_model

    path = StudyFolder(out).budgets
    if path.exists():
        return json.loads(path.read_text(encoding="utf-8"))
    flops = {name: build_model(config.model).flops_per_token() for name, config in configs.items()}
    rates = {name: measure_training_rate(config, study, device) for name, config in configs.items()} \
        if study.budget == "seconds" else {}
    tokens = planned_tokens(study, configs, flops, rates)
    budgets = {name: {"budget": study.budget, "flops_per_token": flops[name],
                      **({"measured_tok_s": rates[name]} if rates else {}), "tokens": tokens[name]}
               for name in configs}
    atomic_write_json(path, budgets)
    return budgets


def planned_tokens(study: StudyConfig, configs: dict[str, Config], flops: dict[str, float],
                   rates: dict[str, float]) -> dict[str, int]:
    """Each variant's training tokens under the study's budget (see plan_budgets), in whole steps;
    `rates` (training tokens/s) are read under a seconds budget only."""
    planned = {}
    for name, config in configs.items():
        if study.budget == "tokens":
            tokens = config.run.tokens
        elif study.budget == "flops":
            tokens = configs["baseline"].run.tokens * flops["baseline"] / flops[name]
        else:
            tokens = study.seconds * rates[name]
        step_tokens = config.optim.batch_tokens
        planned[name] = max(step_tokens, int(round(tokens / step_tokens)) * step_tokens)
    return planned


def measure_training_rate(config: Config, study: StudyConfig, device, attempts: int = 3) -> float:
    """Training tokens/s of `config`, timed in this process the way the trainer trains: the best of
    `attempts` measurements that other programs did not disturb (a seconds budget set from a
    disturbed one would starve the variant measured in the slow spell)."""
    from capitu.bench import BenchOptions, measure_training

    options = BenchOptions(train_steps=max(study.bench_train_steps, 10))
    rates, loads = [], []
    for _ in range(attempts):
        with MachineLoad(device.type) as load:
            rate = measure_training(copy.deepcopy(config), device, options, kernel=False)["train_tok_s"]
        loads.append(load.result)
        if not is_busy(load.result):
            rates.append(rate)
    if not rates:
        worst = max((entry["others"] or 0.0) for entry in loads)
        raise UserError(f"the machine is busy (other programs took up to {worst:.0%} of the cores while the "
                        "seconds budget was measured); stop them and run again, or give the study another budget "
                        "([study] budget = \"flops\" in --config)")
    return max(rates)


def generation_stage(out: Path, study: StudyConfig, runs: dict[str, Path], device) -> None:
    """Every variant's first-seed run continues the same prompts with the same sampling seed."""
    from capitu.generate import Sampling, compare

    settings = {"prompts": study.prompts, "new_tokens": study.new_tokens, "temperature": study.temperature,
                "top_k": study.top_k, "seed": study.sample_seed, "runs": {k: str(v) for k, v in runs.items()}}
    path = StudyFolder(out).generations
    if path.exists() and json.loads(path.read_text(encoding="utf-8"))["settings"] == settings:
        return
    sampling = Sampling(temperature=study.temperature, top_k=study.top_k)
    sampling.validate()
    results = compare(list(runs.values()), study.prompts, study.new_tokens, sampling, study.sample_seed, device)
    atomic_write_json(path, {"settings": settings, "results": results})


def references_settings(study: StudyConfig, data: Path) -> dict:
    return {"data_fingerprint": DataFolder(data).meta.get("fingerprint"), "prompts": study.prompts,
            "new_tokens": study.new_tokens, "temperature": study.temperature, "top_k": study.top_k,
            "seed": study.sample_seed}


def references_done(out: Path, study: StudyConfig, data: Path) -> bool:
    path = StudyFolder(out).references
    if not path.exists():
        return False
    return json.loads(path.read_text(encoding="utf-8"))["settings"] == references_settings(study, data)


def references_stage(out: Path, study: StudyConfig, data: Path) -> None:
    """The references on the study's test split (capitu references), the n-gram model's continuations of the
    study's prompts, and PPMd's and the n-gram's validation loss (nats per token, the training curves' unit)."""
    from capitu.generate import Sampling, complete
    from capitu.ngram import NgramDecoder
    from capitu.references import joined, ppmd_bits, references, split_documents
    from capitu.tokenizer import load_tokenizer

    folder = DataFolder(data)
    if references_done(out, study, data):
        return
    result, model = references(data)
    val_bits = ppmd_bits(joined(split_documents(folder, "val")), joined(split_documents(folder, "train")))
    scored = folder.meta["splits"]["val"]["tokens"] - 1
    result["val_loss"] = {"ppmd": val_bits * math.log(2) / scored,
                          "ngram": result["ngram"]["val_loss_by_order"][str(model.order)]}
    tokenizer = load_tokenizer(folder.tokenizer_path)
    sampling = Sampling(temperature=study.temperature, top_k=study.top_k)
    result["generations"] = {prompt: complete(NgramDecoder(model), tokenizer, prompt, study.new_tokens, sampling,
                                              study.sample_seed) for prompt in study.prompts}
    atomic_write_json(StudyFolder(out).references, {"settings": references_settings(study, data), **result})


@contextlib.contextmanager
def references_beside(out: Path, study: StudyConfig, data: Path, wanted: bool):
    """With `wanted`, the references (minutes of one CPU core on a large corpus: docs/gpu.md) are computed in another
    process while the block trains on a GPU; leaving the block waits for them. A failure there is not lost: the later
    call of `references_stage` finds no file, computes them again and says what went wrong."""
    if not wanted or references_done(out, study, data):
        yield
        return
    process = multiprocessing.get_context("spawn").Process(target=references_stage, args=(out, study, data),
                                                           daemon=True)
    process.start()
    try:
        yield
        process.join()
    finally:
        if process.is_alive():  # interrupted: the file is written atomically, so nothing half-made is left
            process.terminate()
            process.join()


def lengths_that_fit(study: StudyConfig, test_tokens: int) -> StudyConfig:
    """The study with only the evaluation lengths its test split can fill; a longer one would score the whole split
    under that length's name (and the report's "—" means learned positions), so it is dropped with a warning."""
    fits = [length for length in study.eval_lengths if length <= test_tokens - 1]
    for length in sorted(set(study.eval_lengths) - set(fits)):
        warn(f"study: evaluation length {length} skipped: the test split has only {test_tokens - 1:,} tokens to score")
    return replace(study, eval_lengths=fits)


def duration(seconds: float) -> str:
    minutes, seconds = divmod(int(seconds), 60)
    return f"{minutes}m{seconds:02d}s" if minutes else f"{seconds}s"


def parse_shard(text: str) -> tuple[int, int]:
    """`K/N` as (K, N) with 1 <= K <= N."""
    number, _, count = text.partition("/")
    if not (number.isdigit() and count.isdigit() and 1 <= int(number) <= int(count)):
        raise UserError(f"--shard must be K/N with 1 <= K <= N (the K-th of N shares of the runs), got '{text}'")
    return int(number), int(count)


@contextlib.contextmanager
def forgotten_if_refused(out: Path):
    """A new study whose setup is refused (a source without texts, say) leaves its folder as it found it, empty, so
    that the same command with the input corrected starts it, rather than finding "another study" there."""
    new = not StudyFolder(out).plan.exists()
    try:
        yield
    except UserError:
        if new:
            for path in out.iterdir():
                if path.is_dir() and not path.is_symlink():
                    shutil.rmtree(path)
                elif path.name != SETUP_LOCK:
                    path.unlink()
        raise


@contextlib.contextmanager
def setup_lock(out: Path, sharded: bool):
    """Shards started at once into one folder set the study up (plan, data, budgets, generalization inputs) one at a
    time: the first does the work, the others find its files. An advisory lock (POSIX `flock`), none elsewhere.
    A refused setup that leaves nothing but the lock takes it away, and the folder if it made it, unless `sharded`
    (another shard may hold the lock: a file unlinked under it would let a third take a new one at once)."""
    made = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    try:
        with open(out / SETUP_LOCK, "a") as handle:  # closing the file releases the lock
            if fcntl is not None:
                fcntl.flock(handle, fcntl.LOCK_EX)
            yield
    except UserError:
        if not sharded and [path.name for path in out.iterdir()] == [SETUP_LOCK]:
            (out / SETUP_LOCK).unlink()
            if made:
                out.rmdir()
        raise


def train_jobs(jobs: list[tuple[str, int]], configs: dict[str, Config], study: StudyConfig, out: Path, device,
               progress: bool, say: Callable[[str], None], started: float) -> None:
    """Train (or resume, or skip) and evaluate each (variant, seed) of `jobs`, saying how far it is."""
    timed: list[float] = []
    for number, (name, seed) in enumerate(jobs, 1):
        run = StudyFolder(out).run(name, seed)
        config = copy.deepcopy(configs[name])
        config.run.seed = seed
        eta = f", about {duration(sum(timed) / len(timed) * (len(jobs) - number + 1))} left" if timed else ""
        say(f"[{number}/{len(jobs)}] {name} seed {seed} ({duration(time.perf_counter() - started)} so far{eta})")
        job_started = time.perf_counter()
        done = train_stage(config, run, progress)
        # the feed-forward LM reads a fixed window of n tokens: its perplexity has no context length
        lengths = [n for n in study.eval_lengths if n != config.model.block_size] if config.model.kind == "gpt" else []
        evaluate_stage(run, out, lengths, progress, device)
        say(f"    {done}, evaluated ({duration(time.perf_counter() - job_started)})")
        if done != "trained already":
            timed.append(time.perf_counter() - job_started)


def check_study_inputs(data: Path | None, source: str | None) -> None:
    """One line for data a study cannot start from."""
    if (data is None) == (source is None):
        raise UserError("give the data: --data DIR (a prepared folder) or --source SRC (prepared into OUT/data)")
    if data is not None and not DataFolder(data).is_prepared():
        raise UserError(f"--data {data} is not a prepared folder (no meta.json); prepare it or use --source")


def check_study_folder(out: Path) -> None:
    """A new study's folder is empty, but for the shards' lock file; one holding a study is continued."""
    check_output(Path(out), new=not StudyFolder(out).plan.is_file(), ignore=(SETUP_LOCK,))


def run_study(study: StudyConfig, variants: list[Variant], out: Path, data: Path | None = None,
              source: str | None = None, command: list[str] | None = None, progress: bool = True,
              device: str = "auto", say: Callable[[str], None] = partial(print, flush=True),
              shard: tuple[int, int] | None = None, started: float | None = None) -> Path | None:
    """Run (or continue) the study in `out` on `device` (training, evaluation, bench and generation), telling `say`
    how far it is; returns the path of report.md. With `shard` (K, N), only train and evaluate the runs whose place
    in the study's list is K modulo N (shards may run at once into the same `out`), and return None: the same call
    without a shard then benches and reports, training nothing that is done. Times count from `started` (a
    `time.perf_counter()`; default now): the command's start, where shards trained before this call."""
    from capitu.study.generalization import prepare_inputs
    from capitu.study.report import summary_table, write_report

    started = time.perf_counter() if started is None else started
    out = Path(out)
    check_study_inputs(data, source)
    torch_device = pick_device(device)
    # a config refused after the data is prepared would cost the preparation: check the configs first (the vocabulary
    # size a --source gets is not known yet, and no check depends on it)
    study_configs(study, variants, data if data is not None else out / "data",
                  DataFolder(data).vocab_size if data is not None else study.vocab_size)
    # shards started at once look at the folder only under the lock: before it, one may be seeing another's setup
    # half-way (a file being written, the plan not yet there)
    if shard is None:
        check_study_folder(out)
    with setup_lock(out, sharded=shard is not None):
        if shard is not None:
            check_study_folder(out)
        clean_leftovers(out)
        with forgotten_if_refused(out):
            record_plan(out, study, variants, str(data) if data is not None else f"source:{source}")
            data = prepare_data(out, study, data, source, progress)
            configs = study_configs(study, variants, data, DataFolder(data).vocab_size, device)
            budgets = plan_budgets(out, study, configs, torch_device)
            prepare_inputs(out, study, data)
    for name, config in configs.items():
        config.run.tokens, config.run.steps = budgets[name]["tokens"], 0
    study = lengths_that_fit(study, DataFolder(data).meta["splits"]["test"]["tokens"])
    jobs = [(variant.name, seed) for seed in study.seed_list for variant in variants]
    if shard is not None:
        jobs = jobs[shard[0] - 1::shard[1]]
    # the references need no GPU: on one, they are computed beside the training (by one shard only)
    beside = torch_device.type != "cpu" and (shard is None or shard[0] == 1)
    with references_beside(out, study, data, beside):
        train_jobs(jobs, configs, study, out, torch_device, progress, say, started)
    if shard is not None:
        say(f"shard {shard[0]}/{shard[1]} done: {len(jobs)} run(s) in {duration(time.perf_counter() - started)}; when "
            "every shard is done, the same command without --shard benches and reports")
        return None
    first_runs = {variant.name: StudyFolder(out).run(variant.name, study.first_seed) for variant in variants}
    if study.bench:
        bench_stage(first_runs, study, device, say)
    say("generating")
    generation_stage(out, study, first_runs, torch_device)
    say("references: PPMd, xz and the Kneser-Ney n-gram model on the same test split")
    references_stage(out, study, data)
    report, results = write_report(out, study, variants, data, command or sys.argv, time.perf_counter() - started)
    say(f"study done in {duration(time.perf_counter() - started)}: {report} (and report.html beside it)")
    say(summary_table(results))
    return report
