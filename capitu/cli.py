"""The `capitu` command: one subcommand per stage of the pipeline.

Every subcommand turns a `UserError` into a one-line message and exit code 2."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
import time
from pathlib import Path

from capitu import __version__
from capitu.config import DEFAULT_VOCAB_SIZE
from capitu.errors import UserError


def int_list(flag: str):
    """An argparse type: comma-separated integers, as a tuple."""
    def parse(text: str) -> tuple[int, ...]:
        try:
            return tuple(int(n) for n in text.split(","))
        except ValueError:
            raise argparse.ArgumentTypeError(f"{flag} expects comma-separated integers, got {text}") from None
    return parse


def options_of(kind, args, **given):
    """A dataclass of options from the parsed arguments of the same names (and `given`)."""
    fields = {f.name for f in dataclasses.fields(kind)}
    return kind(**{name: value for name, value in vars(args).items() if name in fields}, **given)


def add_device_option(p, what: str = "") -> None:
    p.add_argument("--device", default="auto", help=f"cpu, cuda or mps{what} (default: the best available)")


def add_prepare(commands) -> None:
    from capitu.data.prepare import PrepareOptions as defaults

    p = commands.add_parser(
        "prepare", help="clean, deduplicate and split a corpus; train a tokenizer; write token files",
        description="Turn a folder, file, archive or named source of Portuguese texts into a clean, "
        "deduplicated, leak-free train/val/test split, a tokenizer and token files.")
    p.add_argument("--source", required=True, help="a folder, a .txt(.gz/.xz/.bz2) file, a .zip/.tar.* archive, "
                   "or a named source (machado)")
    p.add_argument("--out", required=True, type=Path, help="output folder (train.bin, val.bin, test.bin, "
                   "tokenizer.json, meta.json)")
    p.add_argument("--tokenizer", choices=["bpe", "char"], default=defaults.tokenizer,
                   help="byte-level BPE (default) or characters")
    for flag, kind, words in (("--vocab-size", int, "BPE vocabulary size"),
                              ("--seed", int, "seed of the document split"),
                              ("--val-fraction", float, "share of bytes for validation"),
                              ("--test-fraction", float, "share of bytes for test"),
                              ("--min-paragraph-chars", int, "paragraphs shorter than this (normalised) are never "
                               "deduplicated"),
                              ("--min-document-chars", int, "documents left shorter than this after deduplication "
                               "are dropped")):
        default = getattr(defaults, flag[2:].replace("-", "_"))
        p.add_argument(flag, type=kind, default=default, help=f"{words} (default {default})")
    p.add_argument("--strict", action="store_true", help="treat undecodable, binary or non-UTF-8 files as errors")
    p.add_argument("--force", action="store_true", help="rebuild even if the output is up to date")
    p.add_argument("--cache", dest="cache_dir", type=Path, default=None, help="download cache for named sources "
                   "(default $CAPITU_CACHE or ~/.cache/capitu)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(handler=run_prepare)


def run_prepare(args) -> None:
    from capitu.data.prepare import PrepareOptions, format_summary, prepare

    if args.cache_dir is None:
        del args.cache_dir  # the dataclass's default
    print(format_summary(prepare(options_of(PrepareOptions, args, progress=not args.quiet))))


def add_models(commands) -> None:
    p = commands.add_parser(
        "models", help="table of the model variants of a preset: parameters, KV-cache bytes per token",
        description="Build every variant of the grid on a preset and print its parameter counts, "
        "training FLOPs per token and KV-cache bytes per token (fp32 and bf16). With --study (or --config), "
        "the models capitu study trains: the study's pinned settings and grid, and each variant's training "
        "tokens under its budget.")
    p.add_argument("--preset", default="tiny", help="tiny, small or gpt2 (default tiny)")
    p.add_argument("--study", action="store_true", help="the variants as capitu study --preset PRESET trains them "
                   "(capitu/presets/study/PRESET.toml), not as capitu train --preset PRESET does")
    p.add_argument("--config", type=Path, help="a study TOML, as capitu study --config takes (implies --study)")
    p.add_argument("--vocab-size", type=int, help=f"vocabulary size (default: the study's with --study, else "
                   f"{DEFAULT_VOCAB_SIZE}, capitu prepare's)")
    p.add_argument("--grid", help="a shipped grid (full: all eleven variants, the default without --study; core: "
                   "the default study's six; ladder: GPT-2 to the modern recipe) or a grid TOML file")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a value of the preset (after the study's, with --study) before the variants "
                   "apply theirs (repeatable), e.g. --set model.n_layer=8")
    p.add_argument("--json", action="store_true", help="print JSON instead of the table")
    p.set_defaults(handler=run_models)


def run_models(args) -> None:
    result = models_table(args)
    print(json.dumps(result, indent=1) if args.json else format_models(result))


def models_table(args) -> dict:
    """The variants' sizes, FLOPs, KV-cache bytes (and, with a study, training tokens) as a dict."""
    from capitu.config import load_config
    from capitu.models import build_model
    from capitu.study.config import load_study
    from capitu.study.runner import planned_tokens, study_configs
    from capitu.study.variants import load_grid, variant_config
    from capitu.tokenizer import check_vocab_size

    result = {"preset": args.preset, "set": args.overrides, "study": None}
    if args.study or args.config:
        study, variants = load_study(args.preset, args.config, grid=args.grid)
        if any(override.startswith("model.vocab_size=") for override in args.overrides):
            raise UserError("a study's vocabulary is its data's, not a --set: give --vocab-size")
        vocab = args.vocab_size if args.vocab_size is not None else study.vocab_size
        check_vocab_size(vocab, 1)  # before building anything of that size
        study.set += args.overrides
        configs = study_configs(study, variants, None, vocab)
        result["preset"] = study.preset  # the model preset: a study file may name its own
        result["study"] = {"preset": args.preset, "config": str(args.config) if args.config else None,
                           "seeds": study.seeds, "budget": study.budget, "seconds": study.seconds}
    else:
        study = None
        vocab = DEFAULT_VOCAB_SIZE if args.vocab_size is None else args.vocab_size
        base = load_config(args.preset, overrides=[f"model.vocab_size={vocab}", *args.overrides])  # --set wins
        check_vocab_size(base.model.vocab_size, 1)  # before building anything of that size (a widened variant)
        configs = {variant.name: variant_config(base, variant) for variant in load_grid(args.grid or "full")}
    baseline = next(iter(configs.values())).model
    result.update(vocab_size=baseline.vocab_size, context=baseline.block_size)
    models = {name: build_model(config.model) for name, config in configs.items()}
    tokens = {}
    if study and study.budget != "seconds":  # a seconds budget's tokens are measured when the study starts
        tokens = planned_tokens(study, configs, {name: m.flops_per_token() for name, m in models.items()}, {})
    result["variants"] = [
        {"name": name, "params": model.num_params(), "non_embedding_params": model.num_params(False),
         "flops_per_token": model.flops_per_token(), "kv_bytes_per_token_fp32": model.kv_bytes_per_token(4),
         "kv_bytes_per_token_bf16": model.kv_bytes_per_token(2), "train_tokens": tokens.get(name)}
        for name, model in models.items()]
    return result


def format_models(result: dict) -> str:
    changed = "".join(f", {override}" for override in result["set"])
    study, lines = result["study"], []
    if study:
        config = f" --config {study['config']}" if study["config"] else ""
        lines.append(f"capitu study --preset {study['preset']}{config}{changed}: {len(result['variants'])} "
                     f"variants x {study['seeds']} seed{'s' * (study['seeds'] != 1)}, {study['budget']} budget")
    lines.append(f"preset {result['preset']}{changed}, vocab {result['vocab_size']:,}, context {result['context']}")
    with_tokens = study is not None and study["budget"] != "seconds"
    lines.append(f"{'variant':<11} {'params':>12} {'non-emb':>12} {'MFLOP/tok':>10} {'KV B/tok fp32':>14} {'bf16':>8}"
                 + (f" {'train tokens':>13}" if with_tokens else ""))
    for v in result["variants"]:
        lines.append(f"{v['name']:<11} {v['params']:>12,} {v['non_embedding_params']:>12,} "
                     f"{v['flops_per_token'] / 1e6:>10.2f} {v['kv_bytes_per_token_fp32']:>14,} "
                     f"{v['kv_bytes_per_token_bf16']:>8,}" + (f" {v['train_tokens']:>13,}" if with_tokens else ""))
    if study and not with_tokens:
        lines.append(f"(each variant trains {study['seconds']:g} s; its tokens are its training rate, measured when "
                     "the study starts)")
    return "\n".join(lines)


def add_export(commands) -> None:
    p = commands.add_parser(
        "export", help="export a run's model to HF transformers (GPT-2, GPT-NeoX or Llama)",
        description="Write the model of RUN as a folder that transformers loads, tokenizer included: a "
        "GPT-2-shaped model (learned positions, LayerNorm, GELU, biases, tied) as GPT2LMHeadModel, the same "
        "blocks with RoPE (tied or not, multi-head) as GPTNeoXForCausalLM, a Llama-shaped one (RoPE, RMSNorm, "
        "SwiGLU, no biases; tied or not; MHA, GQA or MQA) as LlamaForCausalLM. The tokenizer puts end-of-text "
        "before a prompt and reads text in NFC, as capitu generate does. Given a finished study, it exports the "
        "first-seed run of its best variant (test bits per byte) that has an HF equivalent, saying which.")
    p.add_argument("run", type=Path, help="a run or model folder (model.safetensors, config.json), or a finished "
                   "study folder")
    p.add_argument("--format", choices=["hf"], default="hf", help="output format (hf)")
    p.add_argument("--out", type=Path, required=True, help="output folder (must be new or empty)")
    p.set_defaults(handler=_export)


def _export(args) -> None:
    from capitu.folders import StudyFolder
    from capitu.hf import export_hf

    run = args.run
    if StudyFolder(run).plan.is_file():
        run, said = best_exportable(StudyFolder(run))
        for line in said:
            print(line)
    architecture = export_hf(run, args.out)
    print(f"exported {run} to {args.out} (HF {architecture})")


def best_exportable(study) -> tuple[Path, list[str]]:
    """The first-seed run of the study's best variant by mean test bits per byte that has an HF equivalent, and a
    line for it and for each better one passed over."""
    from capitu.checkpoint import model_config, read_config
    from capitu.hf import check_exportable

    if not study.results.is_file():
        raise UserError(f"{study.path} has no results.json yet: finish the study (capitu study ... --out "
                        f"{study.path}), or give one of its runs")
    try:
        ranked = sorted(json.loads(study.results.read_text(encoding="utf-8"))["variants"],
                        key=lambda entry: entry["bpb"]["mean"])
        bpb = {entry["name"]: entry["bpb"]["mean"] for entry in ranked}
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise UserError(f"{study.results}: not a study's results capitu can read ({error})") from None
    runs = dict(study.first_seed_runs())
    if set(bpb) - set(runs):
        raise UserError(f"{study.results} names variants that {study.plan} does not: "
                        f"{', '.join(sorted(set(bpb) - set(runs)))}")
    said = []
    for place, name in enumerate(bpb, 1):
        try:
            check_exportable(model_config(read_config(runs[name])))
        except UserError as error:
            said.append(f"{name} ({place} of {len(bpb)}, {bpb[name]:.4f} bits/byte): not exported: {error}")
            continue
        said.append(f"{name}: {place} of {len(bpb)} by test bits per byte ({bpb[name]:.4f}), the best with an HF "
                    "equivalent")
        return runs[name], said
    raise UserError(f"none of the {len(bpb)} variants of {study.path} has an HF equivalent")


def add_import(commands) -> None:
    p = commands.add_parser(
        "import", help="bring an HF GPT-2 checkpoint (or a GPT-NeoX or Llama one) in as a capitu model folder",
        description="Convert an HF folder (config.json, model.safetensors, tokenizer.json) into a capitu model "
        "folder that eval, generate, serve and bench use: GPT-2, or GPT-NeoX and Llama of the shapes capitu "
        "export writes (sequential residuals, whole heads rotated, no biases in Llama), at their norms' epsilon.")
    p.add_argument("folder", type=Path, help="an HF GPT-2, GPT-NeoX or Llama folder")
    p.add_argument("--out", type=Path, required=True, help="the capitu model folder to write (must be new or empty)")
    p.set_defaults(handler=_import)


def _import(args) -> None:
    from capitu.hf import import_hf

    import_hf(args.folder, args.out)
    print(f"imported {args.folder} into {args.out}")


def add_train(commands) -> None:
    p = commands.add_parser(
        "train", help="train a model from scratch (or resume a run)",
        description="Train a model on a folder made by `capitu prepare`. The config starts from a preset, "
        "then --config FILE.toml, then --set overrides (e.g. --set model.pos=rope). "
        "Under torchrun it trains with DDP: torchrun --nproc_per_node=N -m capitu train ...")
    p.add_argument("--data", help="a prepared data folder (train.bin, val.bin, meta.json)")
    p.add_argument("--preset", help="tiny, small or gpt2 (default tiny)")
    p.add_argument("--config", type=Path, help="a TOML file with [model], [optim], [data], [run] sections")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. model.n_kv_head=2 (repeatable)")
    p.add_argument("--out", type=Path, required=True, help="the run folder")
    p.add_argument("--tokens", type=int, help="budget in training tokens (run.tokens)")
    p.add_argument("--steps", type=int, help="budget in optimizer steps (run.steps; the schedule's length)")
    p.add_argument("--time", type=float, help="budget in seconds of training (run.time): alone, it sets the "
                   "schedule's length in place of the preset's tokens; with --tokens or --steps, it stops earlier")
    p.add_argument("--device", help="cuda, mps, cpu (run.device; default: the best available)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    p.add_argument("--pause-at", type=int, default=0, metavar="STEP",
                   help="checkpoint and stop at this step (continue later with --resume)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(handler=run_train)


def run_train(args) -> None:
    from capitu.config import load_config
    from capitu.train.trainer import train

    overrides = list(args.overrides)
    if args.data:
        overrides.append(f"data.path={json.dumps(str(args.data))}")
    for flag in ("tokens", "steps", "time"):
        if getattr(args, flag) is not None and not getattr(args, flag) > 0:
            raise UserError(f"--{flag} must be positive, got {getattr(args, flag)}")
    # what the user asked for; on --resume it replaces the saved values (a token budget clears the steps)
    settings = {key: getattr(args, key) for key in ("tokens", "steps", "time", "device") if getattr(args, key)}
    if args.tokens is not None and args.steps is None:
        settings["steps"] = 0
    if args.time is not None and args.tokens is None and args.steps is None:
        settings.update(tokens=0, steps=0)
    if not args.resume and not args.data and not any(o.startswith("data.path=") for o in overrides):
        raise UserError("--data is required (a folder made by capitu prepare)")
    # with --resume, a config given too (the same command again, say) is checked against the run's own
    given = args.preset or args.config or args.overrides or args.data
    config = load_config(args.preset or "tiny", args.config, overrides) if given or not args.resume else None
    last = train(config, args.out, resume=args.resume, pause_at=args.pause_at, progress=not args.quiet,
                 run_settings=settings)
    if "train_loss" not in last:  # resumed where it was to stop: not one step ran
        where = "the end of its budget" if last["stopped"] == "budget" else f"at or past --pause-at {args.pause_at}"
        print(f"{args.out}: nothing to train: the run is at step {last['step']} ({last['tokens']:,} tokens), {where}; "
              "--steps, --tokens or --time extend it")
        return
    summary = f"step {last.get('step')}, {last.get('tokens', 0):,} tokens, "
    summary += f"train loss {last.get('train_loss', float('nan')):.4f}"
    if "val_loss" in last:
        summary += f", val loss {last['val_loss']:.4f}"
    if last.get("stopped") in ("SIGINT", "SIGTERM"):
        print(f"capitu: {last['stopped']}: checkpoint saved at {summary}; continue with --resume", file=sys.stderr)
        raise SystemExit(130)
    state = "finished" if last.get("stopped") == "budget" else f"paused ({last.get('stopped')}); continue with --resume"
    print(f"{args.out}: {state} at {summary}")


def add_eval(commands) -> None:
    p = commands.add_parser(
        "eval", help="perplexity, bits per byte and word perplexity of a run on a split or a text",
        description="Score RUN over a whole split (non-overlapping windows of its training context, or "
        "sliding windows with --stride) or over any text (--text), optionally at other context lengths.")
    p.add_argument("run", type=Path, help="a run folder (or its best/ folder)")
    p.add_argument("--split", choices=["train", "val", "test"],
                   help="default test (with --pairs: none, unless given); not with --text")
    p.add_argument("--text", type=Path, help="a text file or folder, cleaned and tokenized as prepare does")
    p.add_argument("--lengths", type=int_list("--lengths"), help="other context lengths, e.g. "
                   "128,256,512,1024,2048 (one past learned positions' context, or longer than the text, is "
                   "reported as not supported)")
    p.add_argument("--stride", type=int, default=0, help="sliding-window step (default: the context, no overlap)")
    p.add_argument("--pairs", type=Path, help="score minimal pairs (capitu pairs): accuracy overall and per "
                   "phenomenon, with a unigram model of the training split beside it; alone unless --split or "
                   "--text is given too")
    add_device_option(p)
    p.add_argument("--json", action="store_true", help="print the JSON result instead of the table")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(handler=run_eval)


def run_eval(args) -> None:
    from capitu.device import pick_device
    from capitu.evaluate import evaluate_run, format_pairs, format_table, score_pairs
    from capitu.folders import RunFolder
    from capitu.paths import atomic_write_json

    if args.split and args.text:
        raise UserError(f"give --split or --text, not both (--text {args.text} is scored instead of a split)")
    lengths = list(args.lengths) if args.lengths else None
    if lengths and min(lengths) < 1:
        raise UserError("--lengths must be positive")
    args.device = pick_device(args.device)
    pairs = score_pairs(args.run, args.pairs, args.device, not args.quiet) if args.pairs else None
    if pairs and not (args.split or args.text):
        result = {"run": str(args.run), "pairs": pairs}
        print(json.dumps(result, indent=1) if args.json else format_pairs(result), flush=True)
        return
    split = args.split or "test"
    result = evaluate_run(args.run, split, args.text, lengths, args.stride, args.device, not args.quiet)
    if pairs:
        result["pairs"] = pairs
    table = format_table(result) + ("\n" + format_pairs(result) if pairs else "")
    print(json.dumps(result, indent=1) if args.json else table, flush=True)
    path = RunFolder(args.run).evaluation_path(None if args.text else split)
    try:
        atomic_write_json(path, result)
    except OSError as error:  # a read-only run: the result above is all there is
        raise UserError(f"could not save {path}: {error.strerror or error} (the result is printed above)") from None


def add_pairs(commands) -> None:
    p = commands.add_parser(
        "pairs", help="grammatical minimal pairs from Universal Dependencies treebanks (capitu eval --pairs)",
        description="For each sentence of the CoNLL-U files and each agreement in it (subject-verb number and "
        "person, determiner-noun and adjective-noun gender and number, predicative adjective or participle), "
        "write the sentence and the same sentence with one word replaced by an attested form of its lemma that "
        "breaks that agreement. Score a run on them with capitu eval RUN --pairs FILE.")
    p.add_argument("--ud", type=Path, nargs="+", required=True, metavar="FILE.conllu",
                   help="UD treebank files, or folders of them (their *.conllu files)")
    p.add_argument("--out", type=Path, required=True, help="the pairs, one JSON object per line")
    p.set_defaults(handler=run_pairs)


def run_pairs(args) -> None:
    from collections import Counter

    from capitu.pairs import minimal_pairs, treebank_files
    from capitu.paths import atomic_write_bytes, check_writable

    if args.out.exists():
        raise UserError(f"--out {args.out} exists; give a new file")
    if not args.out.parent.is_dir():
        raise UserError(f"--out {args.out}: no folder {args.out.parent}")
    check_writable(args.out.parent)
    files = []
    for path in args.ud:
        if path.is_dir() and not treebank_files(path):
            raise UserError(f"--ud {path}: a folder without .conllu files")
        files += treebank_files(path)
    pairs = minimal_pairs(files)
    if not pairs:
        raise UserError("no minimal pairs in the given files")
    atomic_write_bytes(args.out, "".join(json.dumps(p, ensure_ascii=False) + "\n" for p in pairs).encode("utf-8"))
    counts = Counter(p["phenomenon"] for p in pairs)
    print(f"{args.out}: {len(pairs):,} pairs; " + ", ".join(f"{name} {n:,}" for name, n in sorted(counts.items())))


def add_references(commands) -> None:
    p = commands.add_parser(
        "references", help="what a model must beat on the same text: PPMd, xz and a Kneser-Ney n-gram",
        description="Score the references on a split of a prepared folder (or on any text with --text) in bits per "
        "byte, the models' unit: PPMd (variant H, order 8) primed with the training split and alone, xz -9e alone, "
        "and an interpolated modified Kneser-Ney n-gram model over the folder's BPE tokens (order 2-6 chosen on "
        "validation). With --prompt, the n-gram model continues prompts under capitu generate's sampling options.")
    p.add_argument("--data", type=Path, required=True, help="a prepared data folder (its train split primes PPMd "
                   "and trains the n-gram model)")
    p.add_argument("--split", default="test", choices=["train", "val", "test"], help="default test")
    p.add_argument("--text", type=Path, help="a text file or folder to score instead of a split")
    p.add_argument("--json", action="store_true", help="print the JSON result instead of the table")
    p.add_argument("--prompt", action="append", default=None, help="a prompt for the n-gram model (repeatable)")
    add_sampling_options(p)
    p.set_defaults(handler=run_references)


def run_references(args) -> None:
    from capitu.folders import DataFolder
    from capitu.generate import complete
    from capitu.ngram import NgramDecoder
    from capitu.references import format_references, references
    from capitu.tokenizer import load_tokenizer

    sampling = sampling_of(args)
    say = (lambda line: print(f"capitu: {line}", file=sys.stderr, flush=True)) if sys.stderr.isatty() else None
    result, model = references(args.data, args.split, args.text, say=say, progress=True)
    tokenizer = load_tokenizer(DataFolder(args.data).tokenizer_path) if args.prompt else None
    samples = [{"prompt": prompt, "model": f"{model.order}-gram",
                "text": complete(NgramDecoder(model), tokenizer, prompt, args.new_tokens, sampling, args.seed)}
               for prompt in args.prompt or []]
    if args.json:  # the samples inside the JSON: stdout stays one JSON document
        print(json.dumps({**result, **({"samples": samples} if samples else {})}, indent=1), flush=True)
        return
    print(format_references(result), flush=True)
    for sample in samples:
        print(f"\n--- the {sample['model']} model: {sample['prompt']!r}\n{sample['text']}")


def add_compile_option(p, note: str) -> None:
    """--compile / --no-compile, on by default: decoding through decode.py's compiled step."""
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=True,
                   help=f"decode through the KV cache and a compiled step (gpt-fast's method; the default: {note}); "
                   "--no-compile: the eager loop")


def add_generate(commands) -> None:
    p = commands.add_parser(
        "generate", help="continue Portuguese prompts with a run's model (KV cache, streaming, comparisons)",
        description="Sample a continuation of each prompt from RUN. A prompt is read as the start of a "
        "document (after end-of-text, as in training); an empty prompt starts from end-of-text. "
        "--compare prints every run's continuation of the same prompts with the same seed.")
    p.add_argument("run", type=Path, nargs="?", help="a run or model folder, or a study folder (its variants' "
                   "first-seed runs, side by side)")
    p.add_argument("--prompt", action="append", default=None, help="a prompt (repeatable; default: empty)")
    p.add_argument("--prompts", type=Path, help="a UTF-8 file with one prompt per line")
    add_sampling_options(p)
    p.add_argument("--stream", action="store_true", help="print tokens as they are generated")
    p.add_argument("--compare", type=Path, nargs="+", metavar="RUN", help="more runs to put side by side")
    p.add_argument("--markdown", action="store_true", help="Markdown tables, a column per run (with --compare)")
    add_device_option(p)
    add_compile_option(p, "the same text, compiled once per model and batch size")
    p.set_defaults(handler=run_generate)


def add_sampling_options(p) -> None:
    p.add_argument("-n", "--new-tokens", type=int, default=200, help="tokens to generate (default 200)")
    p.add_argument("--temperature", type=float, default=0.8, help="0 is greedy (default 0.8)")
    p.add_argument("--top-k", type=int, default=0, help="keep the k most likely tokens (default 0: all)")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus: keep the smallest set with this mass (default 1)")
    p.add_argument("--repetition-penalty", type=float, default=1.0, help="CTRL penalty, >1 discourages repeats "
                   "(default 1: none)")
    p.add_argument("--seed", type=int, default=1337, help="sampling seed (default 1337)")


def sampling_of(args):
    """The validated Sampling of --temperature, --top-k, --top-p and --repetition-penalty."""
    from capitu.generate import Sampling

    if args.new_tokens < 1:
        raise UserError(f"-n/--new-tokens must be at least 1, got {args.new_tokens}")
    sampling = options_of(Sampling, args)
    sampling.validate()
    return sampling


def run_generate(args) -> None:
    from capitu.device import pick_device
    from capitu.folders import StudyFolder
    from capitu.generate import as_trained, compare, complete, load_for_generation, read_prompts, run_labels
    from capitu.pages import markdown_comparison

    given = ([args.run] if args.run else []) + (args.compare or [])
    if not given:
        raise UserError("give a run folder (capitu generate RUN --prompt ...)")
    runs = [run for path in given for run in ([run for _, run in StudyFolder(path).first_seed_runs()]
                                               if StudyFolder(path).plan.is_file() else [path])]
    sampling = sampling_of(args)
    prompts = (args.prompt or []) + (read_prompts(args.prompts) if args.prompts else [])
    prompts = prompts or [""]
    if args.stream and (len(runs) > 1 or args.markdown):
        raise UserError("--stream prints one run's text as it comes: not with several runs (--compare, a study) or "
                        "--markdown")
    device = pick_device(args.device, 0)
    if len(runs) > 1 or args.markdown:  # a comparison of one run is its Markdown table too
        labels = dict(zip(map(str, runs), run_labels(runs)))
        results = [{"prompt": entry["prompt"], "outputs": {labels[run]: text for run, text in entry["outputs"].items()}}
                   for entry in compare(runs, prompts, args.new_tokens, sampling, args.seed, device, args.compile)]
        if args.markdown:
            print(markdown_comparison(results))
            return
        for entry in results:
            print(f"=== prompt: {entry['prompt']!r}")
            for run, text in entry["outputs"].items():
                print(f"--- {run}\n{text}\n")
        return
    decoder, tokenizer = load_for_generation(runs[0], device, args.compile)
    for number, prompt in enumerate(prompts):
        if number:
            print("\n" + "-" * 40)
        if args.stream:
            print(as_trained(prompt), end="", flush=True)  # as the text without --stream gives it back
            complete(decoder, tokenizer, prompt, args.new_tokens, sampling, args.seed,
                     write=lambda piece: print(piece, end="", flush=True))
            print()
        else:
            print(complete(decoder, tokenizer, prompt, args.new_tokens, sampling, args.seed))


def add_bench(commands) -> None:
    p = commands.add_parser(
        "bench", help="tokens/s (training, prefill, decode), peak memory and KV-cache size of a model",
        description="Measure a run's model (RUN) or a preset's (--preset, with --set overrides): training "
        "tokens/s, prefill and decode tokens/s at batch 1 and 16, peak memory of training and of "
        "generation (CUDA: max allocated; CPU: peak RSS of a measuring subprocess), KV-cache bytes per "
        "token and the SDPA kernel that ran.")
    p.add_argument("run", type=Path, nargs="?", help="a run or model folder")
    p.add_argument("--preset", help="bench a fresh model of this preset instead of a run")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="with --preset: override a config value (repeatable)")
    add_device_option(p)
    p.add_argument("--train-steps", type=int, default=5, help="timed training steps (default 5)")
    p.add_argument("--prompt-length", type=int, default=0, help="prompt tokens (default: half the context)")
    p.add_argument("--new-tokens", type=int, default=0, help="generated tokens (default: the rest of the context)")
    p.add_argument("--batch-sizes", type=int_list("--batch-sizes"), default=(1, 16),
                   help="generation batch sizes (default 1,16)")
    p.add_argument("--repeats", type=int, default=3, help="generation runs per batch size, best kept (default 3)")
    add_compile_option(p, "reports decode_path and compile_s")
    p.add_argument("--json", action="store_true", help="print JSON instead of the table")
    p.set_defaults(handler=run_bench)


def run_bench(args) -> None:
    from capitu.bench import BenchOptions, bench, config_of_run, format_table
    from capitu.checkpoint import read_config
    from capitu.config import load_config
    from capitu.device import pick_device
    from capitu.folders import RunFolder

    if bool(args.run) == bool(args.preset):
        raise UserError("give either a run folder or --preset")
    pick_device(args.device)  # here, not in the bench's worker process, so that a wrong one is one plain line
    options = options_of(BenchOptions, args)
    if args.run:
        if args.overrides:
            raise UserError("--set applies to --preset only (a run's model is fixed)")
        config, weights = config_of_run(read_config(args.run)), str(RunFolder(args.run).weights)
    else:
        config, weights = load_config(args.preset, overrides=args.overrides), None
        if not config.model.vocab_size:
            config.model.vocab_size = DEFAULT_VOCAB_SIZE
    result = bench(config, weights, options)
    print(json.dumps(result, indent=1) if args.json else format_table(result))


def add_study(commands) -> None:
    p = commands.add_parser(
        "study", help="train the baseline and its variants on equal budgets, evaluate, bench, sample, report",
        description="Run the grid of variants (a shipped grid, capitu/presets/grids/, or the [[variant]]s of "
        "--config) x seeds on the same data and a fair budget (equal tokens, FLOPs or seconds); evaluate each "
        "on the test split at several context "
        "lengths, bench it, sample the same prompts, and write report.md, report.html, results.json and "
        "results.csv into --out. Stopped, it continues where it stopped when run again.")
    p.add_argument("--preset", default="tiny", help="tiny, small or gpt2 (default tiny); also picks the study "
                   "defaults in capitu/presets/study/")
    p.add_argument("--config", type=Path, help="a study TOML: a [study] table and, optionally, [[variant]]s")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--data", type=Path, help="a folder made by capitu prepare")
    source.add_argument("--source", help="texts to prepare into OUT/data (as capitu prepare --source)")
    p.add_argument("--out", type=Path, required=True, help="the study folder, e.g. studies/tiny")
    p.add_argument("--seeds", type=int, help="training seeds per variant (default: the preset's study setting)")
    p.add_argument("--grid", help="a shipped grid (core: the default study's six variants; full: all eleven; "
                   "ladder: GPT-2 to the modern recipe, one change per rung) or a grid TOML file (default: the "
                   "preset's study setting)")
    p.add_argument("--tokens", type=int, help="the baseline's training tokens (study.tokens; default: the preset's "
                   "study setting)")
    add_device_option(p, " for every stage")
    p.add_argument("--shard", help="K/N: train and evaluate only the K-th of N disjoint shares of the runs (one "
                   "process per GPU or per node, all into the same --out, at once); then the same command without "
                   "--shard benches and reports")
    p.add_argument("--jobs", type=int, default=1, help="N: train the runs in N processes at once (the same command "
                   "with --shard 1/N ... N/N; one GPU each where there are several, else they share one), then "
                   "bench and report (default 1)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(handler=run_study_command)


def run_study_command(args) -> None:
    from capitu.study.config import load_study
    from capitu.study.jobs import run_shards
    from capitu.study.runner import check_study_folder, check_study_inputs, parse_shard, run_study

    started = time.perf_counter()  # the study's time is the command's, --jobs' shards included
    shard = parse_shard(args.shard) if args.shard is not None else None
    study, variants = load_study(args.preset, args.config, args.seeds, args.grid, args.tokens)
    if args.jobs != 1:
        if args.jobs < 1 or shard is not None:
            raise UserError(f"--jobs must be a positive number, and not given with --shard; got --jobs {args.jobs}")
        check_study_inputs(args.data, args.source)
        check_study_folder(args.out)
        given = {"--preset": args.preset, "--config": args.config, "--data": args.data, "--source": args.source,
                 "--out": args.out, "--seeds": args.seeds, "--grid": args.grid, "--tokens": args.tokens,
                 "--device": args.device}
        run_shards([str(item) for key, value in given.items() if value is not None for item in (key, value)],
                   args.jobs, args.device, lambda line: print(line, flush=True))
    run_study(study, variants, args.out, data=args.data, source=args.source, command=["capitu", *sys.argv[1:]],
              progress=not args.quiet, device=args.device, shard=shard, started=started)


def add_serve(commands) -> None:
    p = commands.add_parser(
        "serve", help="a local web page: the models write side by side, and you judge them blind",
        description="Serve a page (and a JSON API under /api) where every model of a study (its first-seed "
        "runs) or the given runs continue your prompts side by side, streaming, and where two models drawn at "
        "random continue the same prompt as A and B for a blind vote; votes go to SQLite and give a "
        "Bradley-Terry ranking. Binds to loopback unless --host says otherwise.")
    p.add_argument("paths", type=Path, nargs="+", metavar="PATH", help="a study folder, or run folders")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    p.add_argument("--votes", type=Path, help="the votes database (default: PATH/votes.sqlite of the first PATH)")
    add_device_option(p)
    add_compile_option(p, "each model compiles on its first generation")
    p.set_defaults(handler=run_serve)


def run_serve(args) -> None:
    from capitu.serve import create_app, listen, serve

    if not 0 < args.port < 65536:
        raise UserError(f"--port must be between 1 and 65535, got {args.port}")
    app = create_app(args.paths, args.votes, args.device, compile=args.compile)
    with listen(args.host, args.port) as sock:
        app.state.server.votes  # opened here, holding the port: a votes path that is not a database is one line
        count = len(app.state.server.models)
        print(f"capitu serve: {count} model{'s' * (count != 1)} at http://{args.host}:{args.port}/ "
              f"(votes: {app.state.server.votes_path}); Ctrl-C stops", flush=True)
        serve(app, sock)


def add_votes(commands) -> None:
    p = commands.add_parser(
        "votes", help="the ranking of the blind votes cast in capitu serve",
        description="Bradley-Terry strengths (Elo scale) with 95% bootstrap intervals and vote counts, from a "
        "votes file written by capitu serve (a study folder's votes.sqlite by default).")
    p.add_argument("votes", type=Path, metavar="VOTES", help="a votes.sqlite file, or the folder that holds it")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(handler=run_votes)


def run_votes(args) -> None:
    from capitu.folders import StudyFolder
    from capitu.votes import format_ranking, ranking, read_votes

    # a path without a suffix names a folder, there or not: a mistyped study folder is then an error, not
    # "no votes yet"
    is_folder = args.votes.is_dir() or not args.votes.suffix
    path = StudyFolder(args.votes).votes if is_folder else args.votes
    result = ranking(read_votes(path))
    print(json.dumps(result, indent=1) if args.json else format_ranking(result))


class OneLineErrors(argparse.ArgumentParser):
    """Usage errors as one line (`capitu: error: ...`, exit 2), as every other error: the
    usage block is what --help is for."""

    def error(self, message):
        self.exit(2, f"{self.prog.split()[0]}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineErrors(
        prog="capitu",
        description="Build, train, compare and understand small GPT-2-style language models for Portuguese.")
    parser.add_argument("--version", action="version", version=f"capitu {__version__}")
    commands = parser.add_subparsers(title="commands", metavar="COMMAND", required=True,
                                     parser_class=OneLineErrors)
    add_prepare(commands)
    add_models(commands)
    add_export(commands)
    add_import(commands)
    add_train(commands)
    add_eval(commands)
    add_pairs(commands)
    add_references(commands)
    add_generate(commands)
    add_bench(commands)
    add_study(commands)
    add_serve(commands)
    add_votes(commands)
    return parser


class OneLineNotes(logging.Handler):
    """The library's warnings as `capitu: warning: ...` on stderr (the one of the moment: tests swap it), and its
    notes (what a wait is for) where a person watches a terminal."""

    def emit(self, record: logging.LogRecord) -> None:
        kind = "warning: " if record.levelno >= logging.WARNING else ""
        print(f"capitu: {kind}{record.getMessage()}", file=sys.stderr, flush=True)


def show_notes() -> None:
    logger = logging.getLogger("capitu")
    if not any(isinstance(handler, OneLineNotes) for handler in logger.handlers):
        logger.addHandler(OneLineNotes())
    logger.setLevel(logging.INFO if sys.stderr.isatty() else logging.WARNING)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    show_notes()
    try:
        args.handler(args)
        sys.stdout.flush()  # here, so that a reader gone (below) is seen here and not at the interpreter's exit
    except BrokenPipeError:  # the reader stopped reading (`capitu generate ... | head`): nothing went wrong here
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # the exit's own flush must not fail again
        return 1
    except UserError as error:
        print(f"capitu: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("capitu: interrupted", file=sys.stderr)
        return 130
    except OSError as error:  # a disk that fills up or goes away mid-way: outputs are written whole or not at all
        where = f"{error.filename}: " if error.filename else ""
        print(f"capitu: error: {where}{error.strerror or error}", file=sys.stderr)
        return 2
    return 0
