"""Position encodings that are computed, not learned: sinusoidal, RoPE and ALiBi.

Each works for any position, so models using them can run past their training context."""

from __future__ import annotations

import math

import torch


def sinusoidal(positions: torch.Tensor, dim: int) -> torch.Tensor:
    """Vaswani et al. (2017): PE[p, 2i] = sin(p / 10000^(2i/d)), PE[p, 2i+1] = cos(same). positions (T,) -> (T, dim)."""
    inverse_frequency = torch.exp(
        -math.log(10000.0) * torch.arange(0, dim, 2, dtype=torch.float32, device=positions.device) / dim
    )
    angles = positions.float()[:, None] * inverse_frequency[None, :]  # (T, dim/2)
    table = torch.zeros(len(positions), dim, device=positions.device)
    table[:, 0::2] = torch.sin(angles)
    table[:, 1::2] = torch.cos(angles[:, : dim // 2])
    return table


def rope_angles(positions: torch.Tensor, head_dim: int, base: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of RoFormer's rotation angles p * base^(-2i/d), each (T, head_dim/2)."""
    inverse_frequency = base ** (
        -torch.arange(0, head_dim, 2, dtype=torch.float32, device=positions.device) / head_dim
    )
    angles = positions.float()[:, None] * inverse_frequency[None, :]
    return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate each pair (x[i], x[i + d/2]) of x (B, H, T, d) by its position's angle."""
    first, second = x.float().chunk(2, dim=-1)
    rotated = torch.cat((first * cos - second * sin, first * sin + second * cos), dim=-1)
    return rotated.type_as(x)


def alibi_slopes(n_head: int) -> torch.Tensor:
    """Press et al. (2022): for 2^k heads the geometric sequence starting at 2^(-8/n) with that ratio; otherwise
    those of the nearest lower power of two, then every other slope of the next power of two."""

    def power_of_two(n: int) -> list[float]:
        start = 2.0 ** (-8.0 / n)
        return [start ** (i + 1) for i in range(n)]

    if math.log2(n_head).is_integer():
        return torch.tensor(power_of_two(n_head))
    lower = 2 ** math.floor(math.log2(n_head))
    extra = power_of_two(2 * lower)[0::2][: n_head - lower]
    return torch.tensor(power_of_two(lower) + extra)


def alibi_bias(slopes: torch.Tensor, query_positions: torch.Tensor, key_length: int) -> torch.Tensor:
    """Additive attention bias -slope * distance, -inf on future keys: (1, H, T, S) (4-D: with
    a 3-D mask CPU attention falls back from the flash kernel to the slower math one)."""
    keys = torch.arange(key_length, device=query_positions.device)
    distance = (query_positions[:, None] - keys[None, :]).float()  # (T, S)
    bias = -slopes.to(query_positions.device)[:, None, None] * distance[None]
    return bias.masked_fill(distance[None] < 0, float("-inf"))[None]
