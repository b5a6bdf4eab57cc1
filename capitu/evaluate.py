"""`capitu eval`: cross-entropy of a run over a whole split or any text, and what it means.

Every token of the split after the first is scored once: non-overlapping windows of the training context (or, with
`stride`, sliding windows whose last `stride` targets are scored, each with the longest context the window allows).
From the summed negative log likelihood (nats) and meta.json's denominators: loss per token, perplexity, bits per
byte, bits per character and word-level perplexity."""

from __future__ import annotations

import itertools
import math
from collections import Counter
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from capitu.checkpoint import load_model
from capitu.data.clean import clean_document
from capitu.data.registry import sha256_bytes
from capitu.data.sources import decode_text, iter_documents, list_inputs
from capitu.data.split import SPLITS
from capitu.errors import UserError, warn
from capitu.folders import DataFolder, RunFolder
from capitu.tokenizer import load_tokenizer


def hashed_documents(path: Path) -> list[tuple[str, str]]:
    """(SHA-256 of the file's bytes, as prepare's manifest records it; the text, cleaned as prepare cleans it) of
    every document of a text file or folder. A CoNLL-U treebank file is one document: its sentences' text, a line
    each (the news and Wikipedia Portuguese of the UD treebanks, as a text to score)."""
    if path.is_file() and path.name.lower().endswith(".conllu"):
        from capitu.pairs import read_conllu

        text = "\n".join(sentence.text for sentence in read_conllu(path) if sentence.text)
        return [(sha256_bytes(path.read_bytes()), clean_document(text, Counter()))]
    documents = []
    for raw in iter_documents(path, list_inputs(path)):
        text = decode_text(raw.data)[0] if raw.data is not None else None
        if text is not None:
            documents.append((sha256_bytes(raw.data), clean_document(text, Counter())))
    return documents


def text_documents(path: Path, data: DataFolder | None = None) -> list[str]:
    """The documents of a text file or folder, cleaned as prepare cleans them. With `data` (the prepared folder a
    model trained on), a warning says how many of them its training split holds: figures on those are not held-out."""
    hashed = hashed_documents(path)
    documents = [text for _, text in hashed]
    if not documents or not any(documents):
        raise UserError(f"nothing readable in {path}" if not documents else f"{path} holds no text to score")
    if data is not None and data.is_prepared():
        trained = data.trained_documents
        seen = sum(sha in trained for sha, _ in hashed)
        if seen:
            warn(f"{path}: {seen} of {len(hashed)} documents are in the training split of {data.path}: figures on "
                 "them are not held-out ones")
    return documents


def document_counts(documents: list[str]) -> dict:
    """The denominators of the per-byte, per-character and per-word figures."""
    return {"documents": len(documents), "bytes": sum(len(d.encode("utf-8")) for d in documents),
            "characters": sum(map(len, documents)), "words": sum(len(d.split()) for d in documents)}


def text_tokens(path: Path, tokenizer, data: DataFolder | None = None) -> tuple[np.ndarray, dict]:
    """Tokens and denominators of a text file or folder (document_tokens of text_documents)."""
    return document_tokens(text_documents(path, data), tokenizer)


def document_tokens(documents: list[str], tokenizer) -> tuple[np.ndarray, dict]:
    """Tokens and denominators of documents, laid out as prepare does (each document preceded
    by end-of-text)."""
    ids: list[int] = []
    for text in documents:
        ids.append(tokenizer.eot_id)
        ids.extend(tokenizer.encode(text))
    counts = {**document_counts(documents), "tokens": len(ids)}
    return np.array(ids, dtype=np.int64), counts


def window_plan(n_tokens: int, length: int, stride: int) -> list[tuple[int, int, int]]:
    """(start, end, first scored target) of each window, whose targets are
    tokens[start+1 : end+1]. Windows advance by `stride`; each scores only the targets no
    earlier window scored, so together they score targets 1 .. n_tokens-1 exactly once."""
    plan = []
    scored_until, start = 1, 0
    while scored_until < n_tokens:
        end = min(start + length, n_tokens - 1)
        plan.append((start, end, scored_until))
        scored_until = end + 1
        start += stride
    return plan


@torch.no_grad()
def negative_log_likelihood(model, tokens: np.ndarray, length: int, stride: int, device, progress: bool,
                            batch_size: int = 16) -> tuple[float, int]:
    """Summed NLL (nats) over targets 1 .. len(tokens)-1, and their count. Windows of the same
    length and the same scored offset run together, `batch_size` at a time."""
    total, scored = 0.0, 0
    plan = window_plan(len(tokens), length, stride)
    batches = []
    for _, same_shape in itertools.groupby(plan, key=lambda w: (w[1] - w[0], w[2] - w[0])):
        same_shape = list(same_shape)
        batches.extend(same_shape[i:i + batch_size] for i in range(0, len(same_shape), batch_size))
    bar = tqdm(total=len(plan), desc="eval", unit=" windows", disable=None if progress else True)
    for batch in batches:
        x = torch.from_numpy(np.stack([np.asarray(tokens[s:e], dtype=np.int64) for s, e, _ in batch])).to(device)
        y = torch.from_numpy(np.stack([np.asarray(tokens[s + 1:e + 1], np.int64) for s, e, _ in batch])).to(device)
        logits, _ = model(x)
        keep = batch[0][2] - (batch[0][0] + 1)  # targets before the first scored one: an earlier window's
        total += F.cross_entropy(logits[:, keep:].flatten(0, 1).float(), y[:, keep:].flatten(), reduction="sum").item()
        scored += y[:, keep:].numel()
        bar.update(len(batch))
    bar.close()
    return total, scored


def metrics(nll: float, scored: int, counts: dict) -> dict:
    return {
        "loss": nll / scored,
        "ppl": math.exp(nll / scored),
        "bpb": nll / (math.log(2) * counts["bytes"]),
        "bpc": nll / (math.log(2) * counts["characters"]),
        "word_ppl": math.exp(nll / counts["words"]),
        "tokens": scored,
    }


def evaluate_tokens(model, tokens: np.ndarray, counts: dict, device, progress: bool, stride: int = 0) -> dict:
    """The metrics of `tokens` (laid out as prepare does) at the model's training context."""
    block = model.config.block_size
    return metrics(*negative_log_likelihood(model, tokens, block, stride or block, device, progress), counts)


def evaluate_run(run: Path, split: str = "test", text: Path | None = None, lengths: list[int] | None = None,
                 stride: int = 0, device: str = "cpu", progress: bool = True) -> dict:
    run = Path(run)
    model, content = load_model(run, device)
    config = model.config
    tokenizer = load_tokenizer(RunFolder(run).tokenizer_path)
    path = content.get("config", {}).get("data", {}).get("path", "")
    data = DataFolder(path)
    if text is not None:
        tokens, counts = text_tokens(Path(text), tokenizer, data if path else None)
        source = str(text)
    else:
        if not path:
            raise UserError(f"{run} names no data folder (an imported model has none); evaluate with --text PATH")
        if not data.is_prepared():
            raise UserError(f"the run's data folder {data.path} is missing; evaluate with --text PATH")
        if split not in SPLITS:
            raise UserError(f"--split must be train, val or test, got {split}")
        tokens, counts, source = data.tokens(split), data.meta["splits"][split], f"{data.path} ({split})"
    block = config.block_size  # the FFN too: it trained on windows this long (its first n-1 targets padded)
    stride = stride or block
    if not 0 < stride <= block:
        raise UserError(f"--stride must be between 1 and the context length {block}")
    result = {"run": str(run), "source": source, "context": block, "stride": stride,
              **evaluate_tokens(model, tokens, counts, device, progress, stride)}
    if lengths:
        result["lengths"] = {}
        for length in lengths:
            if config.kind == "gpt" and config.pos == "learned" and length > config.block_size:
                result["lengths"][str(length)] = {"supported": False,
                                                  "reason": f"learned positions stop at {config.block_size}"}
                continue
            if length > len(tokens) - 1:  # every window would be the whole text, scored under this length's name
                result["lengths"][str(length)] = {"supported": False,
                                                  "reason": f"the text has only {len(tokens) - 1:,} tokens to score"}
                continue
            nll, scored = negative_log_likelihood(model, tokens, length, length, device, progress)
            result["lengths"][str(length)] = {"supported": True, **metrics(nll, scored, counts)}
    return result


def format_table(result: dict) -> str:
    lines = [f"{result['run']} on {result['source']}: {result['tokens']:,} tokens scored (context {result['context']}, "
             f"stride {result['stride']})",
             f"{'length':>7} {'loss':>8} {'ppl':>10} {'bpb':>7} {'bpc':>7} {'word ppl':>10}"]

    def row(name, m):
        return f"{name:>7} {m['loss']:>8.4f} {m['ppl']:>10.2f} {m['bpb']:>7.4f} {m['bpc']:>7.4f} {m['word_ppl']:>10.2f}"

    lines.append(row(str(result["context"]), result))
    for length, m in result.get("lengths", {}).items():
        lines.append(row(length, m) if m["supported"] else f"{length:>7} not supported ({m['reason']})")
    return "\n".join(lines)


def pair_accuracy(right: list[bool], phenomena: list[str]) -> dict:
    """Accuracy over all pairs and per phenomenon, each with its exact 95% binomial interval."""
    from scipy.stats import binomtest

    def summary(flags: list[bool]) -> dict:
        k, n = sum(flags), len(flags)
        interval = binomtest(k, n).proportion_ci(confidence_level=0.95)
        return {"accuracy": k / n, "n": n, "right": k, "ci": [interval.low, interval.high]}

    by_phenomenon: dict[str, list[bool]] = {}
    for flag, name in zip(right, phenomena):
        by_phenomenon.setdefault(name, []).append(flag)
    return {**summary(right), "chance": 0.5,
            "by_phenomenon": {name: summary(flags) for name, flags in sorted(by_phenomenon.items())}}


@torch.no_grad()
def sentence_log_probs(model, tokenizer, texts: list[str], device, batch_size: int = 64) -> list[float]:
    """Each text's total log-probability (nats) as a document: its tokens after end-of-text. Texts
    that fit the model's context run in batches, right-padded (a causal model's earlier positions
    do not see the padding); a longer one slides windows of the context by half of it, so each
    token is scored once with at least half a context before it."""
    block = model.config.block_size
    ids = [[tokenizer.eot_id] + tokenizer.encode(text) for text in texts]
    scores = [0.0] * len(texts)
    fitting = sorted((i for i in range(len(ids)) if len(ids[i]) - 1 <= block), key=lambda i: len(ids[i]))
    for start in range(0, len(fitting), batch_size):
        batch = fitting[start:start + batch_size]
        width = max(len(ids[i]) for i in batch)
        padded = torch.tensor([ids[i] + [tokenizer.eot_id] * (width - len(ids[i])) for i in batch], device=device)
        logits, _ = model(padded[:, :-1])  # (B, width - 1, V)
        picked = torch.log_softmax(logits.float(), -1).gather(2, padded[:, 1:, None])[..., 0]  # (B, width - 1)
        lengths = torch.tensor([len(ids[i]) - 1 for i in batch], device=device)
        mask = torch.arange(width - 1, device=device)[None, :] < lengths[:, None]
        for i, value in zip(batch, (picked * mask).sum(1).tolist()):
            scores[i] = value
    for i in range(len(ids)):
        if len(ids[i]) - 1 > block:
            scores[i] = -negative_log_likelihood(model, np.array(ids[i]), block, max(1, block // 2), device, False)[0]
    return scores


def unigram_log_probs(data: DataFolder, vocab_size: int):
    """log p(token) of an add-one unigram model of the data's training split (indexable by token ids)."""
    counts = np.bincount(np.asarray(data.tokens("train")), minlength=vocab_size) + 1.0
    return np.log(counts / counts.sum())


def unigram_right(pairs: list[dict], tokenizer, unigram) -> list[bool]:
    def score(text: str) -> float:
        return float(unigram[tokenizer.encode(text)].sum())

    return [score(pair["good"]) > score(pair["bad"]) for pair in pairs]


def pairs_right(model, tokenizer, pairs: list[dict], device, progress: bool = False) -> list[bool]:
    """For each minimal pair, whether the model gives the good sentence the higher log-probability."""
    texts = [text for pair in pairs for text in (pair["good"], pair["bad"])]
    chunk = 2048  # sentences per progress step
    scores: list[float] = []
    for start in tqdm(range(0, len(texts), chunk), desc="pairs", unit=" chunks", disable=None if progress else True):
        scores += sentence_log_probs(model, tokenizer, texts[start:start + chunk], device)
    return [good > bad for good, bad in zip(scores[::2], scores[1::2])]


def score_pairs(run: Path, path: Path, device: str = "cpu", progress: bool = True) -> dict:
    """Minimal pairs (capitu pairs): each sentence scored as a document (after end-of-text) by its
    total log-probability; a pair is right when the good sentence scores higher. Beside the model,
    a unigram model of the run's training split (add-one), what knowing which form is common gives."""
    from capitu.pairs import read_pairs

    pairs = read_pairs(path)
    model, content = load_model(run, device)
    tokenizer = load_tokenizer(RunFolder(run).tokenizer_path)
    data = DataFolder(content.get("config", {}).get("data", {}).get("path", ""))
    phenomena = [pair["phenomenon"] for pair in pairs]
    unigram = None
    if data.is_prepared():
        unigram = pair_accuracy(unigram_right(pairs, tokenizer, unigram_log_probs(data, model.config.vocab_size)),
                                phenomena)
    return {"file": str(path), **pair_accuracy(pairs_right(model, tokenizer, pairs, device, progress), phenomena),
            "unigram": unigram}


def format_pairs(result: dict) -> str:
    pairs = result["pairs"]
    lines = [f"{result['run']} on {pairs['file']}: {pairs['right']:,} of {pairs['n']:,} minimal pairs right "
             f"({pairs['accuracy']:.1%}, 95% interval {pairs['ci'][0]:.1%}-{pairs['ci'][1]:.1%}; chance 50%)",
             "| phenomenon | pairs | model | 95% interval | unigram of the training split |", "|---|---|---|---|---|"]
    for name, entry in pairs["by_phenomenon"].items():
        unigram = pairs["unigram"]["by_phenomenon"][name]["accuracy"] if pairs["unigram"] else None
        lines.append(f"| {name} | {entry['n']:,} | {entry['accuracy']:.1%} | {entry['ci'][0]:.1%}-{entry['ci'][1]:.1%} "
                     f"| {'—' if unigram is None else f'{unigram:.1%}'} |")
    return "\n".join(lines)
