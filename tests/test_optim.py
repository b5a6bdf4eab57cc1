import math

import pytest
import torch

from capitu.config import ModelConfig, OptimConfig
from capitu.models import GPT
from capitu.train.optim import make_optimizer, schedule


def test_decay_applies_to_weight_matrices_only():
    model = GPT(ModelConfig(vocab_size=50, block_size=8, n_layer=1, n_head=2, n_embd=8))
    optimizer = make_optimizer(model, OptimConfig(weight_decay=0.1), "cpu")
    assert list(optimizer.optimizers) == ["adamw"]
    decayed, plain = optimizer.param_groups
    names = {id(p): n for n, p in model.named_parameters()}
    assert decayed["weight_decay"] == 0.1 and plain["weight_decay"] == 0.0
    assert all(p.dim() == 2 for p in decayed["params"])
    assert {names[id(p)].rsplit(".", 1)[-1] for p in plain["params"]} == {"bias", "weight"}
    assert all("ln" in names[id(p)] or names[id(p)].endswith("bias") for p in plain["params"])
    assert sum(p.numel() for g in optimizer.param_groups for p in g["params"]) == model.num_params()


def test_warmup_then_cosine_to_the_floor():
    config = OptimConfig(lr=1.0, min_lr_ratio=0.1, warmup_steps=10)
    assert schedule(0, 0.0, config) == pytest.approx(0.1)
    assert schedule(9, 0.0, config) == pytest.approx(1.0)
    assert schedule(10, 0.0, config) == pytest.approx(1.0)
    assert schedule(60, 0.5, config) == pytest.approx(0.1 + 0.5 * 0.9 * (1 + math.cos(math.pi * 0.5)))
    assert schedule(110, 1.0, config) == pytest.approx(0.1)
    assert schedule(500, 4.6, config) == pytest.approx(0.1)  # past the budget: the floor


def test_muon_takes_the_blocks_matrices_and_adamw_the_rest():
    model = GPT(ModelConfig(vocab_size=50, block_size=8, n_layer=2, n_head=2, n_embd=8, pos="learned"))
    optimizer = make_optimizer(model, OptimConfig(name="muon", lr=0.01, muon_lr=0.02), "cpu")
    names = {id(p): n for n, p in model.named_parameters()}
    muon = [names[id(p)] for g in optimizer.optimizers["muon"].param_groups for p in g["params"]]
    adamw = [names[id(p)] for g in optimizer.optimizers["adamw"].param_groups for p in g["params"]]
    # per block: c_attn, attention c_proj, c_fc, MLP c_proj
    assert sorted(muon) == sorted(f"transformer.h.{i}.{m}.weight" for i in range(2)
                                  for m in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"))
    assert "transformer.wte.weight" in adamw and "transformer.wpe.weight" in adamw
    assert not set(muon) & set(adamw) and len(muon) + len(adamw) == len(names)
    optimizer.set_schedule(0.5)
    assert {g["lr"] for g in optimizer.optimizers["muon"].param_groups} == {0.01}
    assert {g["lr"] for g in optimizer.optimizers["adamw"].param_groups} == {0.005}


def test_muon_steps_orthogonalised_updates():
    # one Muon step from zero momentum moves a square matrix by lr * scale * (nearly) an
    # orthogonal matrix: its singular values come out close to equal
    torch.manual_seed(0)
    model = GPT(ModelConfig(vocab_size=50, block_size=8, n_layer=1, n_head=2, n_embd=16))
    optimizer = make_optimizer(model, OptimConfig(name="muon", weight_decay=0.0, muon_lr=0.1), "cpu")
    weight = model.transformer.h[0].attn.c_proj.weight
    before = weight.detach().clone()
    weight.grad = torch.randn_like(weight) * torch.logspace(-2, 0, 16)[:, None]  # badly conditioned
    optimizer.optimizers["muon"].step()
    singular = torch.linalg.svdvals(weight.detach() - before)
    assert singular.max() / singular.min() < 2.0  # Newton-Schulz stops short of exact: about (0.7, 1.2)
