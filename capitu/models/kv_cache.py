"""Preallocated key/value caches that store only the model's `n_kv_head` heads.

`KVCache` returns the filled part (its length grows: shapes change every step). `StaticKVCache`
writes at positions given as a tensor and always returns the whole buffer, with a mask of the
filled positions, so that a decode step has the same shapes at every step and
`torch.compile` traces it once."""

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


class StaticKVCache(KVCache):
    """Positions come from the caller as a tensor (`positions`, (T,)); `update` writes there
    and returns every position; `mask` says which each query may see (itself and before)."""

    static = True

    def __init__(self, n_layer: int, batch: int, n_kv_head: int, max_length: int, head_dim: int,
                 dtype: torch.dtype, device: torch.device | str):
        # one tensor per layer, not views of one: a compiled step then updates each in place,
        # where views of one tensor made it copy the whole cache every step (3x slower at batch 16)
        shape = (batch, n_kv_head, max_length, head_dim)
        self.layer_keys = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(n_layer)]
        self.layer_values = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(n_layer)]
        for tensor in self.layer_keys + self.layer_values:
            # CUDA graphs replay fixed addresses: without this mark, a graph input written in
            # place makes them skip the step (as HF's StaticCache marks its tensors)
            torch._dynamo.mark_static_address(tensor)
        self.max_length = max_length
        self.length = 0

    def update_at(self, layer: int, positions: torch.Tensor, keys: torch.Tensor,
                  values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.layer_keys[layer].index_copy_(2, positions, keys)  # (B, H_kv, S, d) at positions (T,)
        self.layer_values[layer].index_copy_(2, positions, values)
        return self.layer_keys[layer], self.layer_values[layer]

    @property
    def nbytes(self) -> int:
        return 2 * sum(k.nbytes for k in self.layer_keys)

    def bytes_per_token(self) -> int:
        batch, heads, length, dim = self.layer_keys[0].shape
        return self.nbytes // (batch * length)

    def mask(self, positions: torch.Tensor) -> torch.Tensor:
        """(T, S) booleans: query t sees the cached positions up to its own."""
        slots = torch.arange(self.max_length, device=positions.device)
        return slots[None, :] <= positions[:, None]

    def advance(self, steps: int) -> None:
        """Nothing: the caller keeps the position (a Python counter here would change
        between steps and make a compiled step recompile)."""
