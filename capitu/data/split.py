"""Split documents into train, validation and test by bytes, and check for leaks.

A document goes to one split whole. The order is a seeded shuffle of the names, so the
same documents and seed always give the same split.
"""

from __future__ import annotations

import random

from capitu.data.dedup import Document, paragraph_fingerprints
from capitu.errors import UserError

SPLITS = ("train", "val", "test")


def assign_splits(documents: list[Document], seed: int, val_fraction: float, test_fraction: float) -> None:
    """Set `split` on every kept document: test and validation filled to their byte share
    first, in shuffled order, the rest to train."""
    kept = sorted((d for d in documents if not d.removed), key=lambda d: d.name)
    if len(kept) < 3:
        raise UserError(
            f"need at least 3 distinct documents to split train/val/test by document, found {len(kept)}"
        )
    random.Random(seed).shuffle(kept)
    total = sum(len(d.text.encode("utf-8")) for d in kept)
    target = {"test": test_fraction * total, "val": val_fraction * total}
    filled = {"test": 0, "val": 0}
    for document in kept[:-1]:  # the last one always goes to train, so train is never empty
        # the emptier of the splits still under target first, so both get a document
        open_splits = [s for s in ("test", "val") if filled[s] < target[s]]
        split = min(open_splits, key=lambda s: filled[s] / target[s], default="train")
        document.split = split
        if split != "train":
            filled[split] += len(document.text.encode("utf-8"))
    kept[-1].split = "train"


def count_leaks(documents: list[Document], min_paragraph_chars: int) -> int:
    """Validation and test paragraphs (long enough to deduplicate) that also occur in train."""
    train = {
        mark
        for d in documents
        if d.split == "train"
        for mark in paragraph_fingerprints(d.text, min_paragraph_chars)
        if mark is not None
    }
    return sum(
        1
        for d in documents
        if d.split in ("val", "test")
        for mark in paragraph_fingerprints(d.text, min_paragraph_chars)
        if mark is not None and mark in train
    )
