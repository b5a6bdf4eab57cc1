"""AdamW with decay on weight matrices only, and the warmup + cosine learning-rate schedule."""

from __future__ import annotations

import math

import torch

from capitu.config import OptimConfig


def make_optimizer(model: torch.nn.Module, config: OptimConfig, device_type: str) -> torch.optim.AdamW:
    """Weight matrices and embeddings decay; biases and LayerNorm gains (1-D) do not."""
    parameters = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in parameters if p.dim() >= 2], "weight_decay": config.weight_decay},
        {"params": [p for p in parameters if p.dim() < 2], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(
        groups, lr=config.lr, betas=(config.beta1, config.beta2), eps=config.eps, fused=device_type == "cuda"
    )


def learning_rate(step: int, total_steps: int, config: OptimConfig) -> float:
    """Linear warmup over `warmup_steps`, then cosine decay to `min_lr_ratio * lr` at `total_steps`."""
    floor = config.lr * config.min_lr_ratio
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    if step >= total_steps:
        return floor
    progress = (step - config.warmup_steps) / max(1, total_steps - config.warmup_steps)
    return floor + 0.5 * (1.0 + math.cos(math.pi * progress)) * (config.lr - floor)
