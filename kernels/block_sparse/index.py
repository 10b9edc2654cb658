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
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from ..layout import BLOCK_M, BLOCK_N, KVSource, SeqLayout, kv_row_offsets, query_block
from ..worklist import WorkList, tile_worklist

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


@triton.jit(do_not_specialize=["stride_bh"])
def _pool_queries_kernel(
    Q, stride_qt, stride_qh, HEADS, Q_START, Q_LEN, KV_LEN, BLK_SEQ, BLK_M, QBAR, stride_bh,
    HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr,
):
    """Mean query of one (block, head): ``QBAR[head, block]``."""
    blk = tl.program_id(0)
    hs = tl.program_id(1)
    qh = tl.load(HEADS + hs)
    b, m, q_start, q_len, kv_len, rows, row_ok = query_block(
        blk, BLK_SEQ, BLK_M, Q_START, Q_LEN, KV_LEN, BLOCK_M)
    d = tl.arange(0, HEAD_DIM)
    q = tl.load(Q + (q_start + rows).to(tl.int64)[:, None] * stride_qt + qh * stride_qh + d[None, :],
                mask=row_ok[:, None], other=0.0)
    q_bar = tl.sum(q.to(tl.float32), axis=0) / tl.sum(row_ok.to(tl.float32), axis=0)
    tl.store(QBAR + hs.to(tl.int64) * stride_bh + blk * HEAD_DIM + d, q_bar)


@triton.jit
def _pooled_block_group(QBAR, stride_bh, HEADS, KBAR, stride_kb, stride_kh, Q_LEN, KV_LEN,
                        BLK_M, SEQ, BLK0, NB, GROUP: tl.constexpr, HEAD_DIM: tl.constexpr,
                        BLOCK_M: tl.constexpr, BG: tl.constexpr):
    """The ``BG`` blocks of program ``(program_id(0), head program_id(1))`` of sequence
    ``SEQ``: their indices from ``BLK0``, validity, first key positions, the sequence's key
    count, pooled queries ``[BG, HEAD_DIM]`` and the sequence's pooled keys of the head."""
    hs = tl.program_id(1)
    kvh = tl.load(HEADS + hs) // GROUP
    i = tl.program_id(0) * BG + tl.arange(0, BG)
    i_ok = i < NB
    m = tl.load(BLK_M + BLK0 + i, mask=i_ok, other=0)
    kv_len = tl.load(KV_LEN + SEQ)
    first = kv_len - tl.load(Q_LEN + SEQ) + m * BLOCK_M
    d = tl.arange(0, HEAD_DIM)
    q_bar = tl.load(QBAR + hs.to(tl.int64) * stride_bh + (BLK0 + i)[:, None] * HEAD_DIM
                    + d[None, :], mask=i_ok[:, None], other=0.0)
    kbar = KBAR + SEQ.to(tl.int64) * stride_kb + kvh * stride_kh
    return hs, i, i_ok, first, kv_len, q_bar, kbar


@triton.jit(do_not_specialize=["stride_bh", "stride_kb", "stride_kh", "stride_sh", "SEQ", "BLK0",
                               "NB", "N_TILES"])
def _block_scores_kernel(
    QBAR, stride_bh, HEADS, KBAR, stride_kb, stride_kh, sm_scale, Q_LEN, KV_LEN, BLK_M,
    SCORES, stride_sh, SEQ, BLK0, NB, N_TILES,
    GROUP: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr, TB: tl.constexpr, BG: tl.constexpr,
):
    """Pooled scores of ``BG`` blocks of sequence ``SEQ`` (blocks ``BLK0 + [0, NB)``, rows
    ``(head, block - BLK0)`` of ``SCORES``) against every key tile: one ``tl.dot`` per
    ``TB`` tiles, so a tile's pooled key is read once per ``BG`` blocks.  The sink and the
    block's own tiles score ``+inf`` (always kept), tiles past the causal edge ``-inf``."""
    hs, i, i_ok, first, kv_len, q_bar, kbar = _pooled_block_group(
        QBAR, stride_bh, HEADS, KBAR, stride_kb, stride_kh, Q_LEN, KV_LEN, BLK_M, SEQ, BLK0,
        NB, GROUP, HEAD_DIM, BLOCK_M, BG)
    last = tl.minimum(first + BLOCK_M - 1, kv_len - 1)
    d = tl.arange(0, HEAD_DIM)
    out = SCORES + hs.to(tl.int64) * stride_sh + i.to(tl.int64)[:, None] * N_TILES
    for t0 in range(0, N_TILES, TB):
        t = t0 + tl.arange(0, TB)
        t_ok = t < N_TILES
        kt = tl.load(kbar + t[:, None] * HEAD_DIM + d[None, :], mask=t_ok[:, None], other=0.0)
        s = tl.dot(q_bar, tl.trans(kt), input_precision="ieee") * sm_scale
        tt = t[None, :]
        forced = (tt == 0) | (tt == (first // BLOCK_N)[:, None]) | (tt == (last // BLOCK_N)[:, None])
        s = tl.where(forced, float("inf"), s)
        s = tl.where(tt * BLOCK_N <= last[:, None], s, float("-inf"))
        tl.store(out + tt, s, mask=i_ok[:, None] & t_ok[None, :])


@triton.jit
def far_tiles_end(first, LOCAL, BLOCK_N: tl.constexpr):
    """End of a block's far tiles (``1 <= t < end``): tiles ending at least ``LOCAL`` keys
    before the block's first row ``first``."""
    return tl.maximum(first - LOCAL, 0) // BLOCK_N


@triton.jit(do_not_specialize=["stride_bh", "stride_kb", "stride_kh", "stride_oh", "stride_sh",
                               "SEQ", "BLK0", "NB", "N_TILES", "N_BUCKETS", "SPLIT_TILES",
                               "LOCAL"])
def _far_scores_kernel(
    QBAR, stride_bh, HEADS, KBAR, stride_kb, stride_kh, sm_scale, Q_LEN, KV_LEN, BLK_M,
    BMAX, stride_oh, SCORES, stride_sh, SEQ, BLK0, NB, N_TILES, N_BUCKETS, SPLIT_TILES, LOCAL,
    GROUP: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr, BG: tl.constexpr, TB: tl.constexpr, BUCKET: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """Far-tile scores of ``BG`` blocks of sequence ``SEQ`` against the tiles of key split
    ``program_id(2)``, and the best of them per ``BUCKET`` consecutive tiles:
    ``SCORES[head, block - BLK0, tile]`` (``-inf`` where not far) and
    ``BMAX[head, block - BLK0, bucket]``.

    Far: not the sink, and ending at least ``LOCAL`` keys before the block's first row (so
    never the block's own tiles).  One ``tl.dot`` per ``TB`` tiles, 3xTF32 on the tensor
    cores (the ``ieee`` dot ran at ~3.4 TFMA/s on an H100)."""
    hs, i, i_ok, first, kv_len, q_bar, kbar = _pooled_block_group(
        QBAR, stride_bh, HEADS, KBAR, stride_kb, stride_kh, Q_LEN, KV_LEN, BLK_M, SEQ, BLK0,
        NB, GROUP, HEAD_DIM, BLOCK_M, BG)
    far_end = tl.where(i_ok, far_tiles_end(first, LOCAL, BLOCK_N), 0)  # far: 1 <= t < end
    d = tl.arange(0, HEAD_DIM)
    out = BMAX + hs.to(tl.int64) * stride_oh + i.to(tl.int64)[:, None] * N_BUCKETS
    out_sc = SCORES + hs.to(tl.int64) * stride_sh + i.to(tl.int64)[:, None] * N_TILES
    lo = tl.program_id(2) * SPLIT_TILES
    hi = tl.minimum(lo + SPLIT_TILES, N_TILES)
    reach = tl.minimum(hi, tl.max(far_end, axis=0))
    nb_tile: tl.constexpr = TB // BUCKET
    for t0 in range(lo, hi, TB):
        bk = t0 // BUCKET + tl.arange(0, nb_tile)
        t = t0 + tl.arange(0, TB)
        if t0 < reach:
            kt = tl.load(kbar + t[:, None] * HEAD_DIM + d[None, :], mask=(t < reach)[:, None],
                         other=0.0)
            sc = tl.dot(q_bar, tl.trans(kt), input_precision=PRECISION) * sm_scale
            far = (t[None, :] >= 1) & (t[None, :] < far_end[:, None])
            sc = tl.where(far, sc, float("-inf"))
            best = tl.max(tl.reshape(sc, [BG, nb_tile, BUCKET]), axis=2)
            # a bucket without a far tile is never chosen, so its scores need not be written
            tl.store(out_sc + t[None, :], sc, mask=i_ok[:, None] & (t < N_TILES)[None, :])
        else:
            best = tl.full([BG, nb_tile], float("-inf"), tl.float32)
        tl.store(out + bk[None, :], best, mask=i_ok[:, None] & (bk < N_BUCKETS)[None, :])


NO_KEY = tl.constexpr(-(1 << 63))  # int64 rank key below every (score, index) key


@triton.jit
def _rank_keys(s, t):
    """int64 keys that order like ``(s, t)``: the float's bits made monotone in the high half
    (a negative float's magnitude bits flipped), the index ``t >= 0`` in the low half."""
    bits = s.to(tl.int32, bitcast=True)
    key = tl.where(bits >= 0, bits, bits ^ 0x7FFFFFFF)
    return (key.to(tl.int64) << 32) | t.to(tl.int64)


@triton.jit(do_not_specialize=["stride_ch", "stride_mh", "stride_sh", "stride_oh", "NB",
                               "N_TILES", "N_BUCKETS", "KB", "PER_BLOCK"])
def _rank_far_tiles_kernel(
    BUCKETS, stride_ch, BMAX, stride_mh, SCORES, stride_sh, OUT, stride_oh, NB, N_TILES,
    N_BUCKETS, KB, PER_BLOCK,
    BUCKET: tl.constexpr, KP: tl.constexpr, BB: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """The ``PER_BLOCK`` best far tiles of ``BB`` blocks of one head, from the scores of
    the tiles of each block's ``KB`` best buckets, ranked in registers (``tl.topk`` over int64
    (score, tile) keys): ``OUT[head, block, r]``, the r-th best tile's first key, ``-1`` past
    the far tiles.  ``KP``: a power of two >= ``PER_BLOCK`` and ``KB``, and >= 16 (the ranked
    row then has >= 256 entries, at least one per thread: see the sentinel below)."""
    hs = tl.program_id(1)
    i = tl.program_id(0) * BB + tl.arange(0, BB)
    i_ok = i < NB
    j = tl.arange(0, KP * BUCKET)[None, :]
    j_ok = i_ok[:, None] & (j // BUCKET < KB)
    bucket = tl.load(BUCKETS + hs.to(tl.int64) * stride_ch + i.to(tl.int64)[:, None] * KB
                     + j // BUCKET, mask=j_ok, other=0)
    # a bucket without a far tile (chosen where fewer than KB have one) has no scores written
    j_ok = j_ok & (tl.load(BMAX + hs.to(tl.int64) * stride_mh + i.to(tl.int64)[:, None]
                           * N_BUCKETS + bucket, mask=j_ok, other=float("-inf"))
                   > float("-inf"))
    t = bucket.to(tl.int32) * BUCKET + j % BUCKET
    t_ok = j_ok & (t < N_TILES)
    sc = tl.load(SCORES + hs.to(tl.int64) * stride_sh + i.to(tl.int64)[:, None] * N_TILES + t,
                 mask=t_ok, other=float("-inf"))
    t_ok = t_ok & (sc > float("-inf"))
    # (on an H100, two earlier variants returned tile 0 where no far tile existed: one with
    # a scalar int64 sentinel in tl.where, one ranking 64 entries on 128 threads; the cause
    # was not isolated, so the sentinel is a full tensor and a ranked row has >= 256 entries)
    best = tl.topk(tl.where(t_ok, _rank_keys(sc, t), tl.full([BB, KP * BUCKET], NO_KEY,
                                                            tl.int64)), KP)
    r = tl.arange(0, KP)[None, :]
    tile = tl.where(best != tl.full([BB, KP], NO_KEY, tl.int64),
                    (best & 0xFFFFFFFF).to(tl.int32) * BLOCK_N, -1)
    tl.store(OUT + hs.to(tl.int64) * stride_oh + i.to(tl.int64)[:, None] * PER_BLOCK + r, tile,
             mask=i_ok[:, None] & (r < PER_BLOCK))


def block_sparse_scores(q: torch.Tensor, kv: KVSource, layout: SeqLayout, heads: torch.Tensor,
                        sm_scale: float | None = None, kbar: torch.Tensor | None = None
                        ) -> torch.Tensor:
    """Pooled-query x pooled-key score of every (head, block, key tile): ``[H, NB, tiles]``.

    Non-causal tiles are ``-inf``; the sink and diagonal tiles are ``+inf`` (always kept).
    ``kbar``: the batch's :func:`pool_keys`, if already computed.
    """
    pooled = PooledBlocks.build(q, kv, layout, heads, kbar)
    scores = torch.empty(pooled.num_heads, layout.num_blocks, pooled.num_tiles,
                         dtype=torch.float32, device=q.device)
    for seq, blk0, nb in layout.block_ranges(layout.num_blocks):
        pooled.scores_into(scores[:, blk0:blk0 + nb], seq, blk0, sm_scale)
    return scores


def pool_keys(kv: KVSource, layout: SeqLayout, head_dim: int, device: torch.device | str
              ) -> torch.Tensor:
    """Mean key of every (sequence, KV head, 64-key tile): ``[B, kv_heads, tiles, D]``
    float32 (zero past a sequence's end)."""
    n_tiles = triton.cdiv(layout.max_kv_len, BLOCK_N)
    kbar = torch.zeros(layout.num_seqs, kv.num_kv_heads, n_tiles, head_dim,
                       dtype=torch.float32, device=device)
    args = kv.kernel_args()
    _pool_keys_kernel[(n_tiles, kv.num_kv_heads, layout.num_seqs)](
        args["K"], args["stride_kp"], args["stride_kt"], args["stride_kh"], args["BT"],
        args["stride_bt"], args["KV_START"], layout.kv_len, kbar, kbar.stride(0),
        kbar.stride(1), n_tiles, HEAD_DIM=head_dim, BLOCK_N=BLOCK_N, PAGE=args["PAGE"],
        PAGED=args["PAGED"], num_warps=4)
    return kbar


@dataclass(frozen=True)
class PooledBlocks:
    """Mean query of every (head, 64-row block) and mean key of every (KV head, 64-key
    tile), from which any block range's scores are formed (host sizes only)."""

    qbar: torch.Tensor  # [H, NB, D] float32
    kbar: torch.Tensor  # [B, kv_heads, tiles, D] float32
    heads: torch.Tensor  # [H] int32 query heads
    layout: SeqLayout
    group: int  # query heads per KV head

    @property
    def num_heads(self) -> int:
        return self.heads.numel()

    @property
    def num_tiles(self) -> int:
        return self.kbar.shape[2]

    @staticmethod
    def build(q: torch.Tensor, kv: KVSource, layout: SeqLayout, heads: torch.Tensor,
              kbar: torch.Tensor | None = None) -> "PooledBlocks":
        """Pool these heads' queries; the keys too, unless ``kbar`` (:func:`pool_keys` of
        the same batch, shared by a layer's patterns) is given."""
        num_heads, head_dim = q.shape[1], q.shape[2]
        heads = heads.to(device=q.device, dtype=torch.int32)
        qbar = torch.empty(heads.numel(), layout.num_blocks, head_dim, dtype=torch.float32,
                           device=q.device)
        if layout.num_blocks and heads.numel():
            _pool_queries_kernel[(layout.num_blocks, heads.numel())](
                q, q.stride(0), q.stride(1), heads, layout.q_start, layout.q_len,
                layout.kv_len, layout.blk_seq, layout.blk_m, qbar, qbar.stride(0),
                HEAD_DIM=head_dim, BLOCK_M=BLOCK_M, num_warps=4)
        if kbar is None:
            kbar = pool_keys(kv, layout, head_dim, q.device)
        return PooledBlocks(qbar, kbar, heads, layout, num_heads // kv.num_kv_heads)

    def scores_into(self, scores: torch.Tensor, seq: int, blk0: int, sm_scale: float | None
                    ) -> None:
        """Scores of blocks ``blk0 + [0, scores.shape[1])`` (all of sequence ``seq``)."""
        nb = scores.shape[1]
        if not (nb and self.num_heads):
            return
        assert scores.stride(2) == 1 and scores.stride(1) == self.num_tiles
        _block_scores_kernel[(triton.cdiv(nb, SCORE_BLOCKS), self.num_heads)](
            self.qbar, self.qbar.stride(0), self.heads, self.kbar, self.kbar.stride(0),
            self.kbar.stride(1), self._scale(sm_scale), self.layout.q_len, self.layout.kv_len,
            self.layout.blk_m, scores, scores.stride(0), seq, blk0, nb, self.num_tiles,
            GROUP=self.group, HEAD_DIM=self.head_dim, BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N, TB=64,
            BG=SCORE_BLOCKS, num_warps=4)

    def far_scores_into(self, bmax: torch.Tensor, scores: torch.Tensor, seq: int, blk0: int,
                        local: int, sm_scale: float | None, split_tiles: int) -> None:
        """Far-tile scores and their best per bucket of ``BUCKET`` tiles for blocks ``blk0 +
        [0, bmax.shape[1])`` (all of sequence ``seq``): ``scores[head, block, tile]``
        (written for the buckets that hold a far tile only), ``bmax[head, block, bucket]``."""
        H, nb, n_buckets = bmax.shape
        if not (nb and H):
            return
        assert bmax.stride(2) == 1 and bmax.stride(1) == n_buckets
        assert scores.shape == (H, nb, self.num_tiles) and scores.stride(2) == 1
        assert scores.stride(1) == self.num_tiles
        splits = triton.cdiv(self.num_tiles, split_tiles)
        _far_scores_kernel[(triton.cdiv(nb, BUCKET_BLOCKS), H, splits)](
            self.qbar, self.qbar.stride(0), self.heads, self.kbar, self.kbar.stride(0),
            self.kbar.stride(1), self._scale(sm_scale), self.layout.q_len, self.layout.kv_len,
            self.layout.blk_m, bmax, bmax.stride(0), scores, scores.stride(0), seq, blk0, nb,
            self.num_tiles, n_buckets, split_tiles, local,
            GROUP=self.group, HEAD_DIM=self.head_dim, BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N,
            BG=BUCKET_BLOCKS, TB=BUCKET_TB, BUCKET=BUCKET, PRECISION=DOT_PRECISION,
            num_warps=4)

    @property
    def head_dim(self) -> int:
        return self.qbar.shape[2]

    def _scale(self, sm_scale: float | None) -> float:
        return 1.0 / math.sqrt(self.head_dim) if sm_scale is None else sm_scale


SCORE_BLOCKS = 16  # query blocks per program of the scores kernels (one tl.dot each)
BUCKET = 16  # key tiles per bucket of the extra tiles' first ranking (1024 keys)
BUCKET_TB = 64  # key tiles per tl.dot of the far scores
BUCKET_BLOCKS = 64  # query blocks per program of the far scores (a key tile read once)
DOT_PRECISION = "tf32x3"  # of the far scores' tl.dot (the interpreter computes fp32)
SPLIT_TILES = 1024  # key tiles per program of the far scores (a multiple of BUCKET_TB)
# far scores held at once (blocks are ranked in slices of them).  H100, tune_estimate.py
# --slice-mbs, 1M keys in a 64K chunk, Llama-3-8B / Qwen2.5-0.5B shapes: 64 MB 9.9 / 2.6 ms,
# 128 MB 6.3 / 2.1, 256 MB 5.5 / 1.7, 1 GB 4.9 / 1.5 (each slice costs ~0.15 ms of launches);
# 256 MB of transient memory at the longest prompts, no more than 2 slices below 256K keys
RANK_BYTES = 256 << 20
# launch of the ranking kernel: blocks per program, warps (H100, tune_estimate.py
# --rank-launches: 1 block on 1 warp 0.16 ms, 4 warps 0.27 ms, at 128K keys in a 64K chunk,
# Llama-3-8B shape); a warp more per 512 ranked scores (Block-Sparse heads rank ~100 tiles)
RANK_LAUNCH = dict(BB=1, num_warps=1)


def ranking_width(per_block: int) -> int:
    """``KP`` of :func:`_rank_far_tiles_kernel` for ``per_block`` tiles: the kernel compiles
    per value, so the warm-up covers each width a profile needs."""
    return max(16, triton.next_power_of_2(per_block))


def block_sparse_ranked(k_max: int) -> int:
    """Tiles a Block-Sparse head of budget ``k_max`` ranks per block (the sink is kept)."""
    return max(1, k_max - 1)


def rank_far_tiles_into(out: torch.Tensor, buckets: torch.Tensor, bmax: torch.Tensor,
                        scores: torch.Tensor) -> None:
    """The ``out.shape[2]`` best far tiles of ``out.shape[1]`` blocks (``[H, nb, per_block]``
    first keys, ``-1`` past the far tiles) from the tiles of their chosen ``buckets``
    (``[H, nb, KB]``), given :meth:`PooledBlocks.far_scores_into`'s ``bmax`` and ``scores``."""
    H, nb, per_block = out.shape
    kb, n_buckets, n_tiles = buckets.shape[2], bmax.shape[2], scores.shape[2]
    assert out.stride(2) == 1 and out.stride(1) == per_block and buckets.is_contiguous()
    assert bmax.stride(1) == n_buckets and scores.stride(1) == n_tiles
    kp = ranking_width(per_block)
    _rank_far_tiles_kernel[(triton.cdiv(nb, RANK_LAUNCH["BB"]), H)](
        buckets, buckets.stride(0), bmax, bmax.stride(0), scores, scores.stride(0), out,
        out.stride(0), nb, n_tiles, n_buckets, kb, per_block, BUCKET=BUCKET, KP=kp,
        BB=RANK_LAUNCH["BB"], BLOCK_N=BLOCK_N,
        num_warps=max(RANK_LAUNCH["num_warps"], kp * BUCKET // 512))


def rank_slice_blocks(num_heads: int, num_blocks: int, num_tiles: int) -> int:
    """Blocks ranked at once: at most ``RANK_BYTES`` of far scores, in whole programs of the
    scores kernel (``BUCKET_BLOCKS``) where that fits at least one."""
    step = RANK_BYTES // (4 * max(1, num_heads) * max(1, num_tiles))
    if step >= BUCKET_BLOCKS:
        step -= step % BUCKET_BLOCKS
    return max(1, min(num_blocks, step))


def extra_block_tiles(q: torch.Tensor, kv: KVSource, layout: SeqLayout, heads: torch.Tensor,
                      per_block: int, local: int, sm_scale: float | None = None,
                      split_tiles: int = SPLIT_TILES, kbar: torch.Tensor | None = None
                      ) -> torch.Tensor:
    """The ``per_block`` best far key tiles of every (head, block) by pooled score:
    ``[len(heads), NB, per_block]`` int32 absolute tile starts, ``-1`` where fewer exist.

    The sink tile, the block's own tiles and tiles ending within ``local`` keys before it are
    left out (a Vertical-Slash list holds them).  Fixed shapes, no host sync.

    Exact (ties aside) without ranking every tile: one kernel writes the far scores and the
    best score of every bucket of ``BUCKET`` tiles; the ``per_block`` buckets with the best
    maxima hold the ``per_block`` best tiles (each of those scores at least the
    ``per_block``-th best bucket maximum, as ``per_block`` distinct tiles do), so
    ``torch.topk`` picks those buckets and one kernel ranks their tiles' scores in registers.
    (``torch.topk`` over every tile took 4.5 of 15.9 ms per layer at 1M keys in a 64K chunk,
    Qwen2.5-0.5B's shape on an H100; scoring the chosen buckets' tiles again from the pooled
    keys 4.3 of 4.9 ms at 128K keys, Llama-3-8B shape.)  The scores are held for at most
    ``RANK_BYTES`` at a time, blocks ranked slice by slice.  ``kbar``: the batch's
    :func:`pool_keys`, if already computed.
    """
    pooled = PooledBlocks.build(q, kv, layout, heads, kbar)
    H, NB, n_tiles = pooled.num_heads, layout.num_blocks, pooled.num_tiles
    out = torch.full((H, NB, per_block), -1, dtype=torch.int32, device=q.device)
    if not (H and NB and per_block and n_tiles):
        return out
    n_buckets = triton.cdiv(n_tiles, BUCKET)
    kb = min(per_block, n_buckets)
    split_tiles = triton.cdiv(max(1, split_tiles), BUCKET_TB) * BUCKET_TB
    step = rank_slice_blocks(H, NB, n_tiles)
    bmax = torch.empty(H, step, n_buckets, dtype=torch.float32, device=q.device)
    scores = torch.empty(H, step, n_tiles, dtype=torch.float32, device=q.device)
    for seq, blk0, nb in layout.block_ranges(step):
        pooled.far_scores_into(bmax[:, :nb], scores[:, :nb], seq, blk0, local, sm_scale,
                               split_tiles)
        buckets = torch.topk(bmax[:, :nb], kb, dim=-1, sorted=False).indices  # int64
        rank_far_tiles_into(out[:, blk0:blk0 + nb], buckets, bmax[:, :nb], scores[:, :nb])
    return out


def ranks_block_sparse(num_heads: int, num_blocks: int, num_tiles: int, k_max: int) -> bool:
    """Should :func:`block_sparse_worklist` rank (True) or hold every score (False)?  Rank
    where the score array would pass ``RANK_BYTES`` or the chosen buckets hold under a
    quarter of the tiles: on an H100 with 100 tiles per block, holding was as fast or faster
    at 128K keys (0.88 vs 1.44 ms, a 16K chunk of Qwen2.5-0.5B's shape), ranking faster at
    1M (1.88 vs 4.51 ms in a 64K chunk; Llama-3-8B shape 5.27 vs 15.05 ms)."""
    held = 4 * num_heads * num_blocks * num_tiles
    return held > RANK_BYTES or 4 * max(1, k_max - 1) * BUCKET < num_tiles


def block_sparse_worklist(q: torch.Tensor, kv: KVSource, layout: SeqLayout, heads: torch.Tensor,
                          topk: torch.Tensor, k_max: int, sm_scale: float | None = None,
                          kbar: torch.Tensor | None = None, ranked: bool | None = None
                          ) -> WorkList:
    """Block-Sparse work lists of ``heads``: what :func:`build_block_sparse_worklist` keeps
    from :func:`block_sparse_scores` (the sink and the block's own tiles, then the best
    others up to ``topk[h]``, at most ``k_max`` tiles).  Long sequences (``ranked``, by
    default :func:`ranks_block_sparse`) skip the ``[blocks, tiles]`` score array (at 1M keys
    in a 64K chunk 64 MB per head): the others are ranked like the extra tiles
    (:func:`extra_block_tiles` with no local band: the tiles before the block's own, best
    first), holding at most ``RANK_BYTES``.  ``kbar``: the batch's :func:`pool_keys`, if
    already computed."""
    H, NB = heads.numel(), layout.num_blocks
    n_tiles = triton.cdiv(layout.max_kv_len, BLOCK_N)
    if ranked is None:
        ranked = ranks_block_sparse(H, NB, n_tiles, k_max)
    if not ranked:
        return build_block_sparse_worklist(
            block_sparse_scores(q, kv, layout, heads, sm_scale, kbar=kbar), topk, k_max)
    k = max(1, k_max)  # not capped by the length: the ranking compiles per k_max only
    best = extra_block_tiles(q, kv, layout, heads, block_sparse_ranked(k), 0, sm_scale,
                             kbar=kbar)
    # the always-kept tiles of every block: sink, first and last row's tiles (-1: repeated)
    own0 = layout.block_first_pos() // BLOCK_N
    own1 = layout.block_last_pos() // BLOCK_N
    none = torch.full_like(own0, -1)
    forced = torch.stack([torch.zeros_like(own0), torch.where(own0 != 0, own0, none),
                          torch.where(own1 != own0, own1, none)], dim=-1)  # [NB, 3]
    n_forced = (forced >= 0).sum(-1)
    limit = topk.to(device=q.device, dtype=torch.long).clamp_min(MIN_BLOCKS).clamp_max(k)
    n_other = (limit[:, None] - n_forced[None, :]).clamp_min(0)  # [H, NB]
    rank = torch.arange(best.shape[2], device=q.device)
    others = torch.where((rank < n_other[..., None]) & (best >= 0), best.long() // BLOCK_N, -1)
    return tile_worklist(torch.cat([forced.expand(H, NB, 3), others], dim=-1))


def build_block_sparse_worklist(scores: torch.Tensor, topk: torch.Tensor, k_max: int) -> WorkList:
    """Keep the ``topk[h]`` best key tiles of every (head, block); absolute chunk lists."""
    k = max(1, min(k_max, scores.shape[2]))
    topk = topk.to(device=scores.device, dtype=torch.long).clamp_min(MIN_BLOCKS)
    val, idx = torch.topk(scores, k, dim=-1, sorted=True)
    rank = torch.arange(k, device=scores.device)
    keep = (rank[None, None, :] < topk[:, None, None]) & (val > float("-inf"))
    return tile_worklist(torch.where(keep, idx, -1))
