"""Plain PyTorch reference for the A-shape mask."""

from __future__ import annotations

import torch

from ..attention.reference import causal_mask
from ..layout import BLOCK_M, BLOCK_N


def a_shape_mask(sink: int, local: int, q_len: int, kv_len: int) -> torch.Tensor:
    """Sinks ``[0, sink)`` plus, for the block starting at ``qs``, the window of
    ``ceil(local / 64)`` 64-key tiles that ends with the block's own rows."""
    ctx = kv_len - q_len
    n_loc = max(1, (local + BLOCK_N - 1) // BLOCK_N)
    mask = torch.zeros(q_len, kv_len, dtype=torch.bool)
    mask[:, :min(sink, kv_len)] = True
    for m in range((q_len + BLOCK_M - 1) // BLOCK_M):
        r0, r1 = m * BLOCK_M, min(q_len, (m + 1) * BLOCK_M)
        qs = ctx + r0
        mask[r0:r1, max(0, qs - BLOCK_N * (n_loc - 1)):min(kv_len, qs + BLOCK_N)] = True
    return mask & causal_mask(q_len, kv_len)
