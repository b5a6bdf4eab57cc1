"""Remove exact-duplicate documents and exact-duplicate paragraphs across a whole corpus.

Two paragraphs are the same when they agree after normalisation: case folded, punctuation dropped, whitespace
collapsed. Short paragraphs ("— Sim.", "CAPÍTULO I") repeat by nature and are never removed; only paragraphs of at
least `min_paragraph_chars` normalised characters are. Longer documents are visited first, so a work contained in
another loses its copy and the fuller work stays whole.

Two editions of one text often break paragraphs in different places, so exact paragraphs miss them; sentences do
not. A document most of whose sentence text (by characters) is already in the documents kept before it is a
near-copy and is removed whole."""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import re
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field

NOT_WORD = re.compile(r"[\W_]+")
SENTENCE_END = re.compile(r"(?<=[.!?;:])\s+|\n")
MIN_SENTENCE_CHARS = 32  # shorter sentences ("— Sim, senhor.") repeat by nature


@dataclass
class Document:
    name: str
    text: str
    sha256: str  # of the raw bytes as read, for the manifest
    raw_bytes: int
    split: str = ""
    removed: str = ""  # why the document is not in any split
    extra: dict = field(default_factory=dict)


def normalize(text: str) -> str:
    return " ".join(NOT_WORD.sub(" ", text.casefold()).split())


def fingerprint(normalized: str) -> bytes:
    return hashlib.blake2b(normalized.encode("utf-8"), digest_size=16).digest()


def paragraph_fingerprints(text: str, min_paragraph_chars: int) -> list[bytes | None]:
    """One entry per line: its fingerprint, or None when it is too short to deduplicate."""
    marks = []
    for line in text.split("\n"):
        normalized = normalize(line)
        marks.append(fingerprint(normalized) if len(normalized) >= min_paragraph_chars else None)
    return marks


def sentence_marks(text: str) -> list[tuple[bytes, int]]:
    """(fingerprint, normalised length) of every sentence long enough to compare."""
    marks = []
    for sentence in SENTENCE_END.split(text):
        normalized = normalize(sentence)
        if len(normalized) >= MIN_SENTENCE_CHARS:
            marks.append((fingerprint(normalized), len(normalized)))
    return marks


def collapse_blank_lines(lines: list[str]) -> str:
    out: list[str] = []
    for line in lines:
        if line == "" and (not out or out[-1] == ""):
            continue
        out.append(line)
    return "\n".join(out).strip("\n")


@dataclass
class Marks:
    """What deduplication compares of a document, computed before any of it is removed."""
    normalized_chars: int
    whole: bytes
    sentences: list[tuple[bytes, int]]
    paragraphs: list[bytes | None]


def marks_of(text: str, min_paragraph_chars: int) -> Marks:
    normalized = normalize(text)
    return Marks(len(normalized), fingerprint(normalized), sentence_marks(text),
                 paragraph_fingerprints(text, min_paragraph_chars))


def all_marks(texts: list[str], min_paragraph_chars: int, parallel_chars: int = 8_000_000) -> list[Marks]:
    """Each text's marks: in worker processes, one per core, when the texts are large enough to pay for them (the
    normalising is most of deduplication's time, and each document's is its own). The workers are spawned, so they
    import the caller's main module again: a script that prepares a large corpus needs `if __name__ == "__main__":`
    around its work, as with any use of multiprocessing that spawns."""
    workers = min(os.cpu_count() or 1, len(texts))
    if workers < 2 or sum(map(len, texts)) < parallel_chars:
        return [marks_of(text, min_paragraph_chars) for text in texts]
    # spawned, not forked: the calling process may run threads (torch's, tqdm's), and a child forked from a threaded
    # process can deadlock on a lock one of them held (Python 3.12 warns of it; 3.14 no longer forks by default)
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        return list(pool.map(marks_of, texts, [min_paragraph_chars] * len(texts)))


def deduplicate(
    documents: list[Document],
    min_paragraph_chars: int,
    min_document_chars: int,
    stats: Counter,
    max_duplicate_share: float = 0.5,
) -> None:
    """Mark duplicate or emptied documents `removed`, and drop duplicate paragraphs in place."""
    seen_documents: dict[bytes, str] = {}
    seen_paragraphs: set[bytes] = set()
    seen_sentences: set[bytes] = set()
    ordered = sorted(documents, key=lambda d: (-len(d.text), d.name))
    for document, marks in zip(ordered, all_marks([d.text for d in ordered], min_paragraph_chars)):
        if marks.normalized_chars == 0:
            document.removed = "empty"
            stats["empty_documents_removed"] += 1
            continue
        if marks.whole in seen_documents:
            document.removed = f"duplicate of {seen_documents[marks.whole]}"
            stats["duplicate_documents_removed"] += 1
            continue
        seen_documents[marks.whole] = document.name
        shared = sum(length for mark, length in marks.sentences if mark in seen_sentences)
        share = shared / max(1, sum(length for _, length in marks.sentences))
        if share > max_duplicate_share:
            document.removed = f"near-duplicate: {share:.0%} of its sentences are in other documents"
            stats["near_duplicate_documents_removed"] += 1
            continue
        seen_sentences.update(mark for mark, _ in marks.sentences)
        lines = document.text.split("\n")
        kept, new_marks = [], set()
        duplicates = duplicate_characters = 0
        for line, mark in zip(lines, marks.paragraphs):
            if mark is not None and (mark in seen_paragraphs or mark in new_marks):
                duplicates += 1
                duplicate_characters += len(line)
                continue
            if mark is not None:
                new_marks.add(mark)
            kept.append(line)
        seen_paragraphs |= new_marks
        stats["duplicate_paragraphs_removed"] += duplicates
        stats["duplicate_paragraph_characters_removed"] += duplicate_characters
        left = marks.normalized_chars
        if duplicates:
            document.text = collapse_blank_lines(kept)
            left = len(normalize(document.text))
        if left < min_document_chars:
            document.removed = "too little left after paragraph deduplication"
            stats["emptied_documents_removed"] += 1
