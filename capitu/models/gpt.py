"""GPT-2, with switchable position encodings, grouped-query attention and the modern recipe.

With the defaults (`pos="learned"`, `n_kv_head == n_head`, LayerNorm, GELU...) this is exactly GPT-2 (pre-LayerNorm
blocks, tanh GELU, 4x MLP, tied embeddings, scaled residual initialisation); module names follow HF's
GPT2LMHeadModel so that weights map one to one. Each later change is a knob (config.py): the norm (`norm_layer`),
the MLP (`MLP`, `SwiGLU`), QK-norm, an untied head, logit soft-capping, zero-initialised output projections; with
RoPE, RMSNorm, SwiGLU and no biases the model is Llama's (hf.py exports it as such)."""

from __future__ import annotations

import contextlib
import math
from functools import partial

import torch
import torch.nn as nn
import torch.nn.functional as F

from capitu.config import ModelConfig
from capitu.errors import UserError
from capitu.models.kv_cache import KVCache
from capitu.models.loss import linear_cross_entropy
from capitu.models.positions import alibi_bias, alibi_slopes, apply_rope, rope_angles, sinusoidal


class ContextTooLong(UserError):
    pass


def norm_layer(config: ModelConfig) -> nn.Module:
    """GPT-2's LayerNorm (with a bias unless `bias=False`), or RMSNorm with a learned gain as
    Llama's; at `config.eps`."""
    if config.norm == "rmsnorm":
        return nn.RMSNorm(config.n_embd, eps=config.eps)
    return nn.LayerNorm(config.n_embd, eps=config.eps, bias=config.bias)


def masked_attention(q, k, v, mask):
    """Attention written out, for the KV cache: q (B, H, T, d) over every slot of k, v
    (B, H_kv, S, d); mask (T, S) booleans (True: may see) or an additive (1, H, T, S) bias.
    Compiled into the decode step, these few operations fuse into inductor's own loops, where
    the CPU's SDPA kernel costs more than all of them for one query (docs/measurements.md)."""
    k = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)  # GQA: each KV head serves a group
    v = v.repeat_interleave(q.shape[1] // v.shape[1], dim=1)
    scores = (q @ k.transpose(-2, -1)) * q.shape[-1] ** -0.5  # (B, H, T, S)
    scores = scores.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else scores + mask
    return scores.float().softmax(dim=-1).to(v.dtype) @ v  # the softmax in fp32 under bf16 weights too


class CausalSelfAttention(nn.Module):
    def __init__(self, config: ModelConfig, layer: int):
        super().__init__()
        self.layer = layer
        self.qk_norm = config.qk_norm
        self.n_head, self.n_kv_head, self.head_dim = config.n_head, config.kv_heads, config.head_dim
        # one projection for queries, keys and values: n_head + 2 * n_kv_head heads
        self.c_attn = nn.Linear(config.n_embd, (self.n_head + 2 * self.n_kv_head) * self.head_dim,
                                bias=config.bias)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = config.dropout
        self.resid_dropout = nn.Dropout(config.dropout)

    def forward(self, x, rope=None, mask=None, cache: KVCache | None = None, positions=None):
        """x (B, T, C); `mask` an ALiBi bias (which carries the causal mask) or, with a cache,
        the cache's mask of `positions` (T,)."""
        B, T, C = x.shape
        heads = [self.n_head * self.head_dim, self.n_kv_head * self.head_dim, self.n_kv_head * self.head_dim]
        q, k, v = self.c_attn(x).split(heads, dim=2)
        q = q.view(B, T, self.n_head, self.head_dim).transpose(1, 2)  # (B, H, T, d)
        k = k.view(B, T, self.n_kv_head, self.head_dim).transpose(1, 2)  # (B, H_kv, T, d)
        v = v.view(B, T, self.n_kv_head, self.head_dim).transpose(1, 2)
        if self.qk_norm:  # unit RMS per head: attention logits cannot grow with the weights
            q, k = F.rms_norm(q, (self.head_dim,)), F.rms_norm(k, (self.head_dim,))
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        if mask is not None and mask.is_floating_point():
            mask = mask.to(q.dtype)
        if cache is not None:  # decoding: every slot of the cache, masked by position
            k, v = cache.update(self.layer, positions, k, v)
            # decided when tracing: the compiled step fuses the written-out form; eagerly, SDPA's kernel
            y = masked_attention(q, k, v, mask) if torch.compiler.is_compiling() else self.attention(q, k, v, mask)
        else:
            y = self.attention(q, k, v, mask)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # (B, T, H * d)
        return self.resid_dropout(self.c_proj(y))

    def attention(self, q, k, v, mask):
        """SDPA: causal without a mask; else under `mask`, an ALiBi bias or the cache's booleans (GQA without
        copying keys and values)."""
        # CPU bf16 autocast: attention stays fp32, whose flash kernel trains faster than the
        # bf16 one at small head sizes (docs/measurements.md)
        fp32_attention = q.device.type == "cpu" and torch.is_autocast_enabled("cpu")
        if fp32_attention:
            q, k, v = q.float(), k.float(), v.float()
            mask = mask.float() if mask is not None and mask.is_floating_point() else mask
        with torch.autocast("cpu", enabled=False) if fp32_attention else contextlib.nullcontext():
            return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=mask is None,
                                                  dropout_p=self.dropout if self.training else 0.0,
                                                  enable_gqa=self.n_kv_head != self.n_head)


def relu2(x):
    return F.relu(x).square()


class MLP(nn.Module):
    """Two matrices and an activation: GPT-2's tanh GELU, or squared ReLU (So et al. 2021, Primer; modded-nanogpt)."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, config.hidden, bias=config.bias)
        self.c_proj = nn.Linear(config.hidden, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)
        self.activation = relu2 if config.mlp == "relu2" else partial(F.gelu, approximate="tanh")

    def forward(self, x):
        return self.dropout(self.c_proj(self.activation(self.c_fc(x))))


class SwiGLU(nn.Module):
    """Shazeer (2020), Llama's MLP: silu(x W_gate) * (x W_up), then W_down. Gate and up are one
    matrix here (`c_fc`, gate rows first), split again by the HF export."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 2 * config.hidden, bias=config.bias)
        self.c_proj = nn.Linear(config.hidden, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x):
        gate, up = self.c_fc(x).chunk(2, dim=-1)  # (B, T, hidden) each
        return self.dropout(self.c_proj(F.silu(gate) * up))


class Block(nn.Module):
    def __init__(self, config: ModelConfig, layer: int):
        super().__init__()
        self.ln_1 = norm_layer(config)
        self.attn = CausalSelfAttention(config, layer)
        self.ln_2 = norm_layer(config)
        self.mlp = SwiGLU(config) if config.mlp == "swiglu" else MLP(config)

    def forward(self, x, rope=None, mask=None, cache=None, positions=None):
        x = x + self.attn(self.ln_1(x), rope, mask, cache, positions)
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        config.validate(building=True)
        self.config = config
        self.transformer = nn.ModuleDict(
            dict(wte=nn.Embedding(config.vocab_size, config.n_embd), drop=nn.Dropout(config.dropout),
                 h=nn.ModuleList([Block(config, i) for i in range(config.n_layer)]), ln_f=norm_layer(config)))
        if config.pos == "learned":
            self.transformer["wpe"] = nn.Embedding(config.block_size, config.n_embd)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        if config.tie_embeddings:
            self.lm_head.weight = self.transformer.wte.weight
        if config.pos == "alibi":
            self.register_buffer("alibi_slopes", alibi_slopes(config.n_head), persistent=False)
        self.apply(self._init_weights)
        # GPT-2: residual projections scaled by 1/sqrt(2 * n_layer), one per residual add;
        # zero_init_proj (modded-nanogpt): every block starts as the identity
        for name, parameter in self.named_parameters():
            if name.endswith("c_proj.weight"):
                if config.zero_init_proj:
                    nn.init.zeros_(parameter)
                else:
                    nn.init.normal_(parameter, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    @staticmethod
    def _init_weights(module):
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def new_cache(self, batch: int, max_length: int) -> KVCache:
        """A cache of `max_length` positions, in the model's dtype and on its device."""
        c, weight = self.config, self.transformer.wte.weight
        if c.pos == "learned" and max_length > c.block_size:
            raise ContextTooLong(f"learned positions stop at {c.block_size} tokens; a cache of {max_length} asked")
        return KVCache(c.n_layer, batch, c.kv_heads, max_length, c.head_dim, weight.dtype, weight.device)

    def kv_bytes_per_token(self, bytes_per_value: int = 4) -> int:
        """Keys and values of every layer for one position: 2 * layers * kv heads * head size."""
        c = self.config
        return 2 * c.n_layer * c.kv_heads * c.head_dim * bytes_per_value

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None, last_only: bool = False,
                cache: KVCache | None = None, positions: torch.Tensor | None = None):
        """idx (B, T) token ids -> (logits (B, T, V), None); with targets (B, T), (None, the mean loss), the output
        layer fused with the loss (models/loss.py: the logits are never materialised); with `last_only`, logits (B,
        1, V) of the last position alone (generation needs no more, and the output layer is the costliest matrix of
        a small model). With a cache, `positions` (T,) are idx's positions: their keys and values are written there,
        and attention reads every slot up to each query's position."""
        B, T = idx.shape
        if positions is None:
            positions = torch.arange(T, device=idx.device)
        if cache is None and self.config.pos == "learned" and T > self.config.block_size:
            raise ContextTooLong(f"learned positions stop at {self.config.block_size} tokens; got {T} (crop the "
                                 "context, or use a model with sinusoidal, rope, alibi or no positions)")
        x = self.transformer.wte(idx)
        pos = self.config.pos
        if pos == "learned":
            x = x + self.transformer.wpe(positions)
        elif pos == "sinusoidal":
            # as Vaswani et al. (2017, 3.4): embeddings scaled by sqrt(d_model), or the unit-amplitude
            # sinusoids would drown token embeddings initialised at std 0.02
            x = x * math.sqrt(self.config.n_embd) + sinusoidal(positions, self.config.n_embd).to(x.dtype)
        rope = rope_angles(positions, self.config.head_dim, self.config.rope_base) if pos == "rope" else None
        if pos == "alibi":  # the bias carries the causal mask, over the cache's slots or the sequence
            mask = alibi_bias(self.alibi_slopes, positions, cache.max_length if cache is not None else T)
        else:
            mask = cache.mask(positions) if cache is not None else None
        x = self.transformer.drop(x)
        for block in self.transformer.h:
            x = block(x, rope, mask, cache, positions)
        x = self.transformer.ln_f(x)
        if targets is not None:
            return None, linear_cross_entropy(x, self.lm_head.weight, targets, self.config.logit_softcap)
        if last_only:
            x = x[:, -1:]  # (B, 1, C)
        logits = self.lm_head(x)
        if self.config.logit_softcap:
            cap = self.config.logit_softcap
            logits = cap * torch.tanh(logits / cap)
        return logits, None

    def hidden_matrices(self) -> list[nn.Parameter]:
        """The blocks' 2-D weights (attention and MLP): what Muon trains."""
        return [p for p in self.transformer.h.parameters() if p.dim() == 2]

    def num_params(self, embeddings: bool = True) -> int:
        """Unique parameters; without embeddings: less the token and position tables (an
        untied output layer is a projection and stays)."""
        total = sum(p.numel() for p in self.parameters())
        if not embeddings:
            total -= self.transformer.wte.weight.numel()
            if "wpe" in self.transformer:
                total -= self.transformer.wpe.weight.numel()
        return total

    def flops_per_token(self) -> int:
        """Training FLOPs per token (PaLM appendix B, as nanoGPT): 6N + 12 * L * H * d * T, N the
        parameters that multiply (less the lookup tables: position embeddings, and the token
        embeddings when an untied output layer does the output's work)."""
        c = self.config
        n = self.num_params() - (self.transformer.wpe.weight.numel() if "wpe" in self.transformer else 0)
        if not c.tie_embeddings:
            n -= self.transformer.wte.weight.numel()
        return 6 * n + 12 * c.n_layer * c.n_head * c.head_dim * c.block_size
