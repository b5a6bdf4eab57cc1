"""`capitu prepare`: a source of texts to a clean, leak-free split, a tokenizer and token files.

The output folder holds `train.bin`, `val.bin`, `test.bin` (flat token ids that `np.memmap` reads, an end-of-text
token before every document), `tokenizer.json` and `meta.json` (counts, cleaning statistics, manifest, timings). It
is built in a temporary folder and renamed into place, so an interrupted run leaves nothing half-written."""

from __future__ import annotations

import hashlib
import json
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from capitu.config import DEFAULT_VOCAB_SIZE
from capitu.data import registry
from capitu.data.clean import clean_document
from capitu.data.dedup import Document, deduplicate
from capitu.data.sources import decode_text, iter_documents, list_inputs, other_files
from capitu.data.split import SPLITS, assign_splits, count_leaks
from capitu.environment import versions
from capitu.errors import UserError, warn
from capitu.folders import DataFolder
from capitu.paths import check_output, clean_leftovers, staged_folder
from capitu.tokenizer import BYTE_LEVEL_BASE, check_vocab_size, train_tokenizer

META_FORMAT = "capitu-data/1"
PIPELINE_VERSION = 1  # bump when cleaning or splitting changes, so old outputs are rebuilt


@dataclass
class PrepareOptions:
    source: str
    out: Path
    tokenizer: str = "bpe"
    vocab_size: int = DEFAULT_VOCAB_SIZE
    seed: int = 1337
    val_fraction: float = 0.05
    test_fraction: float = 0.05
    min_paragraph_chars: int = 64
    min_document_chars: int = 200
    exclude: list[str] = field(default_factory=list)  # SHA-256 of texts to leave out (a study's evaluation texts)
    strict: bool = False
    force: bool = False
    cache_dir: Path = field(default_factory=registry.default_cache_dir)
    progress: bool = True

    def validate(self) -> None:
        if self.tokenizer not in ("bpe", "char"):
            raise UserError(f"unknown tokenizer '{self.tokenizer}' (choose bpe or char)")
        if self.tokenizer == "bpe":
            check_vocab_size(self.vocab_size, BYTE_LEVEL_BASE + 1)
        for name in ("val_fraction", "test_fraction"):
            if not 0 < getattr(self, name) < 0.5:
                raise UserError(f"--{name.replace('_', '-')} must be between 0 and 0.5")
        if self.min_paragraph_chars < 1 or self.min_document_chars < 0:
            raise UserError("--min-paragraph-chars must be at least 1 and --min-document-chars at least 0")

    def key_fields(self) -> dict:
        """The options that change the output (the cache key), not how it is produced."""
        fields = asdict(self)
        for name in ("source", "out", "strict", "force", "cache_dir", "progress"):
            fields.pop(name)
        if not self.exclude:
            fields.pop("exclude")
        if self.tokenizer == "char":
            fields.pop("vocab_size")
        return fields


class Stopwatch:
    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    def stage(self, name: str) -> "_Stage":
        return _Stage(self, name)


class _Stage:
    def __init__(self, watch: Stopwatch, name: str):
        self.watch, self.name = watch, name

    def __enter__(self) -> None:
        self.start = time.perf_counter()

    def __exit__(self, *exc) -> None:
        self.watch.seconds[self.name] = round(time.perf_counter() - self.start, 3)


def resolve_source(options: PrepareOptions) -> Path:
    path = Path(options.source)
    if path.exists():
        return path
    known = registry.load_registry()
    if options.source in known:
        return registry.fetch(options.source, options.cache_dir, known)
    raise UserError(f"source not found: {options.source} (not a path, nor a named source: {', '.join(sorted(known))})")


def read_documents(source: Path, options: PrepareOptions) -> list[Document]:
    inputs = list_inputs(source)
    others = other_files(source)
    if others:
        shown = ", ".join(others[:3]) + (f" and {len(others) - 3} more" if len(others) > 3 else "")
        warn(f"{len(others)} file(s) under {source} are neither .txt nor archives, and are left out: {shown}")
    documents = []
    # progress bars go to a terminal only (tqdm's disable=None): piped or logged, a bar's redraws
    # would bury the one-line error that may follow them
    bars_off = None if options.progress else True
    for raw in tqdm(iter_documents(source, inputs), desc="read", unit=" files", disable=bars_off):
        if raw.data is not None and registry.sha256_bytes(raw.data) in options.exclude:
            continue
        problem = raw.problem
        if raw.data is not None:
            text, encoding = decode_text(raw.data)
            if text is None:
                problem = encoding
        if problem:
            if options.strict:
                raise UserError(f"{raw.name}: {problem}")
            warn(f"skipped {raw.name}: {problem}")
            continue
        if encoding != "utf-8":
            if options.strict:
                raise UserError(f"{raw.name}: not UTF-8 (decoded as {encoding})")
            warn(f"{raw.name}: not UTF-8, read as {encoding}")
        documents.append(Document(raw.name, text, registry.sha256_bytes(raw.data), len(raw.data),
                                  extra={"encoding": encoding}))
    if not documents:
        raise UserError(f"nothing readable in {source}")
    return documents


def cache_key(documents: list[Document], options: PrepareOptions) -> str:
    # a file read other than as plain UTF-8 is keyed with how it was read: an output made when it was read another way
    # (a UTF-8 file with a broken byte was read as Windows-1252 before) is not up to date
    inputs = [(d.name, d.sha256) + ((d.extra["encoding"],) if d.extra.get("encoding", "utf-8") != "utf-8" else ())
              for d in documents]
    content = {"pipeline": PIPELINE_VERSION, "options": options.key_fields(), "inputs": sorted(inputs)}
    return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()


def existing_output(out: Path) -> dict | None:
    """The meta.json of a capitu data folder at `out`; None if `out` is absent or empty.
    Anything else there is not ours to overwrite."""
    check_output(out, new=False)
    clean_leftovers(out.parent, only=out.name)
    if not out.exists() or not any(out.iterdir()):
        return None
    try:
        meta = DataFolder(out).meta
        if meta.get("format") == META_FORMAT:
            return meta
    except UserError:
        pass
    raise UserError(f"output folder {out} holds something else (not a capitu data folder); choose another --out")


def split_counts(documents: list[Document], split: str, token_counts: dict[str, int]) -> dict:
    texts = [d.text for d in documents if d.split == split]
    return {"documents": len(texts), "tokens": token_counts[split], "bytes": sum(len(t.encode("utf-8")) for t in texts),
            "characters": sum(len(t) for t in texts), "words": sum(len(t.split()) for t in texts)}


def write_split(path: Path, token_lists: list[list[int]], eot_id: int, dtype: np.dtype) -> int:
    """Concatenate documents, each preceded by end-of-text, into one flat binary file."""
    total = sum(len(ids) + 1 for ids in token_lists)
    array = np.empty(total, dtype=dtype)
    position = 0
    for ids in token_lists:
        array[position] = eot_id
        array[position + 1: position + 1 + len(ids)] = ids
        position += len(ids) + 1
    array.tofile(path)
    return total


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def prepare(options: PrepareOptions) -> dict:
    """Run the whole pipeline (or reuse an up-to-date output); returns meta.json's content."""
    options.validate()
    out = Path(options.out)
    previous = existing_output(out)
    watch = Stopwatch()
    stats: Counter = Counter()

    with watch.stage("read"):
        source = resolve_source(options)
        documents = read_documents(source, options)
    key = cache_key(documents, options)
    if previous is not None and not options.force:
        if previous.get("cache_key") == key and all((out / f).exists() for f in previous["files"]):
            previous["reused"] = True
            return previous
        raise UserError(f"{out} holds data prepared from other inputs or options; use --force to rebuild it")

    with watch.stage("clean"):
        for document in tqdm(documents, desc="clean", unit=" docs", disable=None if options.progress else True):
            document.text = clean_document(document.text, stats)
    with watch.stage("deduplicate"):
        deduplicate(documents, options.min_paragraph_chars, options.min_document_chars, stats)
    with watch.stage("split"):
        assign_splits(documents, options.seed, options.val_fraction, options.test_fraction)
        leaks = count_leaks(documents, options.min_paragraph_chars)
    by_split = {s: [d for d in documents if d.split == s] for s in SPLITS}

    with watch.stage("train_tokenizer"):
        tokenizer = train_tokenizer(options.tokenizer, [d.text for d in by_split["train"]], options.vocab_size,
                                    options.progress)
    if options.tokenizer == "bpe" and tokenizer.vocab_size < options.vocab_size:
        warn(f"the BPE vocabulary has {tokenizer.vocab_size:,} tokens, not the {options.vocab_size:,} asked for: the "
             "training split has no more pairs to merge")
    dtype = np.dtype(np.uint16 if tokenizer.vocab_size <= 1 << 16 else np.uint32)

    with staged_folder(out) as staging:
        folder, token_counts = DataFolder(staging), {}
        with watch.stage("encode"):
            encoded = {}
            for split in tqdm(SPLITS, desc="encode", unit=" splits", disable=None if options.progress else True):
                encoded[split] = tokenizer.encode_batch([d.text for d in by_split[split]])
        with watch.stage("write"):
            for split in SPLITS:
                token_counts[split] = write_split(folder.split_path(split), encoded[split], tokenizer.eot_id, dtype)
            tokenizer.save(folder.tokenizer_path)
        splits = {s: split_counts(documents, s, token_counts) for s in SPLITS}
        val = splits["val"]
        val_tokens = val["tokens"] - val["documents"]  # without the end-of-text separators
        meta = {
            "format": META_FORMAT, "cache_key": key, "source": str(options.source), "options": options.key_fields(),
            "tokenizer": {"kind": tokenizer.kind, "vocab_size": tokenizer.vocab_size, "eot_id": tokenizer.eot_id},
            "dtype": dtype.name, "splits": splits,
            "fertility_val": round(val_tokens / max(val["words"], 1), 4),
            "bytes_per_token_val": round(val["bytes"] / max(val_tokens, 1), 4),
            "cleaning": dict(sorted(stats.items())), "leaked_paragraphs": leaks,
            "files": [folder.split_path(s).name for s in SPLITS] + [folder.tokenizer_path.name],
            "sha256": {folder.split_path(s).name: file_sha256(folder.split_path(s)) for s in SPLITS},
            "manifest": [{"path": d.name, "sha256": d.sha256, "bytes": d.raw_bytes, "encoding": d.extra["encoding"],
                          "split": d.split or None, **({"removed": d.removed} if d.removed else {})}
                         for d in documents],
            "seconds": watch.seconds, "versions": versions(),
        }
        meta["fingerprint"] = hashlib.sha256(json.dumps([meta["sha256"], meta["tokenizer"]],
                                                        sort_keys=True).encode()).hexdigest()[:16]
        folder.write_meta(meta)
    meta["reused"] = False
    return meta


def format_summary(meta: dict) -> str:
    lines = []
    reused = " (up to date, reused; --force rebuilds)" if meta.get("reused") else ""
    kept = sum(1 for m in meta["manifest"] if m["split"])
    lines.append(f"prepared {meta['source']}: {len(meta['manifest'])} documents read, {kept} kept{reused}")
    lines.append(f"{'split':<6} {'docs':>6} {'bytes':>12} {'chars':>12} {'words':>11} {'tokens':>11}")
    for split, c in meta["splits"].items():
        lines.append(f"{split:<6} {c['documents']:>6} {c['bytes']:>12,} {c['characters']:>12,} {c['words']:>11,} "
                     f"{c['tokens']:>11,}")
    cleaning = meta["cleaning"]
    lines.append(
        "removed: {d} duplicate documents, {n} near-duplicate documents, {e} empty, {p:,} duplicate "
        "paragraphs ({c:,} chars); {j:,} wrapped lines joined in {r} documents".format(
            d=cleaning.get("duplicate_documents_removed", 0), n=cleaning.get("near_duplicate_documents_removed", 0),
            e=cleaning.get("emptied_documents_removed", 0) + cleaning.get("empty_documents_removed", 0),
            p=cleaning.get("duplicate_paragraphs_removed", 0),
            c=cleaning.get("duplicate_paragraph_characters_removed", 0),
            j=cleaning.get("lines_joined", 0), r=cleaning.get("reflowed_documents", 0)))
    tok = meta["tokenizer"]
    lines.append(
        f"leaked paragraphs (val/test in train): {meta['leaked_paragraphs']}; tokenizer {tok['kind']} "
        f"vocab {tok['vocab_size']:,}; fertility {meta['fertility_val']} tokens/word, "
        f"{meta['bytes_per_token_val']} bytes/token (val)"
    )
    lines.append("time: " + ", ".join(f"{k} {v:.1f}s" for k, v in meta["seconds"].items())
                 + f" (total {sum(meta['seconds'].values()):.1f}s)")
    return "\n".join(lines)
