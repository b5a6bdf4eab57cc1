"""The `capitu` command: one subcommand per stage of the pipeline.

Every subcommand turns a `UserError` into a one-line message and exit code 2.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from capitu import __version__
from capitu.errors import UserError


def add_prepare(commands) -> None:
    p = commands.add_parser(
        "prepare",
        help="clean, deduplicate and split a corpus; train a tokenizer; write token files",
        description="Turn a folder, file, archive or named source of Portuguese texts into a clean, "
        "deduplicated, leak-free train/val/test split, a tokenizer and token files.",
    )
    p.add_argument("--source", required=True, help="a folder, a .txt(.gz/.xz/.bz2) file, a .zip/.tar.* archive, "
                   "or a named source (machado)")
    p.add_argument("--out", required=True, type=Path, help="output folder (train.bin, val.bin, test.bin, "
                   "tokenizer.json, meta.json)")
    p.add_argument("--tokenizer", choices=["bpe", "char"], default="bpe", help="byte-level BPE (default) or characters")
    p.add_argument("--vocab-size", type=int, default=16384, help="BPE vocabulary size (default 16384)")
    p.add_argument("--seed", type=int, default=1337, help="seed of the document split (default 1337)")
    p.add_argument("--val-fraction", type=float, default=0.05, help="share of bytes for validation (default 0.05)")
    p.add_argument("--test-fraction", type=float, default=0.05, help="share of bytes for test (default 0.05)")
    p.add_argument("--min-paragraph-chars", type=int, default=64,
                   help="paragraphs shorter than this (normalised) are never deduplicated (default 64)")
    p.add_argument("--min-document-chars", type=int, default=200,
                   help="documents left shorter than this after deduplication are dropped (default 200)")
    p.add_argument("--strict", action="store_true", help="treat undecodable, binary or non-UTF-8 files as errors")
    p.add_argument("--force", action="store_true", help="rebuild even if the output is up to date")
    p.add_argument("--cache", type=Path, default=None, help="download cache for named sources "
                   "(default $CAPITU_CACHE or ~/.cache/capitu)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(run=run_prepare)


def run_prepare(args) -> None:
    from capitu.data.prepare import PrepareOptions, format_summary, prepare

    options = PrepareOptions(
        source=args.source, out=args.out, tokenizer=args.tokenizer, vocab_size=args.vocab_size, seed=args.seed,
        val_fraction=args.val_fraction, test_fraction=args.test_fraction,
        min_paragraph_chars=args.min_paragraph_chars, min_document_chars=args.min_document_chars,
        strict=args.strict, force=args.force, progress=not args.quiet,
    )
    if args.cache is not None:
        options.cache_dir = args.cache
    print(format_summary(prepare(options)))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="capitu",
        description="Build, train, compare and understand small GPT-2-style language models for Portuguese.",
    )
    parser.add_argument("--version", action="version", version=f"capitu {__version__}")
    commands = parser.add_subparsers(title="commands", metavar="COMMAND", required=True)
    add_prepare(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.run(args)
    except UserError as error:
        print(f"capitu: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("capitu: interrupted", file=sys.stderr)
        return 130
    return 0
