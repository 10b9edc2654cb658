"""Vertical-Slash index building: selected columns and diagonals -> work lists, on the GPU.

A diagonal ``d`` crosses the 64-row block whose first row is at position ``qs`` in the 64
consecutive keys ``qs - d + [0, 64)``.  In coordinates relative to ``qs`` this interval
``[-d, -d + 64)`` is the same for every block, so diagonals merge once per head: sorted
intervals that overlap or touch become segments, and each segment is cut into 64-key chunks
from its end backwards (so the chunk holding the main diagonal is exactly the block's own
rows, the only one that needs the causal mask) with the segment start as the masking floor
(so chunks never overlap a neighbouring segment).  That per-head *relative* chunk list
serves all blocks; per block only the first useful chunk (keys >= 0) is looked up.

Columns differ per block only in which ones the block's chunks already cover and which lie
past its last row; a Triton kernel drops those and compacts the rest per (head, block).
All outputs have fixed shapes (bounded by the budgets); nothing syncs with the host.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..layout import BLOCK_M, BLOCK_N, SeqLayout
from ..worklist import DESC_FIELDS, WorkList

_BIG = 1 << 30


def merge_diagonals(diags: torch.Tensor, n_diags: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-head relative segments and chunks of the selected diagonals.

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


@triton.jit
def _first_greater(ptr, stride, n, target, LOG2: tl.constexpr):
    """Index of the first of ``n`` ascending values at ``ptr[i * stride]`` that is > target."""
    lo = target * 0
    hi = target * 0 + n
    for _ in tl.static_range(LOG2):
        active = lo < hi
        mid = (lo + hi) // 2
        v = tl.load(ptr + mid * stride, mask=active, other=0)
        go = active & (v <= target)
        lo = tl.where(go, mid + 1, lo)
        hi = tl.where(active & (v > target), mid, hi)
    return lo


@triton.jit(do_not_specialize=["NB", "V_MAX", "S_MAX"])
def _vs_block_lists_kernel(
    COLS, N_COLS, SEG_S, SEG_E, N_SEG, CHUNKS, N_CHUNKS,
    KV_LEN, Q_LEN, BLK_SEQ, BLK_M,
    DESC, COL_OUT, NB, V_MAX, S_MAX,
    LOG2_S: tl.constexpr, VB: tl.constexpr, BLOCK_M: tl.constexpr,
):
    blk = tl.program_id(0)
    hs = tl.program_id(1)
    n_heads = tl.num_programs(1)
    b = tl.load(BLK_SEQ + blk)
    m = tl.load(BLK_M + blk)
    kv_len = tl.load(KV_LEN + b)
    q_len = tl.load(Q_LEN + b)
    qs = kv_len - q_len + m * BLOCK_M
    last = tl.minimum(qs + BLOCK_M - 1, kv_len - 1)
    bh = (b * n_heads + hs).to(tl.int64)

    # chunks: skip those whose 64 keys all lie before key 0
    n_chunks = tl.load(N_CHUNKS + bh)
    chunk_base = bh * S_MAX
    chunk_lo = _first_greater(CHUNKS + 2 * chunk_base, 2, n_chunks, -qs - BLOCK_M, LOG2_S)

    # columns: keep those up to the last row and outside every segment, in ascending order
    n_cols = tl.load(N_COLS + bh)
    n_seg = tl.load(N_SEG + bh)
    seg_base = bh * S_MAX
    col_src = COLS + bh * V_MAX
    out_base = (hs * NB + blk).to(tl.int64) * V_MAX
    kept = 0
    for v0 in range(0, n_cols, VB):
        i = v0 + tl.arange(0, VB)
        ok = i < n_cols
        c = tl.load(col_src + (n_cols - 1 - i), mask=ok, other=0)  # stored descending
        ok = ok & (c <= last)
        o = c - qs
        seg = _first_greater(SEG_S + seg_base, 1, n_seg, o, LOG2_S) - 1
        seg_end = tl.load(SEG_E + seg_base + seg, mask=ok & (seg >= 0), other=0)
        covered = (seg >= 0) & (o < seg_end)
        keep = ok & ~covered
        pos = kept + tl.cumsum(keep.to(tl.int32), axis=0) - 1
        tl.store(COL_OUT + out_base + pos, c, mask=keep)
        kept += tl.sum(keep.to(tl.int32), axis=0)

    desc = DESC + (hs * NB + blk).to(tl.int64) * 5
    tl.store(desc + 0, (chunk_base + chunk_lo).to(tl.int32))
    tl.store(desc + 1, (n_chunks - chunk_lo).to(tl.int32))
    tl.store(desc + 2, qs)
    tl.store(desc + 3, out_base.to(tl.int32))
    tl.store(desc + 4, kept)


def build_vertical_slash_worklist(
    cols: torch.Tensor,
    n_cols: torch.Tensor,
    diags: torch.Tensor,
    n_diags: torch.Tensor,
    layout: SeqLayout,
) -> WorkList:
    """Work lists (for the estimated heads, in order) from selected columns and diagonals.

    ``cols``/``diags`` are ``[B, H, V]``/``[B, H, S]`` int32 sorted descending with ``-1``
    padding after ``n_cols``/``n_diags`` (the output of ``select_vertical_slash``).
    """
    B, H, v_max = cols.shape
    s_max = diags.shape[-1]
    NB = layout.num_blocks
    if H * NB * v_max >= 2**31 or B * H * s_max >= 2**30:
        raise ValueError("work list too large for int32 offsets: split the query range")
    merged = merge_diagonals(diags, n_diags)
    desc = torch.empty(H, NB, DESC_FIELDS, dtype=torch.int32, device=cols.device)
    col_out = torch.empty(H * NB * v_max + 1, dtype=torch.int32, device=cols.device)
    if NB and H:
        _vs_block_lists_kernel[(NB, H)](
            cols.contiguous(), n_cols.contiguous(), merged["seg_start"], merged["seg_end"],
            merged["n_seg"], merged["chunks"], merged["n_chunks"],
            layout.kv_len, layout.q_len, layout.blk_seq, layout.blk_m,
            desc, col_out, NB, v_max, s_max,
            # search depth from the budget (>= 13 steps): stays one compiled variant per model
            LOG2_S=max(13, int(s_max).bit_length()), VB=256, BLOCK_M=BLOCK_M, num_warps=4,
        )
    return WorkList(desc, merged["chunks"].reshape(-1, 2), col_out)
