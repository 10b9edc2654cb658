"""Block-Sparse estimation and work lists: top-k 64x64 blocks from mean-pooled Q and K.

Each 64-row query block and each aligned 64-key tile is mean-pooled (Triton, keys read from
the paged cache); the pooled query scores every causal key tile of its sequence, and the
``topk[h]`` best tiles become that block's absolute chunk list.  Tile 0 (the sink) and the
tiles holding the block's own rows (the diagonal) are always kept.

The same pooled scores also give other patterns a few *extra* tiles per query block
(:func:`extra_block_tiles`): the Vertical-Slash lists come from the estimate of a prefill
chunk's last 64 rows, which in chunked prefill are not the prompt's question, so a block that
needs a far key those rows do not (e.g. a later copy of a fact reading the first) misses it.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from ..layout import BLOCK_M, BLOCK_N, KVSource, SeqLayout, kv_row_offsets, query_block
from ..worklist import DESC_FIELDS, WorkList

MIN_BLOCKS = 3  # sink + up to two diagonal tiles


@triton.jit(do_not_specialize=["stride_ob", "stride_oh", "N_TILES", "stride_bt"])
def _pool_keys_kernel(
    K, stride_kp, stride_kt, stride_kh, BT, stride_bt, KV_START, KV_LEN, OUT,
    stride_ob, stride_oh, N_TILES,
    HEAD_DIM: tl.constexpr, BLOCK_N: tl.constexpr, PAGE: tl.constexpr, PAGED: tl.constexpr,
):
    tile = tl.program_id(0)
    kvh = tl.program_id(1)
    b = tl.program_id(2)
    kv_len = tl.load(KV_LEN + b)
    k_idx = tile * BLOCK_N + tl.arange(0, BLOCK_N)
    ok = k_idx < kv_len
    off = kv_row_offsets(b, k_idx, ok, BT, stride_bt, KV_START, stride_kp, stride_kt, PAGE, PAGED)
    d = tl.arange(0, HEAD_DIM)
    k = tl.load(K + kvh * stride_kh + off[:, None] + d[None, :], mask=ok[:, None], other=0.0)
    n = tl.maximum(tl.sum(ok.to(tl.float32), axis=0), 1.0)
    mean = tl.sum(k.to(tl.float32), axis=0) / n
    tl.store(OUT + b.to(tl.int64) * stride_ob + kvh * stride_oh + tile * HEAD_DIM + d, mean)


@triton.jit(do_not_specialize=["stride_kb", "stride_kh", "NB", "N_TILES", "LOCAL"])
def _block_scores_kernel(
    Q, stride_qt, stride_qh, HEADS, KBAR, stride_kb, stride_kh, sm_scale,
    Q_START, Q_LEN, KV_LEN, BLK_SEQ, BLK_M, SCORES, NB, N_TILES, LOCAL,
    GROUP: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr, TB: tl.constexpr, EXTRA: tl.constexpr,
):
    """Pooled score of every key tile for one (head, block).  ``EXTRA``: the sink, the
    diagonal tiles and tiles ending within ``LOCAL`` keys before the block score ``-inf``
    (the other pattern keeps them already), instead of ``+inf`` (always kept)."""
    blk = tl.program_id(0)
    hs = tl.program_id(1)
    qh = tl.load(HEADS + hs)
    kvh = qh // GROUP
    b, m, q_start, q_len, kv_len, rows, row_ok = query_block(
        blk, BLK_SEQ, BLK_M, Q_START, Q_LEN, KV_LEN, BLOCK_M)
    d = tl.arange(0, HEAD_DIM)
    q = tl.load(Q + (q_start + rows).to(tl.int64)[:, None] * stride_qt + qh * stride_qh + d[None, :],
                mask=row_ok[:, None], other=0.0)
    q_bar = tl.sum(q.to(tl.float32), axis=0) / tl.sum(row_ok.to(tl.float32), axis=0)
    first = kv_len - q_len + m * BLOCK_M
    last = tl.minimum(first + BLOCK_M - 1, kv_len - 1)
    out = SCORES + (hs * NB + blk).to(tl.int64) * N_TILES
    kbar = KBAR + b.to(tl.int64) * stride_kb + kvh * stride_kh
    for t0 in range(0, N_TILES, TB):
        t = t0 + tl.arange(0, TB)
        t_ok = t < N_TILES
        kt = tl.load(kbar + t[:, None] * HEAD_DIM + d[None, :], mask=t_ok[:, None], other=0.0)
        s = tl.sum(kt * q_bar[None, :], axis=1) * sm_scale
        forced = (t == 0) | (t == first // BLOCK_N) | (t == last // BLOCK_N)
        if EXTRA:
            s = tl.where(forced | (t * BLOCK_N + BLOCK_N > first - LOCAL), float("-inf"), s)
        else:
            s = tl.where(forced, float("inf"), s)
        s = tl.where(t * BLOCK_N <= last, s, float("-inf"))
        tl.store(out + t, s, mask=t_ok)


def block_sparse_scores(q: torch.Tensor, kv: KVSource, layout: SeqLayout, heads: torch.Tensor,
                        sm_scale: float | None = None, extra_local: int | None = None
                        ) -> torch.Tensor:
    """Pooled-query x pooled-key score of every (head, block, key tile): ``[H, NB, tiles]``.

    Non-causal tiles are ``-inf``; the sink and diagonal tiles are ``+inf`` (always kept).
    With ``extra_local`` (:func:`extra_block_tiles`) those, and the tiles ending within
    ``extra_local`` keys before the block, are ``-inf`` instead.
    """
    num_heads, head_dim = q.shape[1], q.shape[2]
    B, NB = layout.num_seqs, layout.num_blocks
    n_tiles = triton.cdiv(layout.max_kv_len, BLOCK_N)
    if sm_scale is None:
        sm_scale = 1.0 / math.sqrt(head_dim)
    kbar = torch.zeros(B, kv.num_kv_heads, n_tiles, head_dim, dtype=torch.float32,
                       device=q.device)
    args = kv.kernel_args()
    _pool_keys_kernel[(n_tiles, kv.num_kv_heads, B)](
        args["K"], args["stride_kp"], args["stride_kt"], args["stride_kh"], args["BT"],
        args["stride_bt"], args["KV_START"], layout.kv_len, kbar, kbar.stride(0),
        kbar.stride(1), n_tiles, HEAD_DIM=head_dim, BLOCK_N=BLOCK_N, PAGE=args["PAGE"],
        PAGED=args["PAGED"], num_warps=4)
    heads = heads.to(device=q.device, dtype=torch.int32)
    scores = torch.empty(heads.numel(), NB, n_tiles, dtype=torch.float32, device=q.device)
    if NB and heads.numel():
        _block_scores_kernel[(NB, heads.numel())](
            q, q.stride(0), q.stride(1), heads, kbar, kbar.stride(0), kbar.stride(1), sm_scale,
            layout.q_start, layout.q_len, layout.kv_len, layout.blk_seq, layout.blk_m, scores,
            NB, n_tiles, extra_local or 0, GROUP=num_heads // kv.num_kv_heads,
            HEAD_DIM=head_dim, BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N, TB=64,
            EXTRA=extra_local is not None, num_warps=4)
    return scores


def extra_block_tiles(q: torch.Tensor, kv: KVSource, layout: SeqLayout, heads: torch.Tensor,
                      per_block: int, local: int, sm_scale: float | None = None
                      ) -> torch.Tensor:
    """The ``per_block`` best far key tiles of every (head, block) by pooled score:
    ``[len(heads), NB, per_block]`` int32 absolute tile starts, ``-1`` where fewer exist.

    The sink tile, the block's own tiles and tiles ending within ``local`` keys before it are
    left out (a Vertical-Slash list holds them).  Fixed shapes, no host sync.
    """
    scores = block_sparse_scores(q, kv, layout, heads, sm_scale, extra_local=local)
    k = max(1, min(per_block, scores.shape[-1]))
    val, idx = torch.topk(scores, k, dim=-1, sorted=False)
    starts = torch.where(val > float("-inf"), idx * BLOCK_N, torch.full_like(idx, -1))
    if k < per_block:
        starts = torch.nn.functional.pad(starts, (0, per_block - k), value=-1)
    return starts.to(torch.int32)


def build_block_sparse_worklist(scores: torch.Tensor, topk: torch.Tensor, k_max: int) -> WorkList:
    """Keep the ``topk[h]`` best key tiles of every (head, block); absolute chunk lists."""
    H, NB, n_tiles = scores.shape
    k = max(1, min(k_max, n_tiles))
    topk = topk.to(device=scores.device, dtype=torch.long).clamp_min(MIN_BLOCKS)
    val, idx = torch.topk(scores, k, dim=-1, sorted=True)
    rank = torch.arange(k, device=scores.device)
    keep = (rank[None, None, :] < topk[:, None, None]) & (val > float("-inf"))
    big = torch.full_like(idx, 1 << 30)
    tiles = torch.sort(torch.where(keep, idx, big), dim=-1).values
    start = torch.where(tiles < (1 << 30), tiles * BLOCK_N, torch.zeros_like(tiles))
    chunks = torch.stack([start, start], dim=-1).to(torch.int32).reshape(-1, 2)
    desc = torch.zeros(H, NB, DESC_FIELDS, dtype=torch.long, device=scores.device)
    desc[..., 0] = (torch.arange(H * NB, device=scores.device) * k).reshape(H, NB)
    desc[..., 1] = keep.sum(dim=-1)
    cols = torch.zeros(1, dtype=torch.int32, device=scores.device)
    return WorkList(desc.to(torch.int32), chunks, cols)
