"""Decoders: a model's state for generating at one batch size, owned by the caller (`make_decoder`).
`prefill` (eager) writes a prompt at a position and `step` one token; generate.py drives both kinds.

`Decoder` (GPT) holds a KV cache of the model's context; its step is compiled once (gpt-fast's
method): shapes never change, so on CUDA it runs as a CUDA graph. At small batches the step is
compiled from a view of the model whose linears are multiply-and-sum (`ReductionLinear`), which
inductor fuses with the work around them (docs/measurements.md). Where compiling fails: one warning
line, and an eager step. `WindowDecoder` (Bengio's FFN) has no cache: each step reads the last n tokens."""

from __future__ import annotations

import copy
import logging
import time

import torch
import torch.nn as nn

from capitu.device import compile_step
from capitu.errors import warn

LOG = logging.getLogger(__name__)
# the largest batch at which the fused loops won on 2 CPU cores and an H200 (docs/measurements.md)
REDUCTION_BATCH = {"cpu": 8, "cuda": 1}


class ReductionLinear(nn.Module):
    """An nn.Linear's own weight and bias (shared, not copied), applied as a product and a sum
    over the input features, for inductor to fuse; eagerly it would be slow: compiled use only."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.weight, self.bias = linear.weight, linear.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = (x[..., None, :] * self.weight).sum(-1)  # (..., 1, in) * (out, in) -> (..., out)
        return y if self.bias is None else y + self.bias


def with_reduction_linears(module: nn.Module) -> nn.Module:
    """A copy of the module tree sharing every parameter and buffer, its nn.Linear layers
    replaced by ReductionLinear; the module itself is untouched."""
    clone = copy.copy(module)  # a new module object over the same tensors
    clone._modules = type(module._modules)(
        (name, ReductionLinear(child) if isinstance(child, nn.Linear) else with_reduction_linears(child))
        for name, child in module._modules.items()
    )
    return clone


def reduction_linears_pay(device: torch.device, batch: int) -> bool:
    """Whether the step should run ReductionLinear layers (measured per device type)."""
    return batch <= REDUCTION_BATCH.get(device.type, 0)


class Decoder:
    """A GPT's KV cache for `batch` sequences of its context, and its steps. `path` says
    which step runs ("compiled", or "eager" and `reason`), `compile_s` what compiling took."""

    def __init__(self, model, batch: int, compile: bool = True, reduction: bool | None = None):
        """`reduction`: whether the compiled step runs ReductionLinear layers (None: where they pay)."""
        self.model, self.window = model, model.config.block_size
        self.device = device = model.transformer.wte.weight.device
        self.cache = model.new_cache(batch, self.window)
        self.position = torch.zeros(1, dtype=torch.long, device=device)  # the step's input, written in place
        self.path, self.reason, self.compile_s, self.reduction = "eager", "compiling turned off", 0.0, False
        self.eager = self.run_step = self.forward_with(model)
        if compile:
            if reduction is None:
                reduction = reduction_linears_pay(device, batch)
            self.compile(batch, reduction)

    def forward_with(self, model):
        """The step through `model`: tokens (B, T) at positions (T,) -> logits (B, V) after the last."""
        return lambda tokens, positions: model(tokens, last_only=True, cache=self.cache, positions=positions)[0][:, -1]

    def compile(self, batch: int, reduction: bool) -> None:
        compiled = compile_step(self.forward_with(with_reduction_linears(self.model) if reduction else self.model),
                                self.position.device)
        LOG.info("compiling the decode step for batch %d (once per model and batch size; --no-compile skips it)",
                 batch)
        started = time.perf_counter()
        try:  # trace and compile now, on slot 0 (every prefill overwrites it), as generation runs: no grad
            with torch.no_grad():
                compiled(torch.zeros(batch, 1, dtype=torch.long, device=self.position.device), self.position)
            self.run_step, self.path, self.reason, self.reduction = compiled, "compiled", "", reduction
        except Exception as error:  # no compiler, an unsupported op...: decode eagerly
            message = str(error).splitlines()[0][:200] if str(error) else ""
            self.reason = f"compiling failed ({type(error).__name__}: {message})"
            warn(f"{self.reason}; decoding eagerly")
        self.compile_s = time.perf_counter() - started

    def prefill(self, tokens: torch.Tensor, position: int) -> torch.Tensor:
        """tokens (B, T) from `position` on -> logits (B, V) after the last of them (eager)."""
        positions = torch.arange(position, position + tokens.shape[1], device=tokens.device)
        return self.eager(tokens, positions)

    def step(self, tokens: torch.Tensor, position: int) -> torch.Tensor:
        """tokens (B, 1) at `position` -> logits (B, V) of the next token."""
        # fill_ queues a write; torch.tensor(position, device=...) would wait for the GPU each token
        return self.run_step(tokens, self.position.fill_(position))


class WindowDecoder:
    """Bengio's FFN: no cache, no window to shift (`window` None); each step reads the last n
    tokens (end-of-text before the start, as the model pads)."""

    window = None
    path, reason, compile_s = "eager", "no KV cache (a window model)", 0.0

    def __init__(self, model):
        self.model, self.context = model, model.config.ffn_context
        self.device = next(model.parameters()).device

    def prefill(self, tokens: torch.Tensor, position: int) -> torch.Tensor:
        self.tokens = tokens[:, -self.context:]  # (B, <= n)
        return self.model(self.tokens, last_only=True)[0][:, -1]

    def step(self, tokens: torch.Tensor, position: int) -> torch.Tensor:
        return self.prefill(torch.cat([self.tokens, tokens], dim=1), position)


def make_decoder(model, batch: int, compile: bool = True) -> Decoder | WindowDecoder:
    """The decoder of a model in eval mode for `batch` sequences (compiled now, with `compile`)."""
    return Decoder(model, batch, compile) if model.config.kind == "gpt" else WindowDecoder(model)
