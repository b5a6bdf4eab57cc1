import math
from collections import Counter, defaultdict

import numpy as np
import pytest
import torch

from capitu.generate import Sampling, generate
from capitu.ngram import KneserNey, NgramDecoder, choose_order, count_ngrams, discounts


def test_a_hand_computed_bigram_model():
    # a b a b a c (a=0, b=1, c=2). Bigram counts: ab 2, ba 2, ac 1: count-of-counts n1=1, n2=2, n3=n4=0,
    # so Y = 1/(1+2*2) = 0.2, D1 = 1 - 2*0.2*2/1 = 0.2, D2 = 2 - 3*0.2*0/2 = 2, D3+ unestimable: 1.5.
    # Unigram continuation counts (distinct predecessors): a {b}, b {a}, c {a} = 1 each; n1=3, Y=1, D1=1,
    # so the unigram level frees all its mass to the uniform: P1 = 1/3 each.
    # After a: c(a) = 3; ab keeps max(2-2, 0) = 0, ac keeps 1-0.2 = 0.8; gamma(a) = (2 + 0.2)/3.
    model = KneserNey(count_ngrams(np.array([0, 1, 0, 1, 0, 2]), 3, 2), 2, 3)
    assert discounts(np.array([2, 2, 1]))[1:3] == pytest.approx([0.2, 2.0])
    after_a = [2.2 / 9, 2.2 / 9, 0.8 / 3 + 2.2 / 9]
    np.testing.assert_allclose(model.distribution([0]), after_a)
    np.testing.assert_allclose(model.distribution([1]), [1 / 3] * 3)  # ba: all of it discounted, gamma(b) = 1
    np.testing.assert_allclose(model.distribution([2]), [1 / 3] * 3)  # c never precedes anything: order 1
    np.testing.assert_allclose(np.exp(model.log_probs(np.array([2, 0, 2, 1]))), [1 / 3, after_a[2], 1 / 3])


def reference_probability(counts, order, vocab, history, token):
    """Interpolated modified Kneser-Ney straight from its definition, with dictionaries."""
    def stats(n):
        a = counts[n] if n == order else {g: len(left) for g, left in continuation[n].items()}
        return a, discounts(np.array(list(a.values())))

    def p(n, h, w):
        a, d = stats(n)
        if n == 1:
            total = sum(a.values())
            gamma = sum(d[min(c, 3)] for c in a.values()) / total
            return max(a.get((w,), 0) - d[min(a.get((w,), 0), 3)], 0) / total + gamma / vocab
        context = tuple(h[-(n - 1):])
        after = {g: c for g, c in a.items() if g[:-1] == context and c > 0}
        if len(h) < n - 1 or not after:
            return p(n - 1, h, w)
        total = sum(after.values())
        gamma = sum(d[min(c, 3)] for c in after.values()) / total
        c = after.get(context + (w,), 0)
        return max(c - d[min(c, 3)], 0) / total + gamma * p(n - 1, h, w)

    continuation = {n: defaultdict(set) for n in range(1, order)}
    for n in range(2, order + 1):
        for g in counts[n]:
            continuation[n - 1][g[1:]].add(g[0])
    return p(order, history, token)


@pytest.mark.parametrize("order", [2, 3, 4])
def test_agrees_with_the_definition_and_sums_to_one(order):
    rng = np.random.default_rng(order)
    vocab = 7
    tokens = rng.choice(vocab - 1, size=400, p=[0.3, 0.25, 0.2, 0.1, 0.1, 0.05])  # token 6 never occurs
    model = KneserNey(count_ngrams(tokens, vocab, order), order, vocab)
    counts = {n: Counter(tuple(tokens[i:i + n].tolist()) for i in range(len(tokens) - n + 1))
              for n in range(1, order + 1)}
    text = rng.choice(vocab, size=30)
    fast = model.log_probs(text)
    for i in range(1, len(text)):
        history = text[max(0, i - order + 1):i].tolist()
        expected = reference_probability(counts, order, vocab, history, int(text[i]))
        assert math.exp(fast[i - 1]) == pytest.approx(expected, rel=1e-9)
        distribution = model.distribution(history)
        assert distribution.sum() == pytest.approx(1.0, abs=1e-12) and (distribution > 0).all()
        assert distribution[text[i]] == pytest.approx(expected, rel=1e-9)


def test_validation_chooses_the_order_and_the_model_generates_through_the_common_loop():
    rng = np.random.default_rng(0)
    cycle = np.tile(np.arange(10), 300)  # a deterministic sequence: more context, lower loss
    noisy = np.where(rng.random(cycle.size) < 0.05, rng.integers(0, 10, cycle.size), cycle)
    model, losses = choose_order(noisy, noisy[:500], 12)
    assert set(losses) == {2, 3, 4, 5, 6} and model.order == min(losses, key=losses.get)
    out = generate(NgramDecoder(model), torch.tensor([[3, 4]]), 8, Sampling(temperature=0))
    assert out[0].tolist() == [3, 4, 5, 6, 7, 8, 9, 0, 1, 2]
    again = [generate(NgramDecoder(model), torch.tensor([[3, 4], [0, 1]]), 6, Sampling(), seed=5) for _ in range(2)]
    assert torch.equal(again[0], again[1])
