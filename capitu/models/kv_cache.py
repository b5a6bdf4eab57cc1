"""A preallocated key/value cache that stores only the model's `n_kv_head` heads."""

from __future__ import annotations

import torch


class KVCache:
    def __init__(self, n_layer: int, batch: int, n_kv_head: int, max_length: int, head_dim: int,
                 dtype: torch.dtype, device: torch.device | str):
        shape = (n_layer, batch, n_kv_head, max_length, head_dim)
        self.keys = torch.zeros(shape, dtype=dtype, device=device)
        self.values = torch.zeros(shape, dtype=dtype, device=device)
        self.max_length = max_length
        self.length = 0  # positions already filled

    def update(self, layer: int, keys: torch.Tensor, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store keys/values (B, H_kv, T, d) after the filled positions; return all so far."""
        end = self.length + keys.shape[2]
        if end > self.max_length:
            raise ValueError(f"KV cache full: {end} positions asked, {self.max_length} allocated")
        self.keys[layer, :, :, self.length:end] = keys
        self.values[layer, :, :, self.length:end] = values
        return self.keys[layer, :, :, :end], self.values[layer, :, :, :end]

    def advance(self, steps: int) -> None:
        self.length += steps

    def reset(self) -> None:
        """Forget every position (the memory stays allocated for the next ones)."""
        self.length = 0

    @property
    def nbytes(self) -> int:
        return self.keys.nbytes + self.values.nbytes

    def bytes_per_token(self) -> int:
        """Bytes the cache holds for one position of one sequence."""
        n_layer, batch, heads, length, dim = self.keys.shape
        return self.nbytes // (batch * length)
