"""Vertical-Slash index building: selected columns and diagonals -> work lists, on the GPU.

A diagonal ``d`` crosses the 64-row block whose first row is at position ``qs`` in the 64
consecutive keys ``qs - d + [0, 64)``.  In coordinates relative to ``qs`` this interval
``[-d, -d + 64)`` is the same for every block, so diagonals merge once per head: sorted
intervals that overlap or touch become segments, and each segment is cut into 64-key chunks
from its end backwards (so the chunk holding the main diagonal is exactly the block's own
rows, the only one that needs the causal mask) with the segment start as the masking floor
(so chunks never overlap a neighbouring segment).  That per-head *relative* chunk list
serves all blocks; per block only the first useful chunk (keys >= 0) is looked up.  The
merge runs once per layer and prefill chunk, so it is a single Triton kernel (one program
per head: a scan over the sorted diagonals, then a binary search per chunk) rather than
many small torch ops, whose launches alone cost ~1 ms of CPU; ``reference.py`` holds the
torch definition it matches bit for bit.

Columns differ per block only in which ones the block's chunks already cover and which lie
past its last row; a Triton kernel drops those and compacts the rest per (head, block).
All outputs have fixed shapes (bounded by the budgets); nothing syncs with the host.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..layout import BLOCK_M, BLOCK_N, SeqLayout, append_kept, query_block
from ..worklist import DESC_FIELDS, WorkList

_BIG = 1 << 30


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


@triton.jit
def ascending_columns(col_src, n_cols, v0, VB: tl.constexpr):
    """Entries ``v0 .. v0 + VB`` of a descending column list, read in ascending order, and
    which of them exist."""
    i = v0 + tl.arange(0, VB)
    ok = i < n_cols
    return tl.load(col_src + (n_cols - 1 - i), mask=ok, other=0), ok


@triton.jit
def _max_combine(a, b):
    return tl.maximum(a, b)


@triton.jit(do_not_specialize=["S"])
def _merge_diagonals_kernel(
    DIAGS, N_DIAGS, SEG_S, SEG_E, N_SEG, CHUNKS, N_CHUNKS, CUM, S,
    BIG: tl.constexpr, LOG2_S: tl.constexpr, BLK: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """One program per (b, h): segments in a carried scan, then chunks by binary search."""
    bh = tl.program_id(0).to(tl.int64)
    base = bh * S
    src = DIAGS + base
    n = tl.minimum(tl.maximum(tl.load(N_DIAGS + bh).to(tl.int32), 0), S)
    offs = tl.arange(0, BLK)

    # pass 1: a segment starts where an interval does not touch the previous one and ends
    # before one that does not touch it; seg id = breaks so far, chunk count = ceil(len / 64)
    n_seg = n * 0
    n_chunks = n * 0
    open_start = n * 0 - BIG  # start of the segment still open at the end of the last block
    for i0 in range(0, n, BLK):
        i = i0 + offs
        valid = i < n
        a = -tl.load(src + i, mask=valid, other=0).to(tl.int32)
        prev = -tl.load(src + i - 1, mask=valid & (i > 0), other=0).to(tl.int32)
        prev = tl.where(i > 0, prev, -BIG)
        nxt_valid = (i + 1) < n
        nxt = -tl.load(src + i + 1, mask=nxt_valid, other=0).to(tl.int32)
        brk = valid & (a > prev + BLOCK_N)
        last = valid & (~nxt_valid | (nxt > a + BLOCK_N))
        seg = n_seg + tl.cumsum(brk.to(tl.int32), axis=0) - 1
        # a ascends, so the running max of break values is each entry's segment start
        starts = tl.where(brk, a, -BIG)
        seg_lo = tl.maximum(tl.associative_scan(starts, 0, _max_combine), open_start)
        n_ch = tl.where(last, (a + BLOCK_N - seg_lo + BLOCK_N - 1) // BLOCK_N, 0)
        cum = n_chunks + tl.cumsum(n_ch, axis=0)
        tl.store(SEG_S + base + seg, a, mask=brk)
        tl.store(SEG_E + base + seg, a + BLOCK_N, mask=last)
        tl.store(CUM + base + seg, cum, mask=last)
        n_seg += tl.sum(brk.to(tl.int32), axis=0)
        n_chunks += tl.sum(n_ch, axis=0)
        open_start = tl.maximum(open_start, tl.max(starts, axis=0))
    tl.store(N_SEG + bh, n_seg)
    tl.store(N_CHUNKS + bh, n_chunks)
    tl.debug_barrier()  # pass 2 reads what other threads of this program stored

    # pass 2: chunk j lies in the first segment whose cumulative count exceeds j and is
    # counted back from that segment's end; padding (_BIG / 0) fills every slot past the end
    for j0 in range(0, S, BLK):
        j = j0 + offs
        in_s = j < S
        ok = j < n_chunks
        s = _first_greater(CUM + base, 1, n_seg, j, LOG2_S)
        cum = tl.load(CUM + base + s, mask=ok, other=0)
        end = tl.load(SEG_E + base + s, mask=ok, other=0)
        lo = tl.load(SEG_S + base + s, mask=ok, other=0)
        start = end - BLOCK_N * (cum - j)
        tl.store(CHUNKS + 2 * (base + j), tl.where(ok, start, 0), mask=in_s)
        tl.store(CHUNKS + 2 * (base + j) + 1, tl.where(ok, lo, 0), mask=in_s)
        pad = in_s & (j >= n_seg)
        tl.store(SEG_S + base + j, tl.full((BLK,), BIG, tl.int32), mask=pad)
        tl.store(SEG_E + base + j, tl.full((BLK,), BIG, tl.int32), mask=pad)


def merge_diagonals(diags: torch.Tensor, n_diags: torch.Tensor, *,
                    block: int = 1024) -> dict[str, torch.Tensor]:
    """Per-head relative segments and chunks of the selected diagonals, in one kernel launch.

    ``diags`` is ``[B, H, S]`` sorted descending with ``-1`` padding after ``n_diags``.
    Returns ``seg_start``/``seg_end`` (``[B, H, S]``, relative key offsets, ascending,
    ``_BIG`` after ``n_seg``), ``n_seg``, ``chunks`` (``[B, H, S, 2]`` (start, lo), zeros
    after ``n_chunks``) and ``n_chunks`` (``[B, H]``), all int32 and bit-identical to
    ``merge_diagonals_reference``.  It runs once per layer and prefill chunk, so it is one
    launch plus allocations (no host sync): the torch version's ~40 ops cost ~1 ms of CPU.
    ``block`` (a power of two) is how many entries a program handles per step; tests
    lower it to exercise the state carried between steps.
    """
    B, H, S = diags.shape
    dev = diags.device
    seg_start = torch.empty(B, H, S, dtype=torch.int32, device=dev)
    seg_end = torch.empty(B, H, S, dtype=torch.int32, device=dev)
    cum = torch.empty(B, H, S, dtype=torch.int32, device=dev)  # per-segment chunk prefix sums
    n_seg = torch.empty(B, H, dtype=torch.int32, device=dev)
    chunks = torch.empty(B, H, S, 2, dtype=torch.int32, device=dev)
    n_chunks = torch.empty(B, H, dtype=torch.int32, device=dev)
    if B * H:
        _merge_diagonals_kernel[(B * H,)](
            diags.contiguous(), n_diags.contiguous(), seg_start, seg_end, n_seg, chunks,
            n_chunks, cum, S,
            # search depth from the budget (>= 13 steps): stays one compiled variant per model
            BIG=_BIG, LOG2_S=max(13, int(S).bit_length()), BLK=block, BLOCK_N=BLOCK_N,
            num_warps=4,
        )
    return dict(seg_start=seg_start, seg_end=seg_end, n_seg=n_seg, chunks=chunks,
                n_chunks=n_chunks)


@triton.jit(do_not_specialize=["NB", "V_MAX", "S_MAX"])
def _vs_block_lists_kernel(
    COLS, N_COLS, SEG_S, SEG_E, N_SEG, CHUNKS, N_CHUNKS,
    Q_START, Q_LEN, KV_LEN, BLK_SEQ, BLK_M,
    DESC, COL_OUT, NB, V_MAX, S_MAX,
    LOG2_S: tl.constexpr, VB: tl.constexpr, BLOCK_M: tl.constexpr,
):
    blk = tl.program_id(0)
    hs = tl.program_id(1)
    n_heads = tl.num_programs(1)
    b, m, _, q_len, kv_len, _, _ = query_block(blk, BLK_SEQ, BLK_M, Q_START, Q_LEN, KV_LEN,
                                               BLOCK_M)
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
        c, ok = ascending_columns(col_src, n_cols, v0, VB)
        ok = ok & (c <= last)
        o = c - qs
        seg = _first_greater(SEG_S + seg_base, 1, n_seg, o, LOG2_S) - 1
        seg_end = tl.load(SEG_E + seg_base + seg, mask=ok & (seg >= 0), other=0)
        covered = (seg >= 0) & (o < seg_end)
        kept = append_kept(COL_OUT + out_base, kept, c, ok & ~covered)

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
            layout.q_start, layout.q_len, layout.kv_len, layout.blk_seq, layout.blk_m,
            desc, col_out, NB, v_max, s_max,
            # search depth from the budget (>= 13 steps): stays one compiled variant per model
            LOG2_S=max(13, int(s_max).bit_length()), VB=256, BLOCK_M=BLOCK_M, num_warps=4,
        )
    return WorkList(desc, merged["chunks"].reshape(-1, 2), col_out)
