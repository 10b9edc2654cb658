"""Plain PyTorch references for Vertical-Slash: the estimate, the diagonal merge, the mask."""

from __future__ import annotations

import math

import torch

from ..attention.reference import causal_mask
from ..layout import BLOCK_M, BLOCK_N, KVSource, SeqLayout
from .estimate import LAST_Q
from .index import _BIG


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


def merge_diagonals_reference(diags: torch.Tensor,
                              n_diags: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-head relative segments and chunks of the selected diagonals, in plain torch ops.

    The readable definition that ``index.merge_diagonals`` (one Triton kernel) must match
    bit for bit, padding included: downstream kernels binary-search these arrays.

    ``diags`` is ``[B, H, S]`` sorted descending with ``-1`` padding after ``n_diags``.
    Returns ``seg_start``/``seg_end`` (``[B, H, S]``, relative key offsets, ascending),
    ``n_seg``, ``chunks`` (``[B, H, S, 2]`` (start, lo)) and ``n_chunks`` (``[B, H]``).
    """
    B, H, S = diags.shape
    dev = diags.device
    idx = torch.arange(S, device=dev)
    valid = idx[None, None, :] < n_diags[..., None]
    a = torch.where(valid, -diags.long(), torch.full_like(diags, _BIG, dtype=torch.long))
    prev = torch.cat([torch.full_like(a[..., :1], -_BIG), a[..., :-1]], dim=-1)
    brk = valid & (a > prev + BLOCK_N)
    seg = torch.cumsum(brk.long(), dim=-1) - 1
    n_seg = brk.sum(dim=-1)
    nxt_brk = torch.cat([brk[..., 1:], torch.ones_like(brk[..., :1])], dim=-1)
    nxt_valid = torch.cat([valid[..., 1:], torch.zeros_like(valid[..., :1])], dim=-1)
    last = valid & (nxt_brk | ~nxt_valid)
    dummy = torch.full_like(seg, S)  # scatter target for entries that start/end nothing
    seg_start = torch.full((B, H, S + 1), _BIG, dtype=torch.long, device=dev)
    seg_end = torch.full((B, H, S + 1), _BIG, dtype=torch.long, device=dev)
    seg_start.scatter_(-1, torch.where(brk, seg, dummy), a)
    seg_end.scatter_(-1, torch.where(last, seg, dummy), a + BLOCK_N)
    seg_start, seg_end = seg_start[..., :S], seg_end[..., :S]
    seg_ok = idx[None, None, :] < n_seg[..., None]
    n_ch = torch.where(seg_ok, (seg_end - seg_start + BLOCK_N - 1) // BLOCK_N,
                       torch.zeros_like(seg_start))
    cum = torch.cumsum(n_ch, dim=-1)
    n_chunks = cum[..., -1]
    j = idx.expand(B, H, S).contiguous()
    seg_of = torch.searchsorted(cum.contiguous(), j, right=True).clamp_max(S - 1)
    nch_of = n_ch.gather(-1, seg_of)
    k_in = j - (cum.gather(-1, seg_of) - nch_of)
    start = seg_end.gather(-1, seg_of) - BLOCK_N * (nch_of - k_in)
    lo = seg_start.gather(-1, seg_of)
    ok = j < n_chunks[..., None]
    chunks = torch.stack([torch.where(ok, start, 0), torch.where(ok, lo, 0)], dim=-1)
    return dict(seg_start=seg_start.to(torch.int32).contiguous(),
                seg_end=seg_end.to(torch.int32).contiguous(),
                n_seg=n_seg.to(torch.int32).contiguous(),
                chunks=chunks.to(torch.int32).contiguous(),
                n_chunks=n_chunks.to(torch.int32).contiguous())
