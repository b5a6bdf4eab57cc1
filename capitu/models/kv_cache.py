"""The KV cache (gpt-fast's): keys and values of the model's `n_kv_head` heads for `max_length` positions,
written at positions given as a tensor. Attention reads every slot, masked by position, so a decode step has
the same shapes at every position: `torch.compile` traces it once, and the eager step uses the same object."""

from __future__ import annotations

import torch


class KVCache:
    def __init__(self, n_layer: int, batch: int, n_kv_head: int, max_length: int, head_dim: int,
                 dtype: torch.dtype, device: torch.device | str):
        # one tensor per layer, not views of one: a compiled step then updates each in place,
        # where views of one tensor made it copy the whole cache every step (docs/measurements.md)
        shape = (batch, n_kv_head, max_length, head_dim)
        self.keys = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(n_layer)]
        self.values = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(n_layer)]
        for tensor in self.keys + self.values:
            # CUDA graphs replay fixed addresses: without this mark, a graph input written in
            # place makes them skip the step (as HF's StaticCache marks its tensors)
            torch._dynamo.mark_static_address(tensor)
        self.max_length = max_length

    def update(self, layer: int, positions: torch.Tensor, keys: torch.Tensor,
               values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write keys/values (B, H_kv, T, d) at `positions` (T,); return every slot (B, H_kv, S, d)."""
        self.keys[layer].index_copy_(2, positions, keys)
        self.values[layer].index_copy_(2, positions, values)
        return self.keys[layer], self.values[layer]

    def mask(self, positions: torch.Tensor) -> torch.Tensor:
        """(T, S) booleans: the query at each position sees the slots up to its own. Slots
        past it hold nothing yet, or what a sequence before a reset left there."""
        slots = torch.arange(self.max_length, device=positions.device)
        return slots[None, :] <= positions[:, None]

    @property
    def nbytes(self) -> int:
        return 2 * sum(k.nbytes for k in self.keys)

    def bytes_per_token(self) -> int:
        """Bytes the cache holds for one position of one sequence."""
        batch, heads, length, dim = self.keys[0].shape
        return self.nbytes // (batch * length)
