"""Gathered columns on top of per-block tile lists: antidiagonal tiles + the chunk's top columns.

The antidiagonal estimate samples each row's attention at one key in ``stride`` per cell, so
a context row that reads one far key (variable tracking's chain line reading the line it
points to) is often missed; the CPU recall study (nineteenth session) found stride 32 at tau
0.98 keeping 0.94 of that attention, mass-weighted, where fixed lists keep 0.98.  The
Vertical-Slash estimate's columns (the chunk's last 64 rows against every key) name the
keys many rows read; unioned with the tiles they brought it to 0.98 at +0.01 density.  On
the H100 at 128K (twentieth session) 1000 columns cost 0.12 s and lost more variable-tracking
answers than stride 32 alone, so the setting that adds them is off by default.

One Triton launch per layer: per (block, head) it keeps the columns up to the block's last
row whose 64-key tile the block's (absolute, ascending) chunks do not already hold, and
compacts them into the block's column list, as the Vertical-Slash builder does against
its diagonals.  Fixed shapes, no host sync.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..layout import BLOCK_M, BLOCK_N, SeqLayout, append_kept, query_block
from ..vertical_slash.index import _first_greater, ascending_columns
from ..worklist import WorkList


@triton.jit(do_not_specialize=["NB", "V_MAX"])
def _tile_columns_kernel(
    DESC, CHUNKS, COLS, N_COLS, Q_START, Q_LEN, KV_LEN, BLK_SEQ, BLK_M, COL_OUT, NB, V_MAX,
    LOG2_W: tl.constexpr, VB: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    blk = tl.program_id(0)
    hs = tl.program_id(1)
    n_heads = tl.num_programs(1)
    b, m, _, q_len, kv_len, _, _ = query_block(blk, BLK_SEQ, BLK_M, Q_START, Q_LEN, KV_LEN,
                                               BLOCK_M)
    last = tl.minimum(kv_len - q_len + m * BLOCK_M + BLOCK_M - 1, kv_len - 1)
    desc = DESC + (hs * NB + blk).to(tl.int64) * 5
    chunk0 = CHUNKS + 2 * tl.load(desc).to(tl.int64)
    n_chunks = tl.load(desc + 1)
    bh = (b * n_heads + hs).to(tl.int64)
    n_cols = tl.load(N_COLS + bh)
    col_src = COLS + bh * V_MAX
    out_base = (hs * NB + blk).to(tl.int64) * V_MAX
    kept = 0
    for v0 in range(0, n_cols, VB):
        c, ok = ascending_columns(col_src, n_cols, v0, VB)
        ok = ok & (c >= 0) & (c <= last)
        tile = c // BLOCK_N * BLOCK_N
        j = _first_greater(chunk0, 2, n_chunks, tile, LOG2_W) - 1  # last chunk <= tile
        start = tl.load(chunk0 + 2 * j, mask=ok & (j >= 0), other=-1)
        kept = append_kept(COL_OUT + out_base, kept, c, ok & (start != tile))
    tl.store(desc + 3, out_base.to(tl.int32))
    tl.store(desc + 4, kept)


def add_tile_columns(wl: WorkList, cols: torch.Tensor, n_cols: torch.Tensor,
                     layout: SeqLayout, max_chunks: int) -> WorkList:
    """``wl`` (absolute, ascending 64-key chunks per (head, block), at most ``max_chunks``
    each, no columns yet: :func:`.index.antidiagonal_worklist`) plus, for every block, the
    columns ``cols`` (``[B, H, V]`` int32 sorted descending, ``-1`` after ``n_cols``: the
    output of ``select_vertical_slash``) that lie up to its last row and outside its tiles."""
    H, NB = wl.desc.shape[:2]
    B, H_cols, v_max = cols.shape
    if H_cols != H or B != layout.num_seqs:
        raise ValueError(f"columns for {B} sequences x {H_cols} heads, the list has "
                         f"{layout.num_seqs} x {H}")
    if H * NB * v_max >= 2**31:
        raise ValueError("column lists too large for int32 offsets: split the query range")
    desc = wl.desc.clone()
    col_out = torch.empty(H * NB * v_max + 1, dtype=torch.int32, device=cols.device)
    if NB and H:
        _tile_columns_kernel[(NB, H)](
            desc, wl.chunks, cols.contiguous(), n_cols.contiguous(), layout.q_start,
            layout.q_len, layout.kv_len, layout.blk_seq, layout.blk_m, col_out, NB, v_max,
            # search depth from the list width (>= 13 steps): one compiled variant per model
            LOG2_W=max(13, int(max_chunks).bit_length()), VB=256, BLOCK_M=BLOCK_M,
            BLOCK_N=BLOCK_N, num_warps=4,
        )
    return WorkList(desc, wl.chunks, col_out, wl.extra)
