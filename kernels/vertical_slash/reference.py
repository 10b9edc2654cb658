"""Plain PyTorch references for Vertical-Slash: the estimate, the selection, the mask."""

from __future__ import annotations

import math

import torch

from ..attention.reference import causal_mask
from ..layout import BLOCK_M, BLOCK_N, KVSource, SeqLayout
from .estimate import LAST_Q


def estimate_reference(q: torch.Tensor, kv: KVSource, layout: SeqLayout, heads: list[int],
                       sm_scale: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Column and diagonal sums of the last-64-query softmax, in float64, row by row."""
    num_heads, head_dim = q.shape[1], q.shape[2]
    group = num_heads // kv.num_kv_heads
    scale = sm_scale if sm_scale is not None else 1.0 / math.sqrt(head_dim)
    B, kv_max = layout.num_seqs, layout.max_kv_len
    vertical = torch.zeros(B, len(heads), kv_max, dtype=torch.float64)
    slash = torch.zeros_like(vertical)
    for b in range(B):
        q_len, kv_len, q0 = layout.q_lens_host[b], layout.kv_lens_host[b], layout.q_starts_host[b]
        n = min(LAST_Q, q_len)
        k, _ = kv.gather(b, kv_len)
        mask = causal_mask(q_len, kv_len)[-n:]
        pos = torch.arange(kv_len - n, kv_len)
        for i, h in enumerate(heads):
            s = (q[q0 + q_len - n:q0 + q_len, h].double().cpu()
                 @ k[:, h // group].double().cpu().T) * scale
            p = torch.softmax(s.masked_fill(~mask, float("-inf")), dim=-1)
            vertical[b, i, :kv_len] = p.sum(0)
            for r in range(n):
                keys = torch.arange(pos[r] + 1)
                slash[b, i].index_add_(0, pos[r] - keys, p[r, keys])
    return vertical, slash


def vertical_slash_mask(cols: list[int], diags: list[int], q_len: int, kv_len: int) -> torch.Tensor:
    """Keys each query row sees under the Vertical-Slash pattern (before causality).

    A block of 64 rows starting at position ``qs`` sees, for each kept diagonal ``d``, the
    64 keys ``qs - d + [0, 64)`` (the tile the diagonal crosses), plus every kept column.
    """
    ctx = kv_len - q_len
    mask = torch.zeros(q_len, kv_len, dtype=torch.bool)
    mask[:, [c for c in cols if 0 <= c < kv_len]] = True
    for m in range((q_len + BLOCK_M - 1) // BLOCK_M):
        r0, r1 = m * BLOCK_M, min(q_len, (m + 1) * BLOCK_M)
        qs = ctx + r0
        for d in diags:
            k0, k1 = max(0, qs - d), min(kv_len, qs - d + BLOCK_N)
            if k0 < k1:
                mask[r0:r1, k0:k1] = True
    return mask & causal_mask(q_len, kv_len)
