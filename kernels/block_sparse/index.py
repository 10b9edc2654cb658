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
    hs = tl.program_id(1)
    kvh = tl.load(HEADS + hs) // GROUP
    i = tl.program_id(0) * BG + tl.arange(0, BG)
    i_ok = i < NB
    m = tl.load(BLK_M + BLK0 + i, mask=i_ok, other=0)
    q_len = tl.load(Q_LEN + SEQ)
    kv_len = tl.load(KV_LEN + SEQ)
    first = kv_len - q_len + m * BLOCK_M
    last = tl.minimum(first + BLOCK_M - 1, kv_len - 1)
    d = tl.arange(0, HEAD_DIM)
    q_bar = tl.load(QBAR + hs.to(tl.int64) * stride_bh + (BLK0 + i)[:, None] * HEAD_DIM
                    + d[None, :], mask=i_ok[:, None], other=0.0)
    kbar = KBAR + SEQ.to(tl.int64) * stride_kb + kvh * stride_kh
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
def _rank_keys(s, t):
    """int64 keys that order like ``(s, t)``: the float's bits made monotone in the high half
    (a negative float's magnitude bits flipped), the tile index in the low half."""
    bits = s.to(tl.int32, bitcast=True)
    key = tl.where(bits >= 0, bits, bits ^ 0x7FFFFFFF)
    return (key.to(tl.int64) << 32) | t.to(tl.int64)


@triton.jit(do_not_specialize=["stride_bh", "stride_kb", "stride_kh", "stride_ch", "SEQ", "BLK0",
                               "NB", "N_TILES", "SPLITS", "SPLIT_TILES", "LOCAL"])
def _extra_topk_kernel(
    QBAR, stride_bh, HEADS, KBAR, stride_kb, stride_kh, sm_scale, Q_LEN, KV_LEN, BLK_M,
    CAND, stride_ch, SEQ, BLK0, NB, N_TILES, SPLITS, SPLIT_TILES, LOCAL,
    GROUP: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr, BG: tl.constexpr, K: tl.constexpr,
):
    """The ``K`` best far key tiles of ``BG`` blocks of sequence ``SEQ`` among the tiles of
    key split ``program_id(2)``, as :func:`_rank_keys` (``INT64_MIN`` where fewer exist):
    ``CAND[head, block - BLK0, split, :K]``, best first.

    Far: not the sink, and ending at least ``LOCAL`` keys before the block's first row (so
    never the block's own tiles).  The scores stay in registers: every ``K`` tiles are one
    ``tl.dot`` whose ranked keys merge into the running best by a bitonic top-k, skipped
    when none beats the running ``K``-th."""
    hs = tl.program_id(1)
    split = tl.program_id(2)
    kvh = tl.load(HEADS + hs) // GROUP
    i = tl.program_id(0) * BG + tl.arange(0, BG)
    i_ok = i < NB
    m = tl.load(BLK_M + BLK0 + i, mask=i_ok, other=0)
    q_len = tl.load(Q_LEN + SEQ)
    kv_len = tl.load(KV_LEN + SEQ)
    # far tiles of block i: 1 <= t < far_end[i]
    far_end = tl.where(i_ok, tl.maximum(kv_len - q_len + m * BLOCK_M - LOCAL, 0) // BLOCK_N, 0)
    d = tl.arange(0, HEAD_DIM)
    q_bar = tl.load(QBAR + hs.to(tl.int64) * stride_bh + (BLK0 + i)[:, None] * HEAD_DIM
                    + d[None, :], mask=i_ok[:, None], other=0.0)
    kbar = KBAR + SEQ.to(tl.int64) * stride_kb + kvh * stride_kh
    none = tl.full([BG, K], -9223372036854775808, tl.int64)
    best = none
    lo = split * SPLIT_TILES
    hi = tl.minimum(lo + SPLIT_TILES, tl.minimum(tl.max(far_end, axis=0), N_TILES))
    for t0 in range(lo, hi, K):
        t = t0 + tl.arange(0, K)
        kt = tl.load(kbar + t[:, None] * HEAD_DIM + d[None, :], mask=(t < hi)[:, None], other=0.0)
        s = tl.dot(q_bar, tl.trans(kt), input_precision="ieee") * sm_scale
        far = (t[None, :] >= 1) & (t[None, :] < far_end[:, None]) & (t[None, :] < hi)
        new = tl.where(far, _rank_keys(s, t[None, :]), none)
        kth = tl.min(best, axis=1)
        if tl.sum((new > kth[:, None]).to(tl.int32)) > 0:
            both = tl.reshape(tl.join(best, new), [BG, 2 * K])
            best = tl.topk(both, K)
    rank = tl.arange(0, K)
    out = (CAND + hs.to(tl.int64) * stride_ch + (i.to(tl.int64) * SPLITS + split)[:, None] * K
           + rank[None, :])
    tl.store(out, best, mask=i_ok[:, None])


def block_sparse_scores(q: torch.Tensor, kv: KVSource, layout: SeqLayout, heads: torch.Tensor,
                        sm_scale: float | None = None) -> torch.Tensor:
    """Pooled-query x pooled-key score of every (head, block, key tile): ``[H, NB, tiles]``.

    Non-causal tiles are ``-inf``; the sink and diagonal tiles are ``+inf`` (always kept).
    """
    pooled = PooledBlocks.build(q, kv, layout, heads)
    scores = torch.empty(pooled.num_heads, layout.num_blocks, pooled.num_tiles,
                         dtype=torch.float32, device=q.device)
    for seq, blk0, nb in pooled.block_ranges(layout.num_blocks):
        pooled.scores_into(scores[:, blk0:blk0 + nb], seq, blk0, sm_scale)
    return scores


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
    def build(q: torch.Tensor, kv: KVSource, layout: SeqLayout, heads: torch.Tensor
              ) -> "PooledBlocks":
        num_heads, head_dim = q.shape[1], q.shape[2]
        heads = heads.to(device=q.device, dtype=torch.int32)
        qbar = torch.empty(heads.numel(), layout.num_blocks, head_dim, dtype=torch.float32,
                           device=q.device)
        if layout.num_blocks and heads.numel():
            _pool_queries_kernel[(layout.num_blocks, heads.numel())](
                q, q.stride(0), q.stride(1), heads, layout.q_start, layout.q_len,
                layout.kv_len, layout.blk_seq, layout.blk_m, qbar, qbar.stride(0),
                HEAD_DIM=head_dim, BLOCK_M=BLOCK_M, num_warps=4)
        n_tiles = triton.cdiv(layout.max_kv_len, BLOCK_N)
        kbar = torch.zeros(layout.num_seqs, kv.num_kv_heads, n_tiles, head_dim,
                           dtype=torch.float32, device=q.device)
        args = kv.kernel_args()
        _pool_keys_kernel[(n_tiles, kv.num_kv_heads, layout.num_seqs)](
            args["K"], args["stride_kp"], args["stride_kt"], args["stride_kh"], args["BT"],
            args["stride_bt"], args["KV_START"], layout.kv_len, kbar, kbar.stride(0),
            kbar.stride(1), n_tiles, HEAD_DIM=head_dim, BLOCK_N=BLOCK_N, PAGE=args["PAGE"],
            PAGED=args["PAGED"], num_warps=4)
        return PooledBlocks(qbar, kbar, heads, layout, num_heads // kv.num_kv_heads)

    def block_ranges(self, step: int) -> list[tuple[int, int, int]]:
        """``(sequence, first block, blocks)`` ranges of at most ``step`` blocks, each
        inside one sequence."""
        out, blk0 = [], 0
        for seq, q_len in enumerate(self.layout.q_lens_host):
            n = triton.cdiv(q_len, BLOCK_M)
            out += [(seq, blk0 + j, min(step, n - j)) for j in range(0, n, step)]
            blk0 += n
        return out

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

    def far_topk_into(self, cand: torch.Tensor, seq: int, blk0: int, local: int,
                      sm_scale: float | None) -> None:
        """Each key split's best far tiles of blocks ``blk0 + [0, cand.shape[1])`` (all of
        sequence ``seq``) as ranked keys: ``cand[head, block, split, :K]``."""
        H, nb, splits, k = cand.shape
        if not (nb and H):
            return
        split_tiles = triton.cdiv(triton.cdiv(self.num_tiles, splits), k) * k
        _extra_topk_kernel[(triton.cdiv(nb, SCORE_BLOCKS), H, splits)](
            self.qbar, self.qbar.stride(0), self.heads, self.kbar, self.kbar.stride(0),
            self.kbar.stride(1), self._scale(sm_scale), self.layout.q_len, self.layout.kv_len,
            self.layout.blk_m, cand, cand.stride(0), seq, blk0, nb, self.num_tiles, splits,
            split_tiles, local,
            GROUP=self.group, HEAD_DIM=self.head_dim, BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N,
            BG=SCORE_BLOCKS, K=k, num_warps=4)

    @property
    def head_dim(self) -> int:
        return self.qbar.shape[2]

    def _scale(self, sm_scale: float | None) -> float:
        return 1.0 / math.sqrt(self.head_dim) if sm_scale is None else sm_scale


SCORE_BLOCKS = 16  # query blocks per program of the scores and top-k kernels (one tl.dot each)
SPLIT_TILES = 512  # key tiles per program of the top-k kernel, at least (more splits, more
#                    parallel programs, more candidates for the final merge)
CAND_BYTES = 64 << 20  # candidates held at once by extra_block_tiles (fewer splits past it)
INT64_MIN = -(1 << 63)  # a ranked key slot with no tile


def extra_block_tiles(q: torch.Tensor, kv: KVSource, layout: SeqLayout, heads: torch.Tensor,
                      per_block: int, local: int, sm_scale: float | None = None,
                      split_tiles: int = SPLIT_TILES) -> torch.Tensor:
    """The ``per_block`` best far key tiles of every (head, block) by pooled score:
    ``[len(heads), NB, per_block]`` int32 absolute tile starts, ``-1`` where fewer exist.

    The sink tile, the block's own tiles and tiles ending within ``local`` keys before it are
    left out (a Vertical-Slash list holds them).  Fixed shapes, no host sync.  The scores
    never reach memory: each program ranks a key split's tiles for 16 blocks in registers and
    keeps its best (``_extra_topk_kernel``), and one ``torch.topk`` merges the splits.  (Held
    as ``[blocks, tiles]`` scores and ranked by ``torch.topk``, a 64K-row chunk at 1M keys
    took 15.9 ms per layer at Qwen2.5-0.5B's shape on an H100, 11.2 of them in a scores
    kernel with too few programs.)
    """
    pooled = PooledBlocks.build(q, kv, layout, heads)
    H, NB, n_tiles = pooled.num_heads, layout.num_blocks, pooled.num_tiles
    k = max(16, triton.next_power_of_2(per_block))  # tl.topk width; tl.dot needs >= 16
    splits = max(1, min(triton.cdiv(n_tiles, split_tiles),
                        CAND_BYTES // (8 * k * max(1, H * NB))))
    cand = torch.empty(H, NB, splits, k, dtype=torch.int64, device=q.device)
    for seq, blk0, nb in pooled.block_ranges(NB):
        pooled.far_topk_into(cand[:, blk0:blk0 + nb], seq, blk0, local, sm_scale)
    best = cand.view(H, NB, splits * k)
    if splits > 1:
        best = torch.topk(best, k, dim=-1, sorted=True).values
    best = best[..., :per_block]
    tiles = torch.where(best == INT64_MIN, torch.full_like(best, -1),
                        (best & 0xFFFFFFFF) * BLOCK_N)
    return tiles.to(torch.int32)


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
