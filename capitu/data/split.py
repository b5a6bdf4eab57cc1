"""Split documents into train, validation and test by bytes, and check for leaks.

A document goes to one split whole. The order is a seeded shuffle of the names, so the
same documents and seed always give the same split."""

from __future__ import annotations

import random

from capitu.data.dedup import Document, paragraph_fingerprints
from capitu.errors import UserError

SPLITS = ("train", "val", "test")


def assign_splits(documents: list[Document], seed: int, val_fraction: float, test_fraction: float) -> None:
    """Set `split` on every kept document. In shuffled order, a document goes to test or
    validation while it fits under that split's byte share, else to train; a split left
    empty (a corpus of few large works) then takes the smallest train document."""
    kept = sorted((d for d in documents if not d.removed), key=lambda d: d.name)
    if len(kept) < 3:
        raise UserError(f"need at least 3 distinct documents to split train/val/test by document, found {len(kept)}")
    random.Random(seed).shuffle(kept)
    size = {d.name: len(d.text.encode("utf-8")) for d in kept}
    total = sum(size.values())
    target = {"test": test_fraction * total, "val": val_fraction * total}
    filled = {"test": 0, "val": 0}
    for document in kept:
        fits = [s for s in ("test", "val") if filled[s] + size[document.name] <= target[s]]
        document.split = fits[0] if fits else "train"
        if fits:
            filled[fits[0]] += size[document.name]
    for split in ("test", "val"):
        if not any(d.split == split for d in kept):
            smallest = min((d for d in kept if d.split == "train"), key=lambda d: (size[d.name], d.name))
            smallest.split = split


def count_leaks(documents: list[Document], min_paragraph_chars: int) -> int:
    """Validation and test paragraphs (long enough to deduplicate) that also occur in train."""
    train = {mark for d in documents if d.split == "train"
             for mark in paragraph_fingerprints(d.text, min_paragraph_chars) if mark is not None}
    return sum(1 for d in documents if d.split in ("val", "test")
               for mark in paragraph_fingerprints(d.text, min_paragraph_chars) if mark is not None and mark in train)
