"""Plain PyTorch references for Block-Sparse: pooled scores and the mask."""

from __future__ import annotations

import math

import torch

from ..attention.reference import causal_mask
from ..layout import BLOCK_M, BLOCK_N, KVSource, SeqLayout


def block_scores_reference(q: torch.Tensor, kv: KVSource, layout: SeqLayout, heads: list[int],
                           sm_scale: float | None = None) -> torch.Tensor:
    """``[H, NB, tiles]`` pooled scores, -inf past the causal edge, +inf for forced tiles."""
    num_heads, head_dim = q.shape[1], q.shape[2]
    group = num_heads // kv.num_kv_heads
    scale = sm_scale if sm_scale is not None else 1.0 / math.sqrt(head_dim)
    n_tiles = (layout.max_kv_len + BLOCK_N - 1) // BLOCK_N
    out = torch.full((len(heads), layout.num_blocks, n_tiles), float("-inf"), dtype=torch.float64)
    blk = 0
    for b in range(layout.num_seqs):
        q_len, kv_len, q0 = layout.q_lens_host[b], layout.kv_lens_host[b], layout.q_starts_host[b]
        k, _ = kv.gather(b, kv_len)
        ctx = kv_len - q_len
        for m in range((q_len + BLOCK_M - 1) // BLOCK_M):
            r0, r1 = m * BLOCK_M, min(q_len, (m + 1) * BLOCK_M)
            first, last = ctx + r0, ctx + r1 - 1
            for i, h in enumerate(heads):
                qbar = q[q0 + r0:q0 + r1, h].double().cpu().mean(0)
                for t in range(last // BLOCK_N + 1):
                    kbar = k[t * BLOCK_N:min(kv_len, (t + 1) * BLOCK_N), h // group].double().cpu().mean(0)
                    out[i, blk, t] = float(qbar @ kbar) * scale
                for t in {0, first // BLOCK_N, last // BLOCK_N}:
                    out[i, blk, t] = float("inf")
            blk += 1
    return out


def extra_tiles_reference(q: torch.Tensor, kv: KVSource, layout: SeqLayout, heads: list[int],
                          per_block: int, local: int, sm_scale: float | None = None
                          ) -> list[list[set[int]]]:
    """Per (head, block): the set of the ``per_block`` best far tile starts (the sink tile,
    the block's own tiles and tiles ending within ``local`` keys before it left out)."""
    scores = block_scores_reference(q, kv, layout, heads, sm_scale)
    out: list[list[set[int]]] = [[] for _ in heads]
    blk = 0
    for b in range(layout.num_seqs):
        q_len, kv_len = layout.q_lens_host[b], layout.kv_lens_host[b]
        for m in range((q_len + BLOCK_M - 1) // BLOCK_M):
            first = kv_len - q_len + m * BLOCK_M
            for i in range(len(heads)):
                row = scores[i, blk].clone()
                row[row == float("inf")] = float("-inf")
                for t in range(row.numel()):
                    if t * BLOCK_N + BLOCK_N > first - local:
                        row[t] = float("-inf")
                ok = [t for t in row.argsort(descending=True).tolist()
                      if row[t] > float("-inf")]
                out[i].append({t * BLOCK_N for t in ok[:per_block]})
            blk += 1
    return out


def block_sparse_mask(tiles_per_block: list[list[int]], q_len: int, kv_len: int) -> torch.Tensor:
    """Keys each query row sees when block ``m`` keeps key tiles ``tiles_per_block[m]``."""
    mask = torch.zeros(q_len, kv_len, dtype=torch.bool)
    for m, tiles in enumerate(tiles_per_block):
        r0, r1 = m * BLOCK_M, min(q_len, (m + 1) * BLOCK_M)
        for t in tiles:
            mask[r0:r1, t * BLOCK_N:min(kv_len, (t + 1) * BLOCK_N)] = True
    return mask & causal_mask(q_len, kv_len)
