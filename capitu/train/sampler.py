"""Training windows drawn from a token file by a seeded generator whose state is checkpointed.

One generator draws the windows of a whole optimizer step for every process: process r takes, for micro-batch m, the
slice (m * world + r). So N processes with accumulation A see exactly the batches one process sees with accumulation
N * A, and a resumed run sees exactly the batches it would have seen."""

from __future__ import annotations

import numpy as np
import torch


class WindowSampler:
    def __init__(self, tokens: np.ndarray, block_size: int, seed: int):
        self.tokens = tokens
        self.block_size = block_size
        self.generator = torch.Generator().manual_seed(seed)

    def step_starts(self, windows: int) -> np.ndarray:
        """Start offsets of every window of one optimizer step (all processes, all micro-batches)."""
        high = len(self.tokens) - self.block_size - 1
        return torch.randint(0, high + 1, (windows,), generator=self.generator).numpy()

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])


def windows(tokens: np.ndarray, starts: np.ndarray, block_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs and next-token targets, each (len(starts), block_size)."""
    rows = np.stack([np.asarray(tokens[s: s + block_size + 1], dtype=np.int64) for s in starts])
    batch = torch.from_numpy(rows)
    return batch[:, :-1], batch[:, 1:]


def evaluation_starts(length: int, block_size: int, count: int) -> np.ndarray:
    """`count` windows spread evenly over a split: the same ones at every validation."""
    high = length - block_size - 1
    return np.unique(np.linspace(0, max(high, 0), num=count).astype(np.int64))
