"""Numbers beside the reading of generated text.

- known words: the share of generated words (lower-cased runs of letters) that occur in the
  training split: invented words ("béscro") lower it;
- distinct-1 and distinct-2 (Li et al. 2016): distinct words and word pairs over all words and
  pairs: repetition lowers them;
- repeated 4-grams: the share of word 4-grams that occur more than once in the same text;
- length: mean words generated before end-of-text (or the token limit)."""

from __future__ import annotations

import re
from collections import Counter

from capitu.folders import DataFolder
from capitu.tokenizer import load_tokenizer

WORD = re.compile(r"[^\W\d_]+(?:[-'][^\W\d_]+)*")


def words(text: str) -> list[str]:
    return [w.lower() for w in WORD.findall(text)]


def ngrams(tokens: list[str], n: int) -> list[tuple[str, ...]]:
    return [tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)]


def writing_numbers(continuations: list[str], vocabulary: set[str] | None) -> dict:
    """The numbers of one model's continuations (the generated text only, prompts left out);
    `vocabulary`: the training split's words (None: not computed)."""
    per_text = [words(text) for text in continuations]
    every = [w for text in per_text for w in text]
    pairs = [p for text in per_text for p in ngrams(text, 2)]
    fours = [ngrams(text, 4) for text in per_text]
    repeated = sum(sum(c for c in Counter(grams).values() if c > 1) for grams in fours)
    return {
        "known_words": (sum(w in vocabulary for w in every) / len(every)) if vocabulary is not None and every else None,
        "distinct_1": len(set(every)) / len(every) if every else 0.0,
        "distinct_2": len(set(pairs)) / len(pairs) if pairs else 0.0,
        "repeated_4grams": repeated / max(1, sum(len(g) for g in fours)),
        "mean_words": len(every) / len(per_text) if per_text else 0.0,
    }


def training_vocabulary(data_folder) -> set[str] | None:
    """The words of a prepared folder's train split (None when it is gone)."""
    folder = DataFolder(data_folder)
    if not folder.split_path("train").is_file() or not folder.tokenizer_path.is_file() or not folder.is_prepared():
        return None
    tokens, tokenizer = folder.tokens("train"), load_tokenizer(folder.tokenizer_path)
    vocabulary: set[str] = set()
    for start in range(0, len(tokens), 1 << 20):
        vocabulary.update(words(tokenizer.decode(tokens[start:start + (1 << 20)].tolist())))
    return vocabulary
