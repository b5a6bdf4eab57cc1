"""The fast decode path (gpt-fast's method): a static KV cache and a one-token step whose
shapes never change, compiled once per model, batch size and context.

On CUDA the step runs as a CUDA graph (`mode="reduce-overhead"`). At small batches (see
`reduction_linears_pay`) the step is compiled from a view of the model whose linear layers
are written as multiply-and-sum (`ReductionLinear`), which inductor fuses with the work
around them. On CPU each becomes one loop over both cores, where the library's
matrix-vector product runs on one core and pays a call per layer: on the tiny preset that is
the larger half of the gain (benchmarks/decode.py). On a GPU at batch 1 it means fewer,
fused kernels in the graph (benchmarks/gpu.py). The prompt is prefilled eagerly by the model
itself; where compiling fails, one warning line, and the step runs eagerly.
"""

from __future__ import annotations

import copy
import sys
import time

import torch
import torch.nn as nn

from capitu.errors import warn
from capitu.models.kv_cache import StaticKVCache

REDUCTION_BATCH = {"cpu": 8, "cuda": 1}  # the largest batch at which the fused loops won (measured)


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
    """Whether the step should run ReductionLinear layers. Measured: on 2 CPU cores they win
    up to batch 8 (x1.3), the library from 16 (x1.5); on an H200 at the gpt2 shape, at batch 1
    a step took 0.451 ms against the library's 0.465 (0.455 against 0.528 in a first probe), at
    batch 4 0.910 against 0.548 (docs/gpu.md)."""
    return batch <= REDUCTION_BATCH.get(device.type, 0)


class StaticDecoder:
    """`prefill` (eager) writes a prompt at a position, `step` (compiled) one token at a tensor
    position, into one StaticKVCache. `path` says which ran ("compiled", or "eager" and
    `reason`), `compile_s` what compiling took."""

    def __init__(self, model, batch: int, window: int, reduction: bool | None = None):
        """`reduction`: whether the step runs ReductionLinear layers (None: where they pay)."""
        c, weight = model.config, model.transformer.wte.weight
        self.model = model
        self.cache = StaticKVCache(c.n_layer, batch, c.kv_heads, window, c.head_dim, weight.dtype, weight.device)
        self.path, self.reason, self.compile_s = "compiled", "", 0.0
        on_cuda = weight.device.type == "cuda"
        if reduction is None:
            reduction = reduction_linears_pay(weight.device, batch)
        self.step_model = with_reduction_linears(model) if reduction else model
        # every decoder compiles the same code for its own model and batch: a process serving
        # or benchmarking several needs more than dynamo's default 8 versions of it
        torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
        compiled = torch.compile(self.compiled_step, dynamic=False, fullgraph=True,
                                 mode="reduce-overhead" if on_cuda else None)
        started = time.perf_counter()
        if sys.stderr.isatty():  # a person waits: say why (seconds; a log or a pipe gets nothing)
            print(f"capitu: compiling the decode step for batch {batch} (once per model and batch size; "
                  "--no-compile skips it)", file=sys.stderr, flush=True)
        try:  # trace and compile now, on slot 0 (every prefill overwrites it), as generation runs: no grad
            with torch.no_grad():
                compiled(torch.zeros(batch, 1, dtype=torch.long, device=weight.device),
                         torch.zeros((), dtype=torch.long, device=weight.device))
            self.step = compiled
        except Exception as error:  # no compiler, an unsupported op...: decode eagerly
            self.path, self.step = "eager", self.prefill  # the same step, uncompiled
            self.reason = f"compiling failed ({type(error).__name__}: {str(error).splitlines()[0][:200] if str(error) else ''})"
            warn(f"{self.reason}; decoding eagerly")
        self.compile_s = time.perf_counter() - started

    def compiled_step(self, tokens: torch.Tensor, position: torch.Tensor) -> torch.Tensor:
        """tokens (B, 1) at `position` (0-d) -> logits (B, V) of the next token."""
        return self.step_model(tokens, cache=self.cache, last_only=True, start=position)[0][:, -1]

    def prefill(self, tokens: torch.Tensor, position: int | torch.Tensor) -> torch.Tensor:
        """tokens (B, T) from `position` -> logits (B, V) after the last of them."""
        start = torch.as_tensor(position, device=tokens.device)
        return self.model(tokens, cache=self.cache, last_only=True, start=start)[0][:, -1]


def static_decoder(model, batch: int, window: int) -> StaticDecoder:
    """The model's decoder for this batch size and context, made (and compiled) once."""
    decoders = model.__dict__.setdefault("_static_decoders", {})
    if (batch, window) not in decoders:
        decoders[(batch, window)] = StaticDecoder(model, batch, window)
    return decoders[(batch, window)]
