"""Vertical-Slash estimation: attention of the last 64 queries against every key (Triton).

For each sequence and estimated head, the last ``LAST_Q`` query rows of the chunk attend
(causally, fp32 softmax) to all ``kv_len`` keys, cached context included.  Two outputs:

* ``vertical[b, h, k]``: the attention mass key ``k`` receives (column sum);
* ``slash[b, h, d]``: the mass on diagonal ``d = query position - key position`` (sum
  along the diagonal), ``d = 0`` being the main diagonal.

Two passes over the keys, both split over key ranges so that a 1M-token sequence fills the
GPU: pass 1 finds each row's softmax max and normaliser per split (combined in PyTorch, fixed
shapes), pass 2 recomputes the scores, normalises them and sums columns and diagonals.
Diagonal sums of a 64x64 tile are formed in registers (skewed gathers turn diagonals into
columns) and carried from tile to tile, so only the diagonals shared between key splits need
atomics.  Then :func:`select_vertical_slash` keeps the
top-k columns and diagonals per head, with the always-kept first keys and nearest diagonals,
in fixed-shape outputs: no host synchronisation anywhere.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from ..attention.kernel import LOG2E, dot_precision
from ..layout import KVSource, SeqLayout, append_kept, kv_row_offsets

LAST_Q = 64  # query rows the estimate uses
KEY_TILE = 64
KEYS_PER_SPLIT = 4096  # keys per program in both passes, at most
# ... and down to MIN_KEYS_PER_SPLIT while fewer than TARGET_PROGRAMS programs would run:
# a layer with one or two estimated heads (the pinned heads of a profile's settings) at
# 128K keys ran 32-64 programs of 4096 keys.  H200, both passes, 14/2 heads d64
# (tune_estimate.py, raw-h200x2-2026-11-28c): 2 heads at 128K keys 0.278 ms in 4096-key
# splits, 0.108-0.115 in 1024 (512: 0.104); 1 head at 1M keys 0.339 in 4096, 0.266 in 2048;
# 14 heads at 128K 0.41 / 0.39 / 0.39 ms in 4096 / 2048 / 1024 (Llama-3-8B's shape alike)
MIN_KEYS_PER_SPLIT = 1024
TARGET_PROGRAMS = 512
# Launch options of pass 1 (row statistics) and pass 2 (column and diagonal sums), from
# benchmarks/tune_estimate.py on an H100 (2026-11-26): pass 2 is bound by its skewed gather
# and its row reductions across warps, and runs 1.3-1.5x faster on 2 warps than on 4
# (14/2 heads d64, 1M keys: 1.95 vs 2.86 ms; 32/8 d128: 5.5 vs 7.4 ms; 1 warp is slower at
# 128K and at head dim 128); pass 1 is as fast or faster on 4 (2 warps: 1.04 vs 0.86 ms
# at 1M keys, d64; 1 warp: 0.55 vs 0.38 ms at 128K, d128).
LAUNCH_STATS = dict(num_warps=4)
LAUNCH_SUMS = dict(num_warps=2)
INVALID = -1  # padding of selected index lists
FORCED = 1.0e6  # score floor of always-kept columns/diagonals


@triton.jit
def _estimate_tile_scores(q, b, kvh, k0, kv_len, q_pos, row_ok, qk_scale,
                          K, stride_kp, stride_kt, stride_kh, BT, stride_bt, KV_START,
                          HEAD_DIM: tl.constexpr, KEY_TILE: tl.constexpr, PAGE: tl.constexpr,
                          PAGED: tl.constexpr, PREC: tl.constexpr):
    """Scaled (log2-domain) scores of the estimate rows against keys ``k0 + [0, KEY_TILE)``."""
    k_idx = k0 + tl.arange(0, KEY_TILE)
    k_ok = k_idx < kv_len
    k_off = kv_row_offsets(b, k_idx, k_ok, BT, stride_bt, KV_START, stride_kp, stride_kt,
                           PAGE, PAGED)
    d = tl.arange(0, HEAD_DIM)
    k = tl.load(K + kvh * stride_kh + k_off[:, None] + d[None, :], mask=k_ok[:, None], other=0.0)
    s = tl.dot(q, tl.trans(k), input_precision=PREC) * qk_scale
    keep = row_ok[:, None] & k_ok[None, :] & (k_idx[None, :] <= q_pos[:, None])
    return tl.where(keep, s, float("-inf")), k_idx, k_ok


@triton.jit
def _program_rows(Q, stride_qt, stride_qh, HEADS, Q_START, Q_LEN, KV_LEN,
                  GROUP: tl.constexpr, LAST: tl.constexpr, HEAD_DIM: tl.constexpr):
    """This program's (sequence, estimated head) and the last ``LAST`` query rows of it."""
    hs = tl.program_id(1)
    b = tl.program_id(2)
    qh = tl.load(HEADS + hs)
    q_start = tl.load(Q_START + b)
    q_len = tl.load(Q_LEN + b)
    kv_len = tl.load(KV_LEN + b)
    i = tl.arange(0, LAST)
    local = q_len - LAST + i  # row inside the chunk; negative when q_len < LAST
    row_ok = local >= 0
    d = tl.arange(0, HEAD_DIM)
    rows = (q_start + tl.where(row_ok, local, 0)).to(tl.int64)
    q = tl.load(Q + rows[:, None] * stride_qt + qh * stride_qh + d[None, :],
                mask=row_ok[:, None], other=0.0)
    q_pos = kv_len - LAST + i
    return b, hs, qh // GROUP, kv_len, q, q_pos, row_ok


@triton.jit(do_not_specialize=["stride_bt", "SPLIT"])
def _estimate_stats_kernel(
    Q, stride_qt, stride_qh, HEADS, qk_scale,
    K, stride_kp, stride_kt, stride_kh, BT, stride_bt, KV_START,
    Q_START, Q_LEN, KV_LEN, M_OUT, L_OUT, SPLIT,
    GROUP: tl.constexpr, HEAD_DIM: tl.constexpr, LAST: tl.constexpr, KEY_TILE: tl.constexpr,
    PAGE: tl.constexpr, PAGED: tl.constexpr, PREC: tl.constexpr,
):
    split = tl.program_id(0)
    n_split = tl.num_programs(0)
    n_heads = tl.num_programs(1)
    b, hs, kvh, kv_len, q, q_pos, row_ok = _program_rows(
        Q, stride_qt, stride_qh, HEADS, Q_START, Q_LEN, KV_LEN, GROUP, LAST, HEAD_DIM)
    m_i = tl.full([LAST], float("-inf"), tl.float32)
    l_i = tl.zeros([LAST], tl.float32)
    k_begin = split * SPLIT
    k_end = tl.minimum(k_begin + SPLIT, kv_len)
    for k0 in range(k_begin, k_end, KEY_TILE):
        s, _, _ = _estimate_tile_scores(q, b, kvh, k0, kv_len, q_pos, row_ok, qk_scale,
                                        K, stride_kp, stride_kt, stride_kh, BT, stride_bt,
                                        KV_START, HEAD_DIM, KEY_TILE, PAGE, PAGED, PREC)
        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        l_i = l_i * tl.math.exp2(m_i - m_safe) + tl.sum(tl.math.exp2(s - m_safe[:, None]), axis=1)
        m_i = m_new
    out = ((b * n_heads + hs) * n_split + split).to(tl.int64) * LAST + tl.arange(0, LAST)
    tl.store(M_OUT + out, m_i)
    tl.store(L_OUT + out, l_i)


@triton.jit(do_not_specialize=["n_split"])
def _estimate_combine_kernel(M_PART, L_PART, M_ROW, L_ROW, n_split,
                             LAST: tl.constexpr, SB: tl.constexpr):
    """Row max and normaliser of each (sequence, head) from the per-split partials (one
    launch instead of a chain of small PyTorch ops: this runs every layer of every chunk)."""
    bh = (tl.program_id(1) * tl.num_programs(0) + tl.program_id(0)).to(tl.int64)
    i = tl.arange(0, LAST)
    sp = tl.arange(0, SB)
    base = bh * n_split * LAST
    m_row = tl.full([LAST], float("-inf"), tl.float32)
    for s0 in range(0, n_split, SB):
        ok = (s0 + sp) < n_split
        m = tl.load(M_PART + base + (s0 + sp)[:, None] * LAST + i[None, :], mask=ok[:, None],
                    other=float("-inf"))
        m_row = tl.maximum(m_row, tl.max(m, axis=0))
    m_safe = tl.where(m_row == float("-inf"), 0.0, m_row)
    l_row = tl.zeros([LAST], tl.float32)
    for s0 in range(0, n_split, SB):
        ok = (s0 + sp) < n_split
        off = base + (s0 + sp)[:, None] * LAST + i[None, :]
        m = tl.load(M_PART + off, mask=ok[:, None], other=float("-inf"))
        l = tl.load(L_PART + off, mask=ok[:, None], other=0.0)
        l_row += tl.sum(l * tl.math.exp2(m - m_safe[None, :]), axis=0)
    tl.store(M_ROW + bh * LAST + i, m_row)
    tl.store(L_ROW + bh * LAST + i, l_row)


@triton.jit(do_not_specialize=["stride_vb", "stride_vh", "stride_bt", "SPLIT"])
def _estimate_scores_kernel(
    Q, stride_qt, stride_qh, HEADS, qk_scale,
    K, stride_kp, stride_kt, stride_kh, BT, stride_bt, KV_START,
    Q_START, Q_LEN, KV_LEN, M_ROW, L_ROW, VERT, SLASH, stride_vb, stride_vh, SPLIT,
    GROUP: tl.constexpr, HEAD_DIM: tl.constexpr, LAST: tl.constexpr, KEY_TILE: tl.constexpr,
    PAGE: tl.constexpr, PAGED: tl.constexpr, PREC: tl.constexpr,
):
    split = tl.program_id(0)
    n_heads = tl.num_programs(1)
    b, hs, kvh, kv_len, q, q_pos, row_ok = _program_rows(
        Q, stride_qt, stride_qh, HEADS, Q_START, Q_LEN, KV_LEN, GROUP, LAST, HEAD_DIM)
    row = (b * n_heads + hs).to(tl.int64) * LAST + tl.arange(0, LAST)
    m_row = tl.load(M_ROW + row)
    l_row = tl.load(L_ROW + row)
    m_row = tl.where(m_row == float("-inf"), 0.0, m_row)
    inv_l = tl.where(l_row > 0.0, 1.0 / tl.where(l_row > 0.0, l_row, 1.0), 0.0)
    out = b.to(tl.int64) * stride_vb + hs.to(tl.int64) * stride_vh
    # Diagonal sums via skewed gathers.  With D = q_pos[0] - k0 (the diagonal of row 0 and
    # key k0), a tile's diagonals D + u (u in [0, 64)) come from its upper skew (key i - u of
    # row i) and D - 64 + u from its lower skew (key i - u + 64, rows i < u).  The next tile
    # (k0 + 64) has D' = D - 64, so its upper diagonals are this tile's lower ones: a program
    # carries the lower sums one tile and stores each tile's finished diagonals with plain
    # stores.  Only the first tile's and the last carry's 64 diagonals are shared with the
    # neighbouring key splits and need atomics.  (H100, 1M keys, 14 heads: both passes took
    # 4.9 ms with one atomic per diagonal, 4.1-4.2 ms with two gathers per tile, 3.7 ms with
    # one gather per tile, 2026-11-26.)  The loop body has no branch: the first tile's
    # diagonals are kept aside and added with the last carry after it (same speed as the
    # in-loop atomic, 3.70 vs 3.67 ms at 1M keys; other splits or pipeline stages were not
    # faster either, fewer warps were: LAUNCH_SUMS).  Neither a skew through a scratch tile
    # in global memory, nor a gather of fp16 probabilities, nor four 16-row dots with
    # shifted keys (a 16-row residual skew), nor four weighted tile sums straight into
    # adaptive mode's chunk masses beat the one gather (benchmarks/results/HISTORY.md, ninth
    # session).
    # Both skews read key (i - u) mod 64 of row i, so one gather serves both and two masked
    # column sums split it (the upper part where i >= u, the lower where i < u).
    tl.static_assert(LAST == KEY_TILE)
    i2 = tl.arange(0, LAST)[:, None]
    u2 = tl.arange(0, KEY_TILE)[None, :]
    up_ok = i2 >= u2
    skew = tl.where(up_ok, i2 - u2, i2 - u2 + KEY_TILE)
    u = tl.arange(0, KEY_TILE)
    k_begin = split * SPLIT
    k_end = tl.minimum(k_begin + SPLIT, kv_len)
    carry = tl.zeros([KEY_TILE], tl.float32)
    first = tl.zeros([KEY_TILE], tl.float32)  # the first tile's diagonals: atomics after the loop
    for k0 in range(k_begin, k_end, KEY_TILE):
        s, k_idx, k_ok = _estimate_tile_scores(q, b, kvh, k0, kv_len, q_pos, row_ok, qk_scale,
                                               K, stride_kp, stride_kt, stride_kh, BT,
                                               stride_bt, KV_START, HEAD_DIM, KEY_TILE, PAGE,
                                               PAGED, PREC)
        p = tl.math.exp2(s - m_row[:, None]) * inv_l[:, None]
        tl.store(VERT + out + k_idx, tl.sum(p, axis=0), mask=k_ok)
        skewed = tl.gather(p, skew, axis=1)
        upper = tl.sum(tl.where(up_ok, skewed, 0.0), axis=0) + carry
        carry = tl.sum(tl.where(up_ok, 0.0, skewed), axis=0)
        dist = kv_len - LAST - k0 + u
        d_ok = (dist >= 0) & (dist < kv_len)
        tl.store(SLASH + out + dist, upper, mask=d_ok & (k0 != k_begin))
        first = tl.where(k0 == k_begin, upper, first)
    n_tiles = tl.cdiv(k_end - k_begin, KEY_TILE)
    dist = kv_len - LAST - k_begin + u  # the first tile's D + u
    d_ok = (dist >= 0) & (dist < kv_len) & (n_tiles > 0)
    tl.atomic_add(SLASH + out + dist, first, mask=d_ok, sem="relaxed")
    dist = dist - n_tiles * KEY_TILE  # the last tile's D - 64 + u
    d_ok = (dist >= 0) & (dist < kv_len) & (n_tiles > 0)
    tl.atomic_add(SLASH + out + dist, carry, mask=d_ok, sem="relaxed")


def keys_per_split(kv_max: int, rows: int) -> int:
    """Keys per program of both passes for ``rows`` (sequence, head) pairs over ``kv_max``
    keys: ``KEYS_PER_SPLIT``, halved (down to ``MIN_KEYS_PER_SPLIT``, a multiple of the key
    tile) while the grid would hold fewer than ``TARGET_PROGRAMS`` programs.  A runtime
    argument of the kernels, so no split compiles a kernel of its own."""
    split = KEYS_PER_SPLIT
    while (split // 2 >= max(MIN_KEYS_PER_SPLIT, KEY_TILE)
           and rows * triton.cdiv(kv_max, split) < TARGET_PROGRAMS):
        split //= 2
    return split


def estimate_vertical_slash(
    q: torch.Tensor,
    kv: KVSource,
    layout: SeqLayout,
    heads: torch.Tensor,
    sm_scale: float | None = None,
    row_lse: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Column and diagonal attention mass of the last 64 queries, for the query ``heads``.

    Returns ``(vertical, slash)``, each ``[B, len(heads), max_kv_len]`` float32; entries past
    a sequence's ``kv_len`` are 0.  ``row_lse`` (``[B, len(heads), 64]``, natural log, e.g.
    from :func:`.row_stats.estimate_row_lse`) replaces the first pass: the rows' softmax
    statistics are then its log-sum-exp.
    """
    num_heads, head_dim = q.shape[1], q.shape[2]
    n_est = heads.numel()
    B, kv_max = layout.num_seqs, layout.max_kv_len
    vertical = torch.zeros(B, n_est, kv_max, dtype=torch.float32, device=q.device)
    slash = torch.zeros_like(vertical)
    if n_est == 0:
        return vertical, slash
    if sm_scale is None:
        sm_scale = 1.0 / math.sqrt(head_dim)
    heads = heads.to(device=q.device, dtype=torch.int32)
    split = keys_per_split(kv_max, B * n_est)
    n_split = triton.cdiv(kv_max, split)
    kv_args = kv.kernel_args()
    kv_args = {k: kv_args[k] for k in ("K", "stride_kp", "stride_kt", "stride_kh", "BT",
                                       "stride_bt", "KV_START", "PAGE", "PAGED")}
    common = dict(GROUP=num_heads // kv.num_kv_heads, HEAD_DIM=head_dim, LAST=LAST_Q,
                  KEY_TILE=KEY_TILE, PREC=dot_precision(q.dtype))
    grid = (n_split, n_est, B)
    qk_scale = sm_scale * LOG2E
    if row_lse is not None:  # max = lse (log2 units), normaliser 1
        m_row = (row_lse.to(device=q.device, dtype=torch.float32) * LOG2E).contiguous()
        l_row = torch.where(row_lse == float("-inf"), 0.0, 1.0).to(m_row)
    else:
        m_part = torch.empty(B, n_est, n_split, LAST_Q, dtype=torch.float32, device=q.device)
        l_part = torch.empty_like(m_part)
        _estimate_stats_kernel[grid](
            q, q.stride(0), q.stride(1), heads, qk_scale, **kv_args,
            Q_START=layout.q_start, Q_LEN=layout.q_len, KV_LEN=layout.kv_len,
            M_OUT=m_part, L_OUT=l_part, SPLIT=split, **common, **LAUNCH_STATS)
        m_row = torch.empty(B, n_est, LAST_Q, dtype=torch.float32, device=q.device)
        l_row = torch.empty_like(m_row)
        _estimate_combine_kernel[(n_est, B)](m_part, l_part, m_row, l_row, n_split,
                                             LAST=LAST_Q, SB=16, num_warps=4)
    _estimate_scores_kernel[grid](
        q, q.stride(0), q.stride(1), heads, qk_scale, **kv_args,
        Q_START=layout.q_start, Q_LEN=layout.q_len, KV_LEN=layout.kv_len,
        M_ROW=m_row, L_ROW=l_row, VERT=vertical, SLASH=slash,
        stride_vb=vertical.stride(0), stride_vh=vertical.stride(1), SPLIT=split, **common,
        **LAUNCH_SUMS)
    return vertical, slash


SELECT_BLOCK = 1024  # positions per program of the score kernel; entries per compaction step


@triton.jit(do_not_specialize=["kv_max", "keep_first", "keep_diag"])
def _select_scores_kernel(VERT, SLASH, KV_LEN, SCORE, kv_max, keep_first, keep_diag,
                          FORCED_KEY: tl.constexpr, BLOCK: tl.constexpr):
    """Ranking scores of columns (``SCORE[0]``) and diagonals (``SCORE[1]``), one launch.

    The first ``keep_first`` columns and ``keep_diag`` diagonals score ``FORCED_KEY + keep -
    pos``: estimated masses are at most 64 (64 rows of probabilities), so that is above all
    of them, exact in fp32, and a budget below ``keep`` keeps the nearest ones.  Positions
    past the sequence score ``-inf`` (never kept).
    """
    h = tl.program_id(1)
    b = tl.program_id(2)
    n_rows = tl.num_programs(1) * tl.num_programs(2)
    row = (b * tl.num_programs(1) + h).to(tl.int64)
    kv_len = tl.load(KV_LEN + b)
    pos = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    ok = pos < kv_max
    v = tl.load(VERT + row * kv_max + pos, mask=ok, other=0.0).to(tl.float32)
    v = tl.where(pos < keep_first, FORCED_KEY + (keep_first - pos).to(tl.float32), v)
    tl.store(SCORE + row * kv_max + pos, tl.where(pos < kv_len, v, float("-inf")), mask=ok)
    s = tl.load(SLASH + row * kv_max + pos, mask=ok, other=0.0).to(tl.float32)
    s = tl.where(pos < keep_diag, FORCED_KEY + (keep_diag - pos).to(tl.float32), s)
    tl.store(SCORE + (n_rows + row) * kv_max + pos, tl.where(pos < kv_len, s, float("-inf")),
             mask=ok)


@triton.jit
def _compact_kept(IDX, RANK, VAL, BUDGET, OUT, N_OUT, src, dst, h, k, k_sel, width,
                  INVALID_IDX: tl.constexpr, BLOCK: tl.constexpr):
    """Kept entries of one index-sorted top-k row, in order, then padding and the count.

    ``RANK`` is each entry's place in the score order: it is kept if that is below the
    head's budget (and the top-k of this kind, ``k_sel``) and its score is not ``-inf``.
    """
    cut = tl.minimum(tl.load(BUDGET + h), k_sel)
    done = tl.zeros([], tl.int32)  # entries stored so far
    for j0 in range(0, k, BLOCK):
        j = j0 + tl.arange(0, BLOCK)
        ok = j < k
        idx = tl.load(IDX + src * k + j, mask=ok, other=0)
        rank = tl.load(RANK + src * k + j, mask=ok, other=0)
        val = tl.load(VAL + src * k + rank, mask=ok, other=float("-inf"))
        done = append_kept(OUT + dst * width, done, idx.to(tl.int32),
                           ok & (rank < cut) & (val > float("-inf")))
    for j0 in range(0, width, BLOCK):
        j = j0 + tl.arange(0, BLOCK)
        tl.store(OUT + dst * width + j, tl.full([BLOCK], INVALID_IDX, tl.int32),
                 mask=(j >= done) & (j < width))
    tl.store(N_OUT + dst, done)


@triton.jit(do_not_specialize=["k", "k_v", "k_s", "v_width", "s_width"])
def _select_compact_kernel(IDX, RANK, VAL, V_BUDGET, S_BUDGET, COLS, N_COLS, DIAGS, N_DIAGS,
                           k, k_v, k_s, v_width, s_width,
                           INVALID_IDX: tl.constexpr, BLOCK: tl.constexpr):
    """Budget cut, padding and counts of both selections (program axis 2: columns, diagonals).

    ``IDX`` (``[2, B, H, k]``) holds each row's top-k positions sorted descending, ``RANK``
    their places in the score order, ``VAL`` the scores in that order.
    """
    h = tl.program_id(0)
    b = tl.program_id(1)
    dst = (b * tl.num_programs(0) + h).to(tl.int64)
    if tl.program_id(2) == 0:
        _compact_kept(IDX, RANK, VAL, V_BUDGET, COLS, N_COLS, dst, dst, h, k, k_v, v_width,
                      INVALID_IDX, BLOCK)
    else:
        src = dst + tl.num_programs(0) * tl.num_programs(1)
        _compact_kept(IDX, RANK, VAL, S_BUDGET, DIAGS, N_DIAGS, src, dst, h, k, k_s, s_width,
                      INVALID_IDX, BLOCK)


def select_vertical_slash(
    vertical: torch.Tensor,
    slash: torch.Tensor,
    layout: SeqLayout,
    v_budget: torch.Tensor,
    s_budget: torch.Tensor,
    v_max: int,
    s_max: int,
    keep_first: int = 30,
    keep_diag: int = 100,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Top ``v_budget[h]`` columns and ``s_budget[h]`` diagonals per (sequence, head).

    The first ``keep_first`` keys and the ``keep_diag`` nearest diagonals (main included) are
    always kept (the nearest ones first, should a budget be smaller).  Returns ``(cols,
    n_cols, diags, n_diags)``; ``cols`` is ``[B, H, v_max]`` and ``diags`` ``[B, H, s_max]``,
    both int32 sorted *descending* with ``-1`` padding.

    This runs per layer and chunk, and its time was mostly the host launching ~35 small
    PyTorch ops, so it is four: the score kernel (both kinds, forced and masked), one
    ``torch.topk`` over both kinds (``max(v_max, s_max)`` wide, sorted: the budget cut needs
    the ranks, and the budgets are on the device), one ``torch.sort`` of the found positions
    (its permutation is the ranks) and the compaction kernel.  Scores are float32.
    """
    B, H, kv_max = vertical.shape
    dev = vertical.device
    cols = torch.empty(B, H, v_max, dtype=torch.int32, device=dev)
    diags = torch.empty(B, H, s_max, dtype=torch.int32, device=dev)
    n_cols = torch.empty(B, H, dtype=torch.int32, device=dev)
    n_diags = torch.empty_like(n_cols)
    if B * H == 0:
        return cols, n_cols, diags, n_diags
    k_v, k_s = min(v_max, kv_max), min(s_max, kv_max)
    k = max(k_v, k_s)
    score = torch.empty(2, B, H, kv_max, dtype=torch.float32, device=dev)
    if kv_max > 0:
        _select_scores_kernel[(triton.cdiv(kv_max, SELECT_BLOCK), H, B)](
            vertical.contiguous(), slash.contiguous(), layout.kv_len.to(dev), score, kv_max,
            keep_first, keep_diag, FORCED_KEY=FORCED, BLOCK=SELECT_BLOCK, num_warps=4)
    # the wider top-k's first ranks are the narrower one's (no ties): one call for both
    val, pos = torch.topk(score, k, dim=-1, sorted=True)
    pos, rank = torch.sort(pos, dim=-1, descending=True)
    _select_compact_kernel[(H, B, 2)](
        pos, rank, val, v_budget.to(dev), s_budget.to(dev), cols, n_cols, diags, n_diags,
        k, k_v, k_s, v_max, s_max, INVALID_IDX=INVALID, BLOCK=SELECT_BLOCK, num_warps=4)
    return cols, n_cols, diags, n_diags
