"""Per-block key tiles from strided antidiagonal scores (XAttention's estimate), on the GPU.

Vertical-Slash lists come from the last 64 query rows of a prefill chunk.  In chunked
prefill those rows are not the prompt's question, and a block whose rows need far keys the
chunk's last rows ignore never gets them (multi-needle answers at 128K are lost that way).
Here every 64-row query block picks its own key tiles from a cheap look at its own
attention.  With stride ``S``, row group ``a`` of a block (``S`` consecutive rows) scores key
group ``b`` (``S`` consecutive keys) by the sum along the antidiagonal of their ``S x S``
cell, ``sum_i q[aS + S-1-i] . k[bS + i]``: every row and every key of the cell is sampled
once, so a vertical line or a diagonal crossing the cell shows in it.  Each row group's
softmax over its causal key groups, summed per 64-key tile and averaged over the block's
row groups, estimates the share of the block's attention each tile holds.  The block keeps
its first ``sink_tiles`` tiles and its own tiles with the ``local_tiles`` before them, then
the fewest other tiles that bring the kept share to ``tau`` (at most ``max_tiles`` in all).

Cost: ``1/S`` of dense attention's ``QK^T`` and no ``PV``, about ``1/(2S)`` of dense
attention, whatever the selected density.

Two launches per slab of blocks (the plan half; the lists run on the usual kernels):

1. :func:`_partials_kernel`: for every (row group, tile) the log2 of its summed ``exp2``
   scores, ``PART[head, block * RG + a, tile]`` (``RG = 64 / S`` row groups per block).
   A program holds the row groups of all query heads of one KV group (and of several
   blocks where they are few), so every key load serves them all.
2. :func:`_select_kernel`: per (head, block), each row group's log-sum-exp over its tiles,
   the tiles' shares (written over the block's first partial row), the share threshold on
   a bisection grid, ``SEARCH_WAYS`` points per read of the shares (no sort), and the kept
   tiles in key order, written straight as the block's absolute 64-key chunks and
   descriptor (no index-building pass after it).  Blocks that FA3 runs as one row group
   can share one selection (``group_blocks``): the threshold is then on the mean of their
   shares and must give each block ``tau`` of its own.

The partials are held for at most ``SLAB_BYTES`` at a time; fixed shapes, no host sync.
"""

from __future__ import annotations

import logging
import math
import re

import torch
import triton
import triton.language as tl
from triton.runtime.errors import OutOfResources

from ..layout import BLOCK_M, BLOCK_N, KVSource, SeqLayout, kv_row_offsets
from ..worklist import DESC_FIELDS, WorkList, empty_pools

STRIDES = (4, 8, 16, 32, 64)  # supported antidiagonal strides (row groups per block: 16 to 1)
SPLIT_TILES = 256  # key tiles per program of the partials kernel (a multiple of 16)
SELECT_CHUNK = 1024  # tiles per vector step of the selection kernel
BISECT_STEPS = 16  # the threshold's grid: 16 bisection steps over log2 shares in [-40, 0]
# grid points tested per read of a block's shares (2: bisection; the same threshold for
# any).  H100, a 64K chunk over 1M keys, Qwen2.5-0.5B's shape: with two block-wide
# reductions per point and chunk, 2 points 8.5 ms, 4 points 7.7 ms, 16 points 18.8 ms
# (raw-h100x1-2026-11-28a, AT1); with each point's sums kept element-wise over the chunks
# and reduced once a pass, 4 points 5.7 ms, 16 points 12.0 ms (raw-h100x1-2026-11-28b, AT2)
SEARCH_WAYS = 4
SLAB_BYTES = 256 << 20  # partials held at once
PARTIALS_WARPS = dict(num_warps=8, num_stages=2)  # launch of the partials kernel
# the fastest launch option per row-group vector size (stride x head_dim elements) in
# bytes, H100, 128K keys, tune_antidiagonal.py of 2026-11-27 (raw-h100x1-2026-11-27b):
# 1 KB (stride 8, d 64): 128 x 32 resident 11.5 ms (64 x 64: 12.2, GEMM-style 128 x 128:
# 17.5); 2 KB (stride 8, d 128 or stride 16, d 64): GEMM-style 128 x 128, 54.5 ms at
# Llama-3-8B's shape (resident 32 x 32: 81.4) and 7.4 ms at Qwen2.5-0.5B's (10.4); larger
# vectors take the 2 KB winner (the GEMM-style steps are the same whatever the stride: one
# [rows, D] x [D, key groups] dot per row of a group)
DEFAULT_LAUNCH = {1024: "r128k32w8n2", 2048: "ir128k128w8n3", 4096: "ir128k128w8n3",
                  8192: "ir128k128w8n3", 16384: "ir128k128w8n3"}
# where the head size decides, not the vector size: (stride, head_dim) timed on their own.
# (32, 64), Qwen2.5-0.5B's default, H100, 2026-11-28 (raw-h100x1-2026-11-28a, AS1/AS2):
# 4 warps 18.0 ms against 8 warps' 24.1 at a 64K chunk over 1M keys (0.66 vs 0.85 ms at
# 16K over 128K), the same tiles; at (32, 128) 4 warps ran 2.6x slower (233 vs 88 ms), so
# the head size, not the stride, makes 4 warps pay
DEFAULT_LAUNCH_BY_SHAPE = {(32, 64): "ir128k128w4n3"}
# where a launch needs more shared memory or registers than the GPU has (the defaults were
# sized on an H100), the partials kernel falls back to partials_launch's defaults, then to
# these small tiles; what compiled is remembered per device and shape
FALLBACK_LAUNCH = "ir32k32w4n1"
_FITTING: dict[tuple, str] = {}
LOG2E = 1.4426950408889634
logger = logging.getLogger(f"vllm.{__name__}")  # under "vllm": vLLM configures that tree


@triton.jit(do_not_specialize=["stride_qt", "stride_qh", "stride_bt", "stride_ph", "stride_pr",
                               "SEQ", "BLK0", "NB", "N_TILES", "SPLIT_TILES"])
def _partials_kernel(
    Q, stride_qt, stride_qh, K, stride_kp, stride_kt, stride_kh, BT, stride_bt, KV_START,
    SLOT, Q_START, Q_LEN, KV_LEN, BLK_M, PART, stride_ph, stride_pr, qk_scale,
    SEQ, BLK0, NB, N_TILES, SPLIT_TILES,
    GROUP: tl.constexpr, HP: tl.constexpr, BG: tl.constexpr, ROWS: tl.constexpr,
    HEAD_DIM: tl.constexpr, STRIDE: tl.constexpr, KEY_GROUPS: tl.constexpr,
    PAGE: tl.constexpr, PAGED: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    INNER_LOOP: tl.constexpr = False,
):
    """Row groups of ``BG`` blocks (sequence ``SEQ``'s blocks ``BLK0 + program_id(0) * BG +
    [0, BG)``) x ``HP`` query heads of KV head ``program_id(1) // head programs`` against the
    key tiles of split ``program_id(2)``: ``PART[SLOT[head], block * RG + a, tile]`` = log2
    sum of ``exp2`` scores (``-inf`` where no key group of the tile is causal for the group).

    The heads of a KV group share every key load, and each row group's ``STRIDE`` rows are
    loaded once as one ``[STRIDE * HEAD_DIM]`` vector: a step is one ``tl.dot`` of
    ``[ROWS, STRIDE * D] x [STRIDE * D, KEY_GROUPS]`` (the keys of a group side by side),
    both operands loaded straight in that shape (an H100 ran a version that loaded
    ``[rows, STRIDE, D]`` and reshaped at a third of the speed).  With ``INNER_LOOP`` the
    same scores come from ``STRIDE`` dots of ``[ROWS, D] x [D, KEY_GROUPS]`` (row ``S-1-i``
    of every group against key ``i`` of every group), GEMM-style: no row group is held
    whole, so a program can take more rows and key groups (wider tensor-core tiles)."""
    RG: tl.constexpr = BLOCK_M // STRIDE
    TT: tl.constexpr = KEY_GROUPS * STRIDE // BLOCK_N  # tiles per step
    GPT: tl.constexpr = BLOCK_N // STRIDE  # key groups per tile
    HEAD_PROGS: tl.constexpr = (GROUP + HP - 1) // HP
    kvh = tl.program_id(1) // HEAD_PROGS
    g = tl.arange(0, ROWS)  # (block jj, head hh, row group a)
    a = g % RG
    hh = (g // RG) % HP + (tl.program_id(1) % HEAD_PROGS) * HP
    jj = g // (RG * HP)
    j = tl.program_id(0) * BG + jj
    qh = kvh * GROUP + hh
    used = (jj < BG) & (hh < GROUP)
    slot = tl.load(SLOT + qh, mask=used, other=-1)
    j_ok = used & (j < NB) & (slot >= 0)
    m = tl.load(BLK_M + BLK0 + j, mask=j_ok, other=0)
    q_start = tl.load(Q_START + SEQ)
    q_len = tl.load(Q_LEN + SEQ)
    kv_len = tl.load(KV_LEN + SEQ)
    row0 = m * BLOCK_M + a * STRIDE  # the group's first row in the chunk
    g_ok = j_ok & (row0 < q_len)
    g_last = kv_len - q_len + tl.minimum(row0 + STRIDE, q_len) - 1  # its last row's position
    reach = tl.max(tl.where(g_ok, g_last, -1), axis=0) + 1  # keys any group here may see
    lo = tl.program_id(2) * SPLIT_TILES * BLOCK_N
    hi = tl.minimum(lo + SPLIT_TILES * BLOCK_N, reach)
    q_row = Q + (qh.to(tl.int64) * stride_qh)[:, None]
    if INNER_LOOP:
        d = tl.arange(0, HEAD_DIM)
        q_row += (q_start + row0).to(tl.int64)[:, None] * stride_qt + d[None, :]
        k_col = d.to(tl.int64)
    else:
        # a row group's rows side by side, reversed: column c holds row S-1-c//D, dim c%D
        c = tl.arange(0, STRIDE * HEAD_DIM)
        ci = c // HEAD_DIM
        cd = c % HEAD_DIM
        r = row0[:, None] + (STRIDE - 1 - ci)[None, :]  # antidiagonal: the rows reversed
        q = tl.load(q_row + (q_start + r).to(tl.int64) * stride_qt + cd[None, :],
                    mask=g_ok[:, None] & (r < q_len), other=0.0)
        # a key group's keys side by side (column c: key c//D of the group, dim c%D)
        k_col = ci.to(tl.int64) * stride_kt + cd
    kg = tl.arange(0, KEY_GROUPS)
    out = (PART + slot.to(tl.int64)[:, None] * stride_ph
           + (j * RG + a).to(tl.int64)[:, None] * stride_pr)
    for k0 in range(lo, hi, KEY_GROUPS * STRIDE):
        first = k0 + kg * STRIDE  # each group's first key
        # a group never crosses a page (pages hold a multiple of the stride, checked by the
        # caller), so one table lookup per group
        off = kv_row_offsets(SEQ, first, first < kv_len, BT, stride_bt, KV_START, stride_kp,
                             stride_kt, PAGE, PAGED)
        k_row = K + kvh * stride_kh + off[:, None] + k_col[None, :]
        if INNER_LOOP:
            s = tl.zeros([ROWS, KEY_GROUPS], tl.float32)
            for i in range(STRIDE):  # row S-1-i of each group against key i of each group
                qi = tl.load(q_row + (STRIDE - 1 - i) * stride_qt,
                             mask=(g_ok & (row0 + STRIDE - 1 - i < q_len))[:, None], other=0.0)
                ki = tl.load(k_row + i * stride_kt, mask=(first + i < kv_len)[:, None],
                             other=0.0)
                s = tl.dot(qi, tl.trans(ki), s)
        else:
            k = tl.load(k_row, mask=(first[:, None] + ci[None, :]) < kv_len, other=0.0)
            s = tl.dot(q, tl.trans(k))
        causal = g_ok[:, None] & (first[None, :] <= g_last[:, None])
        s = tl.where(causal, s * qk_scale, float("-inf"))
        s3 = tl.reshape(s, [ROWS, TT, GPT])
        mx = tl.max(s3, axis=2)
        mx_safe = tl.where(mx > float("-inf"), mx, 0.0)
        part = mx_safe + tl.log2(tl.sum(tl.exp2(s3 - mx_safe[:, :, None]), axis=2))
        t = k0 // BLOCK_N + tl.arange(0, TT)
        tl.store(out + t[None, :], part, mask=j_ok[:, None] & (t < N_TILES)[None, :])


@triton.jit
def _forced(t, own0, own1, SINK_TILES, LOCAL_TILES):
    """Tiles every block of a selection group keeps: the sink tiles, the group's own tiles
    (``own0`` to ``own1``) and ``LOCAL_TILES`` before them."""
    return (t < SINK_TILES) | ((t >= own0 - LOCAL_TILES) & (t <= own1))


@triton.jit
def _chunk_shares(share, t0, n_t, own0, own1, b_own1, b_ok, inv_blocks, SINK_TILES,
                  LOCAL_TILES, CH: tl.constexpr):
    """Tiles ``t0 + [0, CH)`` of a selection group: each block's shares ``[GP, CH]`` (0
    past its causal edge), which tiles are forced, which others may be taken, and the mean
    of the blocks' shares."""
    t = t0 + tl.arange(0, CH)
    t_ok = t < n_t
    w = tl.load(share + t[None, :], mask=b_ok[:, None] & (t[None, :] <= b_own1[:, None]),
                other=0.0)
    forced = t_ok & _forced(t, own0, own1, SINK_TILES, LOCAL_TILES)
    score = tl.sum(w, axis=0) * inv_blocks
    return t, w, forced, t_ok & ~forced, score


@triton.jit(do_not_specialize=["stride_ph", "stride_pr", "SEQ", "BLK0", "NB", "NB_ALL",
                               "WIDTH", "SINK_TILES", "LOCAL_TILES"])
def _select_kernel(
    PART, stride_ph, stride_pr, Q_LEN, KV_LEN, BLK_M, CHUNKS, DESC,
    SEQ, BLK0, NB, NB_ALL, WIDTH, tau, SINK_TILES, LOCAL_TILES,
    STRIDE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, CH: tl.constexpr,
    WAYS: tl.constexpr, PASSES: tl.constexpr, DESC_FIELDS: tl.constexpr, GB: tl.constexpr,
    GP: tl.constexpr,
):
    """Kept tiles of the ``GB`` blocks ``BLK0 + program_id(0) * GB + [0, GB)`` (of sequence
    ``SEQ``; ``GP``: ``GB`` rounded up to a power of two), head slot ``program_id(1)``, in
    key order, as the absolute 64-key chunks of each block's list:
    ``CHUNKS[(hs * NB_ALL + block) * WIDTH + n]`` and its descriptor ``DESC[hs, block]``.

    The blocks share one selection: tiles ranked by the mean of the blocks' shares, the
    fewest that give *every* block ``tau`` of its own attention; each block lists those
    inside its causal edge.  With ``GB = 1`` that is the block's own fewest tiles."""
    RG: tl.constexpr = BLOCK_M // STRIDE
    hs = tl.program_id(1)
    q_len = tl.load(Q_LEN + SEQ)
    kv_len = tl.load(KV_LEN + SEQ)
    # the group's blocks (b) and their row groups (r = b * RG + a)
    b = tl.arange(0, GP)
    jb = tl.program_id(0) * GB + b
    b_ok = (b < GB) & (jb < NB)
    mb = tl.load(BLK_M + BLK0 + jb, mask=b_ok, other=0)
    b_first = kv_len - q_len + mb * BLOCK_M
    b_own1 = tl.where(b_ok, tl.minimum(b_first + BLOCK_M - 1, kv_len - 1) // BLOCK_N, -1)
    own0 = tl.min(tl.where(b_ok, b_first // BLOCK_N, 1 << 30), axis=0)
    own1 = tl.max(b_own1, axis=0)
    n_t = own1 + 1  # the group's causal tiles
    n_blocks = tl.sum(b_ok.to(tl.float32), axis=0)
    r = tl.arange(0, GP * RG)
    rb = r // RG
    rj = tl.program_id(0) * GB + rb
    r_ok = (rb < GB) & (rj < NB)
    r_first = kv_len - q_len + tl.load(BLK_M + BLK0 + rj, mask=r_ok, other=0) * BLOCK_M
    r_own1 = tl.where(r_ok, tl.minimum(r_first + BLOCK_M - 1, kv_len - 1) // BLOCK_N, -1)
    head = PART + hs.to(tl.int64) * stride_ph
    rows = head + (rj * RG + r % RG).to(tl.int64)[:, None] * stride_pr
    # each block's shares go over its first partial row
    share = head + (jb * RG).to(tl.int64)[:, None] * stride_pr
    # 1. each row group's log2-sum-exp2 over its block's causal tiles
    mx = tl.full([GP * RG], float("-inf"), tl.float32)
    sm = tl.zeros([GP * RG], tl.float32)
    for t0 in range(0, n_t, CH):
        t = t0 + tl.arange(0, CH)
        p = tl.load(rows + t[None, :], mask=t[None, :] <= r_own1[:, None],
                    other=float("-inf"))
        new = tl.maximum(mx, tl.max(p, axis=1))
        new_safe = tl.where(new > float("-inf"), new, 0.0)
        sm = sm * tl.exp2(mx - new_safe) + tl.sum(tl.exp2(p - new_safe[:, None]), axis=1)
        mx = new
    valid = mx > float("-inf")  # row groups with a row (each has a causal key then)
    lse = tl.where(valid, mx + tl.log2(tl.maximum(sm, 1e-30)), 0.0)
    n_valid = tl.maximum(tl.sum(tl.reshape(valid.to(tl.float32), [GP, RG]), axis=1), 1.0)
    # 2. each tile's share of each block's attention, over the block's first partial row
    total = tl.zeros([GP], tl.float32)
    forced_share = tl.zeros([GP], tl.float32)
    n_forced = 0
    for t0 in range(0, n_t, CH):
        t = t0 + tl.arange(0, CH)
        t_ok = t < n_t
        p = tl.load(rows + t[None, :], mask=t[None, :] <= r_own1[:, None],
                    other=float("-inf"))
        e = tl.where(valid[:, None], tl.exp2(p - lse[:, None]), 0.0)
        w = tl.sum(tl.reshape(e, [GP, RG, CH]), axis=1) / n_valid[:, None]
        forced = t_ok & _forced(t, own0, own1, SINK_TILES, LOCAL_TILES)
        total += tl.sum(w, axis=1)
        forced_share += tl.sum(tl.where(forced[None, :], w, 0.0), axis=1)
        n_forced += tl.sum(forced.to(tl.int32), axis=0)
        tl.store(share + t[None, :], w, mask=b_ok[:, None] & (t[None, :] <= b_own1[:, None]))
    cap = WIDTH - n_forced  # other tiles that fit the lists
    need = tl.where(b_ok, tau * total - forced_share, 0.0)
    inv_blocks = 1.0 / tl.maximum(n_blocks, 1.0)
    # 3. the largest threshold 2^-x on the mean share whose tiles (with the forced ones)
    # hold tau of every block's attention, or fill cap: x on the grid of 16 bisection steps
    # over [0, 40] (exact in fp32), found WAYS points at a time.  Each pass reads the shares
    # once and tests the WAYS - 1 grid points inside the interval; the tiles taken only grow
    # with x, so the first point that is enough bounds the next interval (x_hi is enough or
    # the end).  Bisection is WAYS = 2: one read of the shares per step
    x_lo = 0.0
    x_hi = 40.0
    c = tl.arange(0, WAYS)
    for _ in tl.static_range(PASSES):
        step = (x_hi - x_lo) / WAYS
        # every point's masked shares and counts summed element-wise over the chunks, then
        # reduced once a pass (a reduction per point and chunk cost more than the reads)
        th = tl.exp2(-(x_lo + (c + 1).to(tl.float32) * step))  # the last, x_hi, not needed
        got = tl.zeros([GP, WAYS, CH], tl.float32)
        cnt = tl.zeros([WAYS, CH], tl.int32)
        for t0 in range(0, n_t, CH):
            t, w, forced, free, score = _chunk_shares(share, t0, n_t, own0, own1, b_own1,
                                                      b_ok, inv_blocks, SINK_TILES,
                                                      LOCAL_TILES, CH)
            take = free[None, :] & (score[None, :] >= th[:, None])  # [WAYS, CH]
            got += tl.where(take[None, :, :], w[:, None, :], 0.0)
            cnt += take.to(tl.int32)
        got_all = tl.sum(got, axis=2)  # [GP, WAYS]
        enough = ((tl.min(got_all - need[:, None], axis=0) >= 0) | (tl.sum(cnt, axis=1) >= cap)
                  | (c == WAYS - 1))
        first = tl.min(tl.where(enough, c, WAYS - 1), axis=0)
        x_hi = x_lo + (first + 1).to(tl.float32) * step
        x_lo = x_lo + first.to(tl.float32) * step
    # forced tiles alone hold tau for every block: no others
    th = tl.where(tl.max(need, axis=0) > 0, tl.exp2(-x_hi), 2.0)
    # 4. the kept tiles in key order (others past the cap dropped, the latest first), each
    # block's up to its causal edge
    first_chunk = (hs.to(tl.int64) * NB_ALL + BLK0 + jb) * WIDTH
    out = CHUNKS + 2 * first_chunk[:, None]
    n_kept = tl.zeros([GP], tl.int32)
    n_taken = 0
    for t0 in range(0, n_t, CH):
        t, w, forced, free, score = _chunk_shares(share, t0, n_t, own0, own1, b_own1, b_ok,
                                                  inv_blocks, SINK_TILES, LOCAL_TILES, CH)
        take = free & (score >= th)
        rank = n_taken + tl.cumsum(take.to(tl.int32), axis=0) - 1
        keep = (forced | (take & (rank < cap)))[None, :] & b_ok[:, None] & (
            t[None, :] <= b_own1[:, None])
        pos = n_kept[:, None] + tl.cumsum(keep.to(tl.int32), axis=1) - 1
        start = t[None, :] * BLOCK_N
        tl.store(out + 2 * pos, start, mask=keep & (pos < WIDTH))
        tl.store(out + 2 * pos + 1, start, mask=keep & (pos < WIDTH))
        n_kept += tl.sum(keep.to(tl.int32), axis=1)
        n_taken += tl.sum(take.to(tl.int32), axis=0)
    desc = DESC + (hs.to(tl.int64) * NB_ALL + BLK0 + jb) * DESC_FIELDS
    tl.store(desc, first_chunk.to(tl.int32), mask=b_ok)
    tl.store(desc + 1, tl.minimum(n_kept, WIDTH), mask=b_ok)


def search_passes(ways: int) -> int:
    """Reads of the shares that ``ways`` points a read take to reach the grid of
    ``BISECT_STEPS`` bisection steps (``ValueError`` unless ``ways`` is a power of two whose
    log2 divides it)."""
    bits = ways.bit_length() - 1
    if ways < 2 or ways & (ways - 1) or BISECT_STEPS % bits:
        raise ValueError(f"search ways must be 2 to the power of a divisor of {BISECT_STEPS}, "
                         f"got {ways}")
    return BISECT_STEPS // bits


def slab_blocks(num_heads: int, row_groups: int, num_tiles: int, num_blocks: int,
                blocks_per_program: int) -> int:
    """Blocks whose partials fit ``SLAB_BYTES`` (at least one program's worth)."""
    per_block = 4 * max(1, num_heads) * row_groups * max(1, num_tiles)
    step = max(blocks_per_program, SLAB_BYTES // per_block)
    return min(max(1, num_blocks), step - step % blocks_per_program)


def check_tau_and_stride(tau: float, stride: int) -> None:
    """Raise ``ValueError`` unless ``0 < tau <= 1`` and ``stride`` is one of ``STRIDES``."""
    if stride not in STRIDES:
        raise ValueError(f"antidiagonal stride must be one of {STRIDES}, got {stride}")
    if not 0.0 < tau <= 1.0:
        raise ValueError(f"tau must be in (0, 1], got {tau}")


def parse_launch(text: str) -> tuple[dict, dict]:
    """A launch option of the partials kernel as (warps and stages, tile shape):
    ``""`` keeps the defaults; ``w8n2``: 8 warps, 2 pipeline stages; ``r128k32w8n2``: also
    128 row groups per program and 32 key groups per step; a leading ``i`` (``iw8n3``,
    ``ir128k64w8n3``) takes the GEMM-style inner loop (see :func:`_partials_kernel`).
    Raises ``ValueError`` on anything else."""
    if not text:
        return dict(PARTIALS_WARPS), dict(inner_loop=False)
    m = re.fullmatch(r"(i)?(?:r(\d+)k(\d+))?w(\d+)(?:n(\d+))?", text)
    if not m:
        raise ValueError(f"bad antidiagonal launch option {text!r}: expected e.g. w8n2, "
                         "r128k32w8n2 or ir128k64w8n3")
    inner, rows, key_groups, warps, stages = m.groups()
    shape: dict = dict(inner_loop=bool(inner))
    if rows:
        shape.update(rows=int(rows), key_groups=int(key_groups))
        if min(shape["rows"], shape["key_groups"]) < 16 or any(
                v & (v - 1) for v in (shape["rows"], shape["key_groups"])):
            raise ValueError(f"antidiagonal launch option {text!r}: rows and key groups "
                             "must be powers of two of at least 16")
    if int(warps) not in (1, 2, 4, 8, 16):
        raise ValueError(f"antidiagonal launch option {text!r}: warps must be 1-16, a power "
                         "of two")
    return dict(num_warps=int(warps), num_stages=int(stages or 2)), shape


def default_launch(stride: int, head_dim: int, elem_bytes: int) -> str:
    """The launch option measured fastest for this row-group vector size in fp16/bf16 (""
    elsewhere: :func:`partials_launch`'s defaults, whose operands fit any dtype's shared
    memory)."""
    if elem_bytes != 2:
        return ""
    return (DEFAULT_LAUNCH_BY_SHAPE.get((stride, head_dim))
            or DEFAULT_LAUNCH.get(stride * head_dim * elem_bytes, ""))


def partials_launch(stride: int, head_dim: int, elem_bytes: int, group: int,
                    rows: int | None = None, key_groups: int | None = None,
                    inner_loop: bool = False) -> dict:
    """Tile sizes of :func:`_partials_kernel`: row groups per program and key groups per
    step, and how the rows split into heads and blocks.  By default each is at most 64 and
    at most 64 KB of operand (one row group's vector is ``stride * head_dim`` elements); in
    the inner-loop form an operand is one row per group, so the defaults are 128 x 64.

    H100, 128K keys (``tune_antidiagonal.py``, 2026-11-27): 64 x 64 at Qwen2.5-0.5B's
    shape (stride 8) took 12.1 ms for a whole 128K prompt (dense FA3 58.5 ms); Llama-3-8B's
    shape gets 32 x 32, which took 84-108 ms (dense 209 ms): small tensor-core tiles, which
    ``rows``/``key_groups`` and the inner loop are there to widen."""
    unit = (1 if inner_loop else stride) * head_dim * elem_bytes
    rg = BLOCK_M // stride
    cap = 128 if inner_loop else 64
    if rows is None:
        rows = max(16, min(cap, (64 << 10) // unit))
    if key_groups is None:
        key_groups = max(16, min(64, (64 << 10) // unit))
    rows = max(rows, rg)
    hp = max(1, min(group, rows // rg))  # heads of a KV group per program
    bg = max(1, rows // (hp * rg))  # blocks per program
    return dict(ROWS=rows, KEY_GROUPS=key_groups, HP=hp, BG=bg, INNER_LOOP=inner_loop)


def antidiagonal_worklist(q: torch.Tensor, kv: KVSource, layout: SeqLayout,
                          heads: torch.Tensor, tau: float, max_tiles: int, stride: int = 8,
                          sink_tiles: int = 1, local_tiles: int = 1,
                          sm_scale: float | None = None, launch: str = "",
                          shares: torch.Tensor | None = None,
                          group_blocks: int = 1) -> WorkList:
    """Absolute chunk lists of the kept tiles of every (head of ``heads``, block), at most
    ``W = min(max_tiles, tiles of the longest sequence)`` each.  ``launch``: the partials
    kernel's launch option (:func:`parse_launch`; "" for :func:`default_launch`).
    ``group_blocks`` > 1: each run of that many blocks of a sequence (from its first)
    shares one selection, the fewest tiles giving every block of the run ``tau`` of its
    attention: FA3's page lists compute a row group's union of its blocks' tiles for all
    its rows, so blocks that FA3 runs together should list the same tiles.
    ``shares`` (``[len(heads), NB, tiles]`` float32, tests): receives each tile's estimated
    share of its block's attention (tiles past a block's causal edge are left as they
    were)."""
    check_tau_and_stride(tau, stride)
    if group_blocks < 1:
        raise ValueError(f"group_blocks must be >= 1, got {group_blocks}")
    num_heads, head_dim = q.shape[1], q.shape[2]
    H, NB = heads.numel(), layout.num_blocks
    n_tiles = max(1, triton.cdiv(layout.max_kv_len, BLOCK_N))
    width = max(1, min(max_tiles, n_tiles))
    if H * NB * width >= 1 << 31:  # the descriptors' chunk pointers are int32
        raise ValueError(f"{H} heads x {NB} blocks x {width} tiles exceed the lists' int32 "
                         "pointers: lower antidiagonal_max_tiles or the prefill chunk")
    desc = torch.zeros(H, NB, DESC_FIELDS, dtype=torch.int32, device=q.device)
    chunks = torch.empty(max(1, H * NB * width), 2, dtype=torch.int32, device=q.device)
    _, cols = empty_pools(q.device)
    if not (H and NB):
        return WorkList(desc, chunks, cols)
    if kv.is_paged and kv.key.shape[1] % stride:
        raise ValueError(f"KV pages of {kv.key.shape[1]} tokens: the antidiagonal estimate "
                         f"needs pages of a multiple of its stride ({stride})")
    group = num_heads // kv.num_kv_heads
    slot = torch.full((num_heads,), -1, dtype=torch.int32, device=q.device)
    slot[heads.to(device=q.device, dtype=torch.long)] = torch.arange(
        H, dtype=torch.int32, device=q.device)
    scale = (1.0 / math.sqrt(head_dim) if sm_scale is None else sm_scale) * LOG2E / stride
    key = _fitting_key(q, launch, stride, group)
    options = [_FITTING[key]] if key in _FITTING else list(dict.fromkeys(
        [key[1], "", FALLBACK_LAUNCH]))  # key[1]: the asked or default launch
    for i, option in enumerate(options):
        try:  # a launch that does not fit fails at its first slab, before any GPU work
            _estimate_and_select(q, kv, layout, slot, H, n_tiles, width, stride, scale, tau,
                                 sink_tiles, local_tiles, group, option, desc, chunks, shares,
                                 group_blocks)
        except OutOfResources as e:
            if i == len(options) - 1:
                raise
            logger.warning("minference: antidiagonal launch %r does not fit this GPU (%s); "
                           "using %r", option, e, options[i + 1])
            continue
        _FITTING[key] = option
        break
    return WorkList(desc, chunks, cols)


def _fitting_key(q: torch.Tensor, launch: str, stride: int, group: int) -> tuple:
    """``_FITTING``'s key: device, the launch asked for ("" resolved to
    :func:`default_launch`), stride, head size, element size, query heads per KV head."""
    chosen = launch or default_launch(stride, q.shape[2], q.element_size())
    return (str(q.device), chosen, stride, q.shape[2], q.element_size(), group)


def fitted_launch(q: torch.Tensor, launch: str, stride: int, group: int) -> str | None:
    """The option that ran for ``launch`` (resolved as :func:`antidiagonal_worklist` does)
    on ``q``'s device and shape: ``launch`` itself, a smaller one where it did not fit, or
    ``None`` before the first run (benchmarks: what a timing really measured)."""
    return _FITTING.get(_fitting_key(q, launch, stride, group))


def _estimate_and_select(q, kv, layout, slot, H, n_tiles, width, stride, scale, tau,
                         sink_tiles, local_tiles, group, option, desc, chunks, shares,
                         group_blocks) -> None:
    """The two launches of :func:`antidiagonal_worklist` over every slab of blocks, with
    the partials kernel's launch ``option``."""
    warps, shape = parse_launch(option)
    tiles = partials_launch(stride, q.shape[2], q.element_size(), group, **shape)
    NB = layout.num_blocks
    rg = BLOCK_M // stride
    # a slab holds whole selection groups (they start at each sequence's first block)
    step = slab_blocks(H, rg, n_tiles, NB, math.lcm(tiles["BG"], group_blocks))
    gp = triton.next_power_of_2(group_blocks)
    part = torch.empty(H, step * rg, n_tiles, dtype=torch.float32, device=q.device)
    args = kv.kernel_args()
    tiles_per_step = tiles["KEY_GROUPS"] * stride // BLOCK_N
    split = triton.cdiv(SPLIT_TILES, tiles_per_step) * tiles_per_step  # whole steps
    head_programs = kv.num_kv_heads * triton.cdiv(group, tiles["HP"])
    for seq, blk0, nb in layout.block_ranges(step):
        grid = (triton.cdiv(nb, tiles["BG"]), head_programs, triton.cdiv(n_tiles, split))
        _partials_kernel[grid](
            q, q.stride(0), q.stride(1), args["K"], args["stride_kp"], args["stride_kt"],
            args["stride_kh"], args["BT"], args["stride_bt"], args["KV_START"], slot,
            layout.q_start, layout.q_len, layout.kv_len, layout.blk_m, part, part.stride(0),
            part.stride(1), scale, seq, blk0, nb, n_tiles, split, GROUP=group,
            HEAD_DIM=q.shape[2], STRIDE=stride, PAGE=args["PAGE"], PAGED=args["PAGED"],
            BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N, **tiles, **warps)
        _select_kernel[(triton.cdiv(nb, group_blocks), H)](
            part, part.stride(0), part.stride(1), layout.q_len, layout.kv_len, layout.blk_m,
            chunks, desc, seq, blk0, nb, NB, width, float(tau), sink_tiles, local_tiles,
            STRIDE=stride, BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N, CH=max(128, SELECT_CHUNK // gp),
            WAYS=SEARCH_WAYS, PASSES=search_passes(SEARCH_WAYS),
            DESC_FIELDS=DESC_FIELDS, GB=group_blocks, GP=gp, num_warps=4)
        if shares is not None:
            shares[:, blk0:blk0 + nb] = part[:, :nb * rg:rg, :shares.shape[2]]


def worklist_tiles(wl: WorkList) -> torch.Tensor:
    """The kept tiles of an :func:`antidiagonal_worklist` list, ``[H, NB, W]`` tile indices
    in ascending order, ``-1`` after them (tests, benchmarks)."""
    H, NB = wl.desc.shape[:2]
    width = max(1, wl.chunks.shape[0] // max(1, H * NB))
    starts = wl.chunks[:H * NB * width, 0].view(H, NB, width).long()
    n = wl.desc[..., 1].long()
    return torch.where(torch.arange(width, device=n.device) < n[..., None],
                       starts // BLOCK_N, -1).to(torch.int32)
