import math

import pytest

from capitu.config import ModelConfig, OptimConfig
from capitu.models import GPT
from capitu.train.optim import learning_rate, make_optimizer


def test_decay_applies_to_weight_matrices_only():
    model = GPT(ModelConfig(vocab_size=50, block_size=8, n_layer=1, n_head=2, n_embd=8))
    optimizer = make_optimizer(model, OptimConfig(weight_decay=0.1), "cpu")
    decayed, plain = optimizer.param_groups
    names = {id(p): n for n, p in model.named_parameters()}
    assert decayed["weight_decay"] == 0.1 and plain["weight_decay"] == 0.0
    assert all(p.dim() == 2 for p in decayed["params"])
    assert {names[id(p)].rsplit(".", 1)[-1] for p in plain["params"]} == {"bias", "weight"}
    assert all("ln" in names[id(p)] or names[id(p)].endswith("bias") for p in plain["params"])
    assert sum(p.numel() for g in optimizer.param_groups for p in g["params"]) == model.num_params()


def test_warmup_then_cosine_to_the_floor():
    config = OptimConfig(lr=1.0, min_lr_ratio=0.1, warmup_steps=10)
    assert learning_rate(0, 110, config) == pytest.approx(0.1)
    assert learning_rate(9, 110, config) == pytest.approx(1.0)
    assert learning_rate(10, 110, config) == pytest.approx(1.0)
    assert learning_rate(60, 110, config) == pytest.approx(0.1 + 0.5 * 0.9 * (1 + math.cos(math.pi * 0.5)))
    assert learning_rate(110, 110, config) == pytest.approx(0.1)
    assert learning_rate(500, 110, config) == pytest.approx(0.1)
