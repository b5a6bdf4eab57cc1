"""The n-gram reference: an interpolated modified Kneser–Ney model over the BPE tokens (Chen and
Goodman 1999, the smoothing Bengio et al. 2003 measured their network against).

For an order-N model, the probability of token w after the history h (its last N-1 tokens) is

    P_n(w | h) = max(a_n(h w) - D_n(a_n(h w)), 0) / c_n(h) + gamma_n(h) P_{n-1}(w | h')

with h' the history less its oldest token, a_N the counts of the N-grams and, below the top order,
a_n the continuation counts (how many distinct tokens precede the n-gram), c_n(h) the sum of a_n
over the n-grams that start with h, D_n the three discounts (for a count of 1, 2, 3 or more) from
the count-of-counts of a_n, and gamma_n(h) = (D_n1 N1(h) + D_n2 N2(h) + D_n3 N3+(h)) / c_n(h) the
mass the discounts free (N_k(h): n-grams after h with a count of k). An unseen history hands the
whole mass to the order below; order 1 interpolates with the uniform distribution, so every token
of the vocabulary has a probability.

Counting is numpy over the token array: an n-gram is keyed by (the id of its first n-1 tokens as
an (n-1)-gram) x V + its last token, and ids are indexes into each order's sorted keys."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

ORDERS = range(2, 7)  # the orders validation chooses from


@dataclass
class Level:
    """One order's n-grams from the training tokens, sorted by key."""
    keys: np.ndarray  # context id * V + token (order 1: the token)
    raw: np.ndarray  # occurrences
    continuation: np.ndarray  # distinct tokens seen before the n-gram


def count_ngrams(tokens: np.ndarray, vocab_size: int, max_order: int) -> list[Level]:
    """Every order's n-grams, raw and continuation counts, up to `max_order`."""
    tokens = np.asarray(tokens, dtype=np.int64)
    raw = np.bincount(tokens, minlength=vocab_size)
    levels = [Level(keys=np.arange(vocab_size, dtype=np.int64), raw=raw, continuation=np.zeros_like(raw))]
    ids = tokens  # ids[j]: the order-k n-gram ending at position j + k - 1
    for order in range(2, max_order + 1):
        keys = ids[:-1] * vocab_size + tokens[order - 1:]  # the (k-1)-gram ending at i-1, then token i
        unique, first, inverse, counts = np.unique(keys, return_index=True, return_inverse=True, return_counts=True)
        # the suffix of the n-gram first seen at j is the (n-1)-gram ending at the same position: ids[j + 1]
        levels[-1].continuation = np.bincount(ids[first + 1], minlength=len(levels[-1].keys))
        levels.append(Level(keys=unique, raw=counts, continuation=np.zeros_like(counts)))
        ids = inverse.reshape(-1)
    return levels


def discounts(counts: np.ndarray) -> np.ndarray:
    """D for a count of 0, 1, 2 and 3+ (Chen and Goodman's estimates from the count-of-counts);
    an estimate the data cannot make (too few n-grams) falls back to half of the count."""
    n = [np.count_nonzero(counts == k) for k in (1, 2, 3, 4)]
    result = np.zeros(4)
    y = n[0] / (n[0] + 2 * n[1]) if n[0] + n[1] else 0.0
    for k in (1, 2, 3):
        estimate = k - (k + 1) * y * n[k] / n[k - 1] if n[k - 1] else 0.0
        result[k] = estimate if 0 < estimate <= k else k / 2
    return result


class KneserNey:
    """An order-N model over a vocabulary of V tokens, from `count_ngrams`' levels."""

    def __init__(self, levels: list[Level], order: int, vocab_size: int):
        self.order, self.vocab_size, self.levels = order, vocab_size, levels[:order]
        self.config = NgramConfig(order=order, vocab_size=vocab_size)
        self.counts, self.discount, self.total, self.gamma = [], [], [], []
        for n, level in enumerate(self.levels, start=1):
            a = level.raw if n == order else level.continuation
            d = discounts(a)
            freed = d[np.minimum(a, 3)] * (a > 0)
            contexts = level.keys // vocab_size if n > 1 else np.zeros(len(a), dtype=np.int64)
            width = len(self.levels[n - 2].keys) if n > 1 else 1
            total = np.bincount(contexts, weights=a, minlength=width)
            gamma = np.bincount(contexts, weights=freed, minlength=width) / np.maximum(total, 1)
            self.counts.append(a)
            self.discount.append(d)
            self.total.append(total)
            self.gamma.append(gamma)

    def _term(self, n: int, ids: np.ndarray, found: np.ndarray) -> np.ndarray:
        a = np.where(found, self.counts[n - 1][np.where(found, ids, 0)], 0)
        return np.maximum(a - self.discount[n - 1][np.minimum(a, 3)], 0)

    def log_probs(self, tokens: np.ndarray) -> np.ndarray:
        """ln P of tokens[1:], each after the tokens before it in `tokens` (at most N-1 of them)."""
        tokens = np.asarray(tokens, dtype=np.int64)
        found = np.ones(len(tokens), dtype=bool)
        p = (self._term(1, tokens, found) / self.total[0][0] + self.gamma[0][0] / self.vocab_size)
        ids = tokens  # the id of the (n-1)-gram ending at each position, -1 if unseen
        for n in range(2, self.order + 1):
            context = np.concatenate([[-1], ids[:-1]])  # the (n-1)-gram ending just before each position
            seen = context >= 0
            keys = np.where(seen, context, 0) * self.vocab_size + tokens
            index = np.searchsorted(self.levels[n - 1].keys, keys)
            index = np.minimum(index, len(self.levels[n - 1].keys) - 1)
            found = seen & (self.levels[n - 1].keys[index] == keys)
            total = np.where(seen, self.total[n - 1][np.where(seen, context, 0)], 0)
            gamma = np.where(seen, self.gamma[n - 1][np.where(seen, context, 0)], 0)
            has = total > 0
            p = np.where(has, self._term(n, index, found) / np.maximum(total, 1) + gamma * p, p)
            ids = np.where(found, index, -1)
        return np.log(p[1:])

    def distribution(self, history: list[int]) -> np.ndarray:
        """P(· | history) over the whole vocabulary (V,): sums to 1."""
        p = self._term(1, np.arange(self.vocab_size), np.ones(self.vocab_size, dtype=bool)) / self.total[0][0]
        p = p + self.gamma[0][0] / self.vocab_size
        for n in range(2, min(self.order, len(history) + 1) + 1):
            context = self.ngram_id(history[len(history) - (n - 1):])
            if context < 0:
                break
            if self.total[n - 1][context] == 0:
                continue
            keys = self.levels[n - 1].keys
            lo, hi = np.searchsorted(keys, [context * self.vocab_size, (context + 1) * self.vocab_size])
            a = self.counts[n - 1][lo:hi]
            p = self.gamma[n - 1][context] * p
            p[keys[lo:hi] % self.vocab_size] += (np.maximum(a - self.discount[n - 1][np.minimum(a, 3)], 0)
                                                / self.total[n - 1][context])
        return p

    def ngram_id(self, tokens: list[int]) -> int:
        """The id of these tokens as an n-gram of their length; -1 if the training tokens lack it."""
        ident = int(tokens[0])
        for n, token in enumerate(tokens[1:], start=2):
            key = ident * self.vocab_size + int(token)
            keys = self.levels[n - 1].keys
            index = int(np.searchsorted(keys, key))
            if index == len(keys) or keys[index] != key:
                return -1
            ident = index
        return ident


@dataclass
class NgramConfig:
    kind: str = "ngram"
    order: int = 3
    vocab_size: int = 0


def choose_order(train: np.ndarray, val: np.ndarray, vocab_size: int) -> tuple[KneserNey, dict[int, float]]:
    """The order among ORDERS with the lowest validation loss, and each order's loss (nats per token)."""
    levels = count_ngrams(train, vocab_size, max(ORDERS))
    losses = {n: float(-KneserNey(levels, n, vocab_size).log_probs(val).mean()) for n in ORDERS}
    best = min(losses, key=losses.get)
    return KneserNey(levels, best, vocab_size), losses


class NgramDecoder:
    """The n-gram model behind generate()'s decoder interface: prefill and step return ln P as
    logits (B, V), so sampling runs through the same controls as a network's."""
    window = 0  # no context limit: the model reads only its last N-1 tokens
    path, reason, compile_s = "eager", "an n-gram model (numpy)", 0.0

    def __init__(self, model: KneserNey, device: torch.device | str = "cpu"):
        self.model, self.device, self.histories = model, device, []

    def _logits(self) -> torch.Tensor:
        rows = [np.log(self.model.distribution(h[-(self.model.order - 1):])) for h in self.histories]
        return torch.tensor(np.stack(rows), dtype=torch.float32, device=self.device)

    def prefill(self, tokens: torch.Tensor, position: int) -> torch.Tensor:
        self.histories = [row.tolist() for row in tokens]
        return self._logits()

    def step(self, tokens: torch.Tensor, position: int) -> torch.Tensor:
        for history, token in zip(self.histories, tokens[:, 0].tolist()):
            history.append(token)
        return self._logits()
