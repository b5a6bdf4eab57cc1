"""The optimizers (AdamW, or Muon for the hidden matrices with AdamW for the rest) and the
warmup + cosine learning-rate schedule."""

from __future__ import annotations

import math

import torch

from capitu.config import OptimConfig
from capitu.errors import UserError


class Optimizers:
    """Several optimizers stepped as one, each param group with its own peak learning rate
    (`peak_lr`), which the schedule scales. Its state dict is one entry per optimizer."""

    def __init__(self, **optimizers: torch.optim.Optimizer):
        self.optimizers = optimizers

    @property
    def param_groups(self) -> list[dict]:
        return [group for optimizer in self.optimizers.values() for group in optimizer.param_groups]

    def set_schedule(self, factor: float) -> None:
        for group in self.param_groups:
            group["lr"] = group["peak_lr"] * factor

    def step(self) -> None:
        for optimizer in self.optimizers.values():
            optimizer.step()

    def zero_grad(self, set_to_none: bool = True) -> None:
        for optimizer in self.optimizers.values():
            optimizer.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict:
        return {name: optimizer.state_dict() for name, optimizer in self.optimizers.items()}

    def load_state_dict(self, state: dict) -> None:
        if set(state) != set(self.optimizers):
            raise UserError(f"the saved optimizer state holds {', '.join(sorted(state))}, this run uses "
                            f"{', '.join(sorted(self.optimizers))} (optim.name changed?)")
        for name, optimizer in self.optimizers.items():
            optimizer.load_state_dict(state[name])


def make_optimizer(model: torch.nn.Module, config: OptimConfig, device_type: str) -> Optimizers:
    """AdamW: weight matrices and embeddings decay; biases and norm gains (1-D) do not. Muon (`optim.name =
    "muon"`): the model's hidden matrices (`model.hidden_matrices()`: attention and MLP weights) go to Muon at
    `optim.muon_lr`, the rest (embeddings, output layer, norms, biases) to AdamW as above. Muon's learning rate is
    on AdamW's scale (Moonshot's RMS matching, `adjust_lr_fn="match_rms_adamw"`)."""
    parameters = [p for p in model.parameters() if p.requires_grad]
    optimizers = {}
    if config.name == "muon":
        if not hasattr(torch.optim, "Muon"):
            raise UserError(f"optim.name=muon needs torch >= 2.9 (torch.optim.Muon); this is torch {torch.__version__}")
        hidden = [p for p in model.hidden_matrices() if p.requires_grad]
        optimizers["muon"] = torch.optim.Muon(
            [{"params": hidden, "peak_lr": config.muon_lr}], lr=config.muon_lr, weight_decay=config.weight_decay,
            momentum=config.muon_momentum, adjust_lr_fn="match_rms_adamw",
        )
        taken = {id(p) for p in hidden}
        parameters = [p for p in parameters if id(p) not in taken]
    groups = [
        {"params": [p for p in parameters if p.dim() >= 2], "weight_decay": config.weight_decay, "peak_lr": config.lr},
        {"params": [p for p in parameters if p.dim() < 2], "weight_decay": 0.0, "peak_lr": config.lr},
    ]
    optimizers["adamw"] = torch.optim.AdamW(
        groups, lr=config.lr, betas=(config.beta1, config.beta2), eps=config.eps,
        fused=device_type in ("cpu", "cuda"),  # one kernel for all parameters: faster on both (docs/measurements.md)
    )
    return Optimizers(**optimizers)


def schedule(step: int, spent: float, config: OptimConfig) -> float:
    """The share of the peak learning rate at `step`: linear warmup over `warmup_steps`, then
    cosine decay to `min_lr_ratio` as `spent`, the share of the budget used (of the steps
    after warmup, or of the seconds), goes from 0 to 1."""
    if step < config.warmup_steps:
        return (step + 1) / config.warmup_steps
    spent = min(max(spent, 0.0), 1.0)
    return config.min_lr_ratio + 0.5 * (1.0 + math.cos(math.pi * spent)) * (1.0 - config.min_lr_ratio)
