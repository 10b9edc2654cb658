"""Plain PyTorch reference of the antidiagonal estimate: tile shares and kept tiles."""

from __future__ import annotations

import math

import torch

from ..layout import BLOCK_M, BLOCK_N, KVSource, SeqLayout


def tile_shares_reference(q: torch.Tensor, kv: KVSource, layout: SeqLayout, heads: list[int],
                          stride: int = 8, sm_scale: float | None = None) -> torch.Tensor:
    """``[H, NB, tiles]`` float64: each causal tile's share of its block's attention as the
    antidiagonal scores estimate it (``-1`` past the block's causal edge)."""
    num_heads, head_dim = q.shape[1], q.shape[2]
    group = num_heads // kv.num_kv_heads
    scale = (1.0 / math.sqrt(head_dim) if sm_scale is None else sm_scale) / stride
    n_tiles = max(1, -(-layout.max_kv_len // BLOCK_N))
    out = torch.full((len(heads), layout.num_blocks, n_tiles), -1.0, dtype=torch.float64)
    blk = 0
    for b in range(layout.num_seqs):
        q_len, kv_len, q0 = layout.q_lens_host[b], layout.kv_lens_host[b], layout.q_starts_host[b]
        k, _ = kv.gather(b, kv_len)
        k = k.double().cpu()
        ctx = kv_len - q_len
        n_groups = -(-kv_len // stride)
        k = torch.nn.functional.pad(k, (0, 0, 0, 0, 0, n_groups * stride - kv_len))
        k = k.view(n_groups, stride, k.shape[1], head_dim)  # [groups, i, kv heads, D]
        for mb in range(-(-q_len // BLOCK_M)):
            r0, r1 = mb * BLOCK_M, min(q_len, (mb + 1) * BLOCK_M)
            last = ctx + r1 - 1
            n_t = last // BLOCK_N + 1
            for hi, h in enumerate(heads):
                weights = torch.zeros(n_t * BLOCK_N // stride, dtype=torch.float64)
                n_valid = 0
                for a0 in range(r0, r1, stride):
                    rows = torch.zeros(stride, head_dim, dtype=torch.float64)
                    n = min(stride, r1 - a0)
                    rows[:n] = q[q0 + a0:q0 + a0 + n, h].double().cpu()
                    g_last = ctx + a0 + n - 1
                    n_b = g_last // stride + 1  # key groups whose first key is causal
                    # sum_i q[a0 + stride-1-i] . k[b*stride + i]
                    sc = torch.einsum("id,bid->b", rows.flip(0), k[:n_b, :, h // group]) * scale
                    p = torch.softmax(sc, dim=0)
                    weights[:n_b] += p
                    n_valid += 1
                tile = weights.view(n_t, BLOCK_N // stride).sum(-1) / n_valid
                out[hi, blk, :n_t] = tile
            blk += 1
    return out


def kept_tiles_reference(shares: torch.Tensor, layout: SeqLayout, tau: float, max_tiles: int,
                         sink_tiles: int = 1, local_tiles: int = 1,
                         group_blocks: int = 1) -> list[list[set[int]]]:
    """Per (head, block) the kept tiles.  Blocks are taken in runs of ``group_blocks`` from
    each sequence's first; a run keeps the forced tiles (sinks, the run's own tiles and
    ``local_tiles`` before) and the fewest others, ranked by the mean of its blocks'
    shares, that bring *every* block's kept share to ``tau``, within ``max_tiles`` in all;
    each block lists the run's tiles up to its causal edge."""
    first, last = layout.block_first_pos().cpu(), layout.block_last_pos().cpu()
    n_tiles = shares.shape[2]
    width = max(1, min(max_tiles, n_tiles))
    runs = [range(b0, b0 + n) for _, b0, n in layout.block_ranges(group_blocks)]
    out = []
    for h in range(shares.shape[0]):
        row: list[set[int]] = [set() for _ in range(shares.shape[1])]
        for run in runs:
            own0 = min(int(first[i]) for i in run) // BLOCK_N
            own1 = {i: int(last[i]) // BLOCK_N for i in run}
            n_t = max(own1.values()) + 1
            w = {i: [float(shares[h, i, t]) if t <= own1[i] else 0.0 for t in range(n_t)]
                 for i in run}
            forced = {t for t in range(n_t) if t < sink_tiles or own0 - local_tiles <= t}
            need = {i: tau * sum(w[i]) - sum(w[i][t] for t in forced) for i in run}
            score = {t: sum(w[i][t] for i in run) / len(run) for t in range(n_t)}
            others = sorted((t for t in range(n_t) if t not in forced), key=lambda t: -score[t])
            cap = width - len(forced)
            kept: list[int] = []
            got = dict.fromkeys(run, 0.0)
            for t in others:
                if all(got[i] >= need[i] for i in run) or len(kept) >= cap:
                    break
                kept.append(t)
                for i in run:
                    got[i] += w[i][t]
            for i in run:
                row[i] = {t for t in forced | set(kept) if t <= own1[i]}
        out.append(row)
    return out
