"""`capitu references`: what a model must beat on the same text, scored on the bytes its bits per
byte divide by.

- PPMd, the context-model compressor of 7-Zip (variant H through pyppmd, order 8, 256 MiB), primed
  with the training split: the bits it writes for the text after it has read the training text
  (the text's share of compressing train + text, to the few bytes the coder holds back); and on
  the text alone;
- xz (LZMA, preset 9 extreme) on the text alone;
- an interpolated modified Kneser–Ney n-gram model over the data's BPE tokens (ngram.py), trained
  on the training split, its order (2 to 6) chosen by validation loss.

A split's text is its tokens decoded, document by document (byte-level BPE gives back the bytes);
the compressors read the documents joined by blank lines, as a model reads them joined by
end-of-text."""

from __future__ import annotations

import lzma
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from capitu.data.split import SPLITS
from capitu.errors import UserError
from capitu.evaluate import document_counts, document_tokens, metrics, text_documents
from capitu.folders import DataFolder
from capitu.ngram import KneserNey, choose_order
from capitu.tokenizer import load_tokenizer

PPMD_ORDER, PPMD_MEMORY_MIB = 8, 256
SEPARATOR = "\n\n"
CHUNK = 1 << 20  # bytes a compressor reads at a time, so that its bar moves: what it writes is the same as in one call


def split_documents(data: DataFolder, split: str) -> list[str]:
    """The documents of a prepared split, from its tokens."""
    tokens = np.asarray(data.tokens(split))
    tokenizer = load_tokenizer(data.tokenizer_path)
    starts = np.flatnonzero(tokens == tokenizer.eot_id)
    ends = [*starts[1:], len(tokens)]
    documents = [tokenizer.decode(tokens[a + 1: b].tolist()) for a, b in zip(starts, ends)]
    if document_counts(documents)["bytes"] != data.meta["splits"][split]["bytes"]:
        raise UserError(f"{data.path}: the {split} split's tokens do not give back its text (a character "
                        "tokenizer with unknown characters?); score a text file with --text")
    return documents


def joined(documents: list[str]) -> bytes:
    return SEPARATOR.join(documents).encode("utf-8")


def fed(compress, data: bytes, bar: tqdm | None) -> int:
    """The bytes a streaming compressor's `compress` writes while it reads `data`, chunk by chunk, each moving `bar`
    on."""
    written = 0
    for start in range(0, len(data), CHUNK):
        chunk = data[start:start + CHUNK]
        written += len(compress(chunk))
        if bar is not None:
            bar.update(len(chunk))
    return written


def ppmd_bits(text: bytes, primer: bytes = b"", bar: tqdm | None = None) -> int:
    """Bits PPMd writes for `text`, after reading `primer` when one is given."""
    import pyppmd

    encoder = pyppmd.Ppmd7Encoder(PPMD_ORDER, PPMD_MEMORY_MIB << 20)
    if primer:  # read as it comes: joined to the separator first, a whole corpus was copied once more
        fed(encoder.encode, primer, bar)
        fed(encoder.encode, SEPARATOR.encode(), bar)
    return 8 * (fed(encoder.encode, text, bar) + len(encoder.flush()))


def xz_bits(text: bytes, bar: tqdm | None = None) -> int:
    """Bits xz -9e writes for `text`."""
    compressor = lzma.LZMACompressor(preset=9 | lzma.PRESET_EXTREME)
    return 8 * (fed(compressor.compress, text, bar) + len(compressor.flush()))


def progress_bar(progress: bool, total: int, name: str) -> tqdm:
    """Bytes read by a compressor, on a terminal (tqdm's disable=None) when `progress`."""
    return tqdm(total=total, desc=name, unit="B", unit_scale=True, disable=None if progress else True)


def per_unit(bits: float, counts: dict) -> dict:
    """Bits per byte and per character, and word perplexity (2 ** bits per word), as for the models."""
    return {"bpb": bits / counts["bytes"], "bpc": bits / counts["characters"],
            "word_ppl": 2.0 ** (bits / counts["words"]), "bits": bits}


def fit_ngram(data: DataFolder) -> tuple[KneserNey, dict[int, float]]:
    """The n-gram reference of a prepared folder, its order chosen on the validation split."""
    return choose_order(np.asarray(data.tokens("train")), np.asarray(data.tokens("val")), data.vocab_size)


def references(data: Path | str, split: str = "test", text: Path | None = None, say=None,
               progress: bool = False) -> tuple[dict, KneserNey]:
    """The references on a split of a prepared folder, or on a text file or folder; and the
    fitted n-gram model (for generation). `say` gets a line as each reference starts; with `progress`, the
    compressors show a bar on a terminal."""
    data = DataFolder(data).require()
    say = say or (lambda line: None)
    if split not in SPLITS:
        raise UserError(f"--split must be train, val or test, got {split}")
    tokenizer = load_tokenizer(data.tokenizer_path)
    if text is not None:
        documents = text_documents(Path(text), data)
        tokens, counts = document_tokens(documents, tokenizer)
        source = str(text)
    else:
        documents = split_documents(data, split)
        tokens, counts = np.asarray(data.tokens(split)), data.meta["splits"][split]
        source = f"{data.path} ({split})"
    seconds, result = {}, {"source": source, "bytes": counts["bytes"]}
    started = time.perf_counter()
    say("PPMd, primed with the training split, then alone")
    scored_text = joined(documents)  # what the compressors read
    train_text = joined(split_documents(data, "train"))
    with progress_bar(progress, len(train_text) + len(SEPARATOR) + 2 * len(scored_text), "PPMd") as bar:
        primed = ppmd_bits(scored_text, train_text, bar)
        alone = ppmd_bits(scored_text, bar=bar)
    ppmd = {"variant": "H", "order": PPMD_ORDER, "memory_mib": PPMD_MEMORY_MIB}
    result["ppmd"] = {**per_unit(primed, counts), **ppmd, "primed": "train"}
    result["ppmd_alone"] = {**per_unit(alone, counts), **ppmd, "primed": None}
    seconds["ppmd"] = time.perf_counter() - started
    say("xz")
    started = time.perf_counter()
    with progress_bar(progress, len(scored_text), "xz") as bar:
        result["xz"] = {**per_unit(xz_bits(scored_text, bar), counts), "preset": "9e"}
    seconds["xz"] = time.perf_counter() - started
    say("Kneser-Ney n-gram: counting orders 2-6, the order chosen on validation")
    started = time.perf_counter()
    model, losses = fit_ngram(data)
    nll = -float(model.log_probs(tokens).sum())
    result["ngram"] = {**metrics(nll, len(tokens) - 1, counts), "order": model.order, "smoothing": "modified KN",
                       "val_loss_by_order": {str(n): loss for n, loss in losses.items()}}
    seconds["ngram"] = time.perf_counter() - started
    result["seconds"] = seconds
    return result, model


NAMES = {"ppmd": "PPMd primed with train", "ppmd_alone": "PPMd, the text alone", "xz": "xz -9e, the text alone",
         "ngram": "Kneser-Ney n-gram"}


def label(key: str, entry: dict) -> str:
    """A reference's name as tables print it."""
    if key == "ngram":
        return f"Kneser-Ney {entry['order']}-gram (BPE tokens)"
    if key.startswith("ppmd"):
        return f"{NAMES[key]} (var. H, order {entry['order']}, {entry['memory_mib']} MiB)"
    return NAMES[key]


def format_references(result: dict) -> str:
    lines = [f"references on {result['source']}: {result['bytes']:,} bytes",
             "| reference | bits/byte | bits/char | word perplexity |", "|---|---|---|---|"]
    for key in NAMES:
        entry = result[key]
        lines.append(f"| {label(key, entry)} | {entry['bpb']:.4f} | {entry['bpc']:.4f} | "
                     f"{entry['word_ppl']:,.1f} |")
    return "\n".join(lines)

