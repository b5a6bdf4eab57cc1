"""Tokenizers: a byte-level BPE trained with HF `tokenizers`, and a lossless character one.

Both reserve id 0 for the end-of-text token that separates documents, encode any string
and decode back exactly (`decode(encode(text)) == text`)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Iterable, Protocol

import numpy as np
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders, models, pre_tokenizers, processors, trainers

from capitu.errors import UserError

EOT = "<|endoftext|>"
EOT_ID = 0
BYTE_LEVEL_BASE = 257  # end-of-text and the 256 bytes a byte-level vocabulary always holds
MAX_VOCAB = 1 << 20
CHAR_FORMAT = "capitu-char-tokenizer"


class Tokenizer(Protocol):
    kind: str
    vocab_size: int
    eot_id: int

    def encode(self, text: str) -> list[int]: ...
    def encode_batch(self, texts: list[str]) -> list[list[int]]: ...
    def decode(self, ids: Iterable[int]) -> str: ...
    def save(self, path: Path) -> None: ...


class BPETokenizer:
    """GPT-2's byte-level BPE (no prefix space, so the round trip is exact). capitu's own put
    end-of-text at id 0; an imported one (OpenAI's GPT-2: 50256) keeps its own."""

    kind = "bpe"

    def __init__(self, hf: HFTokenizer):
        self.hf = hf
        self.vocab_size = hf.get_vocab_size()
        eot_id = hf.token_to_id(EOT)
        if eot_id is None:
            raise UserError(f"the tokenizer has no {EOT} token, which capitu puts before every document")
        self.eot_id = eot_id

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int, show_progress: bool = True) -> "BPETokenizer":
        check_vocab_size(vocab_size, BYTE_LEVEL_BASE + 1)
        hf = HFTokenizer(models.BPE())
        hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        hf.decoder = decoders.ByteLevel()
        hf.post_processor = processors.ByteLevel(trim_offsets=False)
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            min_frequency=2,
            special_tokens=[EOT],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=show_progress and sys.stdout.isatty(),  # into a log or a pipe, its bar is blank lines
        )
        hf.train_from_iterator(texts, trainer)
        return cls(hf)

    def encode(self, text: str) -> list[int]:
        return self.hf.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self.hf.encode_batch(texts, add_special_tokens=False)]

    def decode(self, ids: Iterable[int]) -> str:
        return self.hf.decode(list(ids), skip_special_tokens=False)

    def save(self, path: Path) -> None:
        self.hf.save(str(path))


class CharTokenizer:
    """One id per character seen in training; any other character falls back to its UTF-8
    bytes (ids 1-256), so every string is encoded losslessly."""

    kind = "char"
    eot_id = EOT_ID

    def __init__(self, chars: str):
        self.chars = chars
        self.vocab_size = BYTE_LEVEL_BASE + len(chars)
        self.char_to_id = {c: BYTE_LEVEL_BASE + i for i, c in enumerate(chars)}
        codepoints = np.array([ord(c) for c in chars], dtype=np.int64)
        self._sorted_order = np.argsort(codepoints)
        self._sorted_codepoints = codepoints[self._sorted_order]

    @classmethod
    def train(cls, texts: Iterable[str]) -> "CharTokenizer":
        seen: set[str] = set()
        for text in texts:
            seen.update(text)
        return cls("".join(sorted(seen)))

    def encode(self, text: str) -> list[int]:
        codepoints = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32).astype(np.int64)
        if len(self._sorted_codepoints) == 0:
            return self._encode_slow(text)
        slot = np.searchsorted(self._sorted_codepoints, codepoints).clip(max=len(self.chars) - 1)
        known = self._sorted_codepoints[slot] == codepoints
        if not known.all():
            return self._encode_slow(text)
        return (self._sorted_order[slot] + BYTE_LEVEL_BASE).tolist()

    def _encode_slow(self, text: str) -> list[int]:
        ids: list[int] = []
        for char in text:
            if char in self.char_to_id:
                ids.append(self.char_to_id[char])
            else:
                ids.extend(1 + byte for byte in char.encode("utf-8"))
        return ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [self.encode(text) for text in texts]

    def decode(self, ids: Iterable[int]) -> str:
        parts: list[str] = []
        pending = bytearray()  # consecutive byte-fallback ids form one UTF-8 sequence
        for i in ids:
            i = int(i)
            if 1 <= i < BYTE_LEVEL_BASE:
                pending.append(i - 1)
                continue
            if pending:
                parts.append(pending.decode("utf-8", errors="replace"))
                pending.clear()
            if i == EOT_ID:
                parts.append(EOT)
            elif BYTE_LEVEL_BASE <= i < self.vocab_size:
                parts.append(self.chars[i - BYTE_LEVEL_BASE])
            else:
                raise ValueError(f"token id {i} outside the vocabulary of {self.vocab_size}")
        if pending:
            parts.append(pending.decode("utf-8", errors="replace"))
        return "".join(parts)

    def save(self, path: Path) -> None:
        path.write_text(json.dumps({"format": CHAR_FORMAT, "chars": self.chars}, ensure_ascii=False), encoding="utf-8")


def check_vocab_size(vocab_size: int, minimum: int) -> None:
    if not minimum <= vocab_size <= MAX_VOCAB:
        raise UserError(f"vocab size must be between {minimum} and {MAX_VOCAB}, got {vocab_size}")


def train_tokenizer(kind: str, texts: list[str], vocab_size: int, show_progress: bool = True) -> Tokenizer:
    if kind == "bpe":
        return BPETokenizer.train(texts, vocab_size, show_progress)
    if kind == "char":
        return CharTokenizer.train(texts)
    raise UserError(f"unknown tokenizer '{kind}' (choose bpe or char)")


def load_tokenizer(path: Path) -> Tokenizer:
    try:
        content = json.loads(Path(path).read_text(encoding="utf-8"))
        if content.get("format") == CHAR_FORMAT:
            return CharTokenizer(content["chars"])
        return BPETokenizer(HFTokenizer.from_str(json.dumps(content)))
    except Exception as error:  # a corrupt or foreign file can fail in many ways
        raise UserError(f"cannot load tokenizer {path}: {error}") from None
