"""Bengio et al. (2003), "A Neural Probabilistic Language Model": the feed-forward LM.

The previous n tokens' embeddings, concatenated (x), feed a tanh hidden layer; the output
is y = b + W x + U tanh(d + H x), W x being the optional direct connections. All positions
of a sequence are computed at once: a window of n embeddings slides over the sequence."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from capitu.config import ModelConfig

PAD_ID = 0  # what precedes a sequence's start: end-of-text, id 0 of every capitu tokenizer


class FeedForwardLM(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        config.validate(building=True)
        self.config = config
        self.context = config.ffn_context
        width = config.ffn_context * config.n_embd
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        self.hidden = nn.Linear(width, config.ffn_hidden)  # H, d
        self.output = nn.Linear(config.ffn_hidden, config.vocab_size)  # U, b
        self.direct = nn.Linear(width, config.vocab_size, bias=False) if config.ffn_direct else None  # W
        self.dropout = nn.Dropout(config.dropout)
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if isinstance(module, nn.Linear) and module.bias is not None:
                nn.init.zeros_(module.bias)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None, last_only: bool = False):
        """idx (B, T) -> (logits (B, T, V), None): position t sees tokens t-n+1 .. t (end-of-text
        before the sequence start); with targets (B, T), (None, the mean loss), as GPT; with
        `last_only`, logits (B, 1, V) for the last position."""
        B, T = idx.shape
        padded = F.pad(idx, (self.context - 1, 0), value=PAD_ID)  # (B, T + n - 1)
        embedded = self.wte(padded)  # (B, T + n - 1, m)
        windows = embedded.unfold(1, self.context, 1)  # (B, T, m, n)
        x = windows.transpose(2, 3).reshape(B, T, -1)  # (B, T, n * m), oldest token first
        if last_only:
            x = x[:, -1:]  # (B, 1, n * m)
        x = self.dropout(x)
        logits = self.output(torch.tanh(self.hidden(x)))
        if self.direct is not None:
            logits = logits + self.direct(x)
        if targets is not None:
            return None, F.cross_entropy(logits.float().view(-1, logits.size(-1)), targets.reshape(-1))
        return logits, None

    def hidden_matrices(self) -> list[nn.Parameter]:
        """Bengio's H, the one hidden layer (the output and direct layers stay with AdamW)."""
        return [self.hidden.weight]

    def num_params(self, embeddings: bool = True) -> int:
        total = sum(p.numel() for p in self.parameters())
        return total if embeddings else total - self.wte.weight.numel()

    def flops_per_token(self) -> int:
        return 6 * self.num_params(embeddings=False)

    def kv_bytes_per_token(self, bytes_per_value: int = 4) -> int:
        return 0
