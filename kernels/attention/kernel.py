"""Sparse FlashAttention forward over work lists (Triton).

One program computes one 64-row query block of one query head: it walks the block's key
chunks (64 consecutive keys each, from a relative or absolute list) and then its gathered
key columns, 64 at a time, with an online softmax in fp32.  Keys come straight from vLLM's
paged cache through the block table (or from contiguous tensors); query head ``h`` reads KV
head ``h // group`` (native GQA, K/V never repeated).  Programs run heaviest-block-first
(late blocks of long sequences hold the most work).
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from ..layout import BLOCK_M, BLOCK_N, KVSource, SeqLayout, kv_row_offsets, query_block
from ..worklist import WorkList

LOG2E = 1.4426950408889634


def dot_precision(dtype: torch.dtype) -> str:
    """fp32 inputs (tests) get exact fp32 products instead of Triton's default tf32."""
    return "ieee" if dtype == torch.float32 else "tf32"


@triton.jit
def _attend_tile(acc, m_i, l_i, q, kvh, off, keys, valid, need_mask, q_pos, qk_scale,
                 K, V, stride_kh, stride_vh, HEAD_DIM: tl.constexpr, PREC: tl.constexpr):
    """One online-softmax step over one tile of keys at row offsets ``off``.

    Loads are never masked (the callers clamp indices into the sequence, so every load
    reads a real key).  Keys that are not ``valid`` or lie past the causal diagonal leave
    the scores only when ``need_mask`` is set: most tiles lie wholly below the diagonal and
    inside the sequence, and for them the per-element mask, the dearest part of a tile after
    the two matrix products, is skipped.  The softmax scale is folded into the exponent.
    """
    d = tl.arange(0, HEAD_DIM)
    k = tl.load(K + kvh * stride_kh + off[:, None] + d[None, :])
    v = tl.load(V + kvh * stride_vh + off[:, None] + d[None, :])
    s = tl.dot(q, tl.trans(k), input_precision=PREC)
    if need_mask:
        keep = valid[None, :] & (keys[None, :] <= q_pos[:, None])
        s = tl.where(keep, s, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(s, axis=1) * qk_scale)
    m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
    p = tl.math.exp2(s * qk_scale - m_safe[:, None])
    alpha = tl.math.exp2(m_i - m_safe)
    l_i = l_i * alpha + tl.sum(p, axis=1)
    acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PREC)
    return acc, m_new, l_i


@triton.jit
def _chunk_meta(CHUNKS, idx, ok, base, kv_len, first_pos, b, BT, stride_bt,
                CHUNK: tl.constexpr, PAGE: tl.constexpr, PAGED: tl.constexpr):
    """Scalars of chunk ``idx``: first key, masking floor, need-mask flag and, when pages
    hold whole chunks (``PAGE % CHUNK == 0``, e.g. vLLM ``--block-size 64``), the two pages
    its 64 consecutive keys can span (two scalar block-table loads instead of 64)."""
    cp = CHUNKS + 2 * idx.to(tl.int64)
    start = tl.load(cp, mask=ok, other=0)
    lo = tl.load(cp + 1, mask=ok, other=0)
    k0 = base + start
    floor = tl.where(ok, base + tl.maximum(lo, start), kv_len)  # a missing chunk keeps nothing
    need = (~ok) | (lo > start) | (k0 < 0) | (k0 + CHUNK - 1 > first_pos) | (k0 + CHUNK > kv_len)
    first = tl.minimum(tl.maximum(k0, 0), kv_len - 1) // PAGE
    page_a = first
    page_b = first
    if PAGED and PAGE % CHUNK == 0:
        bt = BT + b.to(tl.int64) * stride_bt
        page_a = tl.load(bt + first)
        page_b = tl.load(bt + first + 1, mask=(first + 1) * PAGE < kv_len, other=0)
    return k0, floor, need, first, page_a, page_b


@triton.jit
def _tile_offsets(keys, kv_len, b, first, page_a, page_b, BT, stride_bt, KV_START, stride_kp,
                  stride_kt, CHUNK: tl.constexpr, PAGE: tl.constexpr, PAGED: tl.constexpr):
    """Element offsets of the rows of ``keys``, clamped into the sequence (loads unmasked)."""
    k_load = tl.minimum(tl.maximum(keys, 0), kv_len - 1)
    if PAGED and PAGE % CHUNK == 0:
        page = tl.where(k_load // PAGE == first, page_a, page_b)
        off = page.to(tl.int64) * stride_kp + (k_load % PAGE).to(tl.int64) * stride_kt
    else:
        off = kv_row_offsets(b, k_load, k_load >= 0, BT, stride_bt, KV_START, stride_kp,
                             stride_kt, PAGE, PAGED)
    return off


@triton.jit(do_not_specialize=["stride_lh", "stride_dh", "NB", "stride_bt"])
def _sparse_attn_fwd_kernel(
    Q, O, LSE, qk_scale,
    stride_qt, stride_qh, stride_ot, stride_oh, stride_lh,
    K, V, stride_kp, stride_kt, stride_kh, stride_vh,
    BT, stride_bt, KV_START,
    Q_START, Q_LEN, KV_LEN, BLK_SEQ, BLK_M,
    DESC, stride_dh, stride_db, CHUNKS, COLS,
    NB,
    GROUP: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr,
    CHUNK: tl.constexpr, CPT: tl.constexpr, PAGE: tl.constexpr, PAGED: tl.constexpr,
    WRITE_LSE: tl.constexpr, PREC: tl.constexpr, WS: tl.constexpr,
):
    blk = NB - 1 - tl.program_id(0)
    h = tl.program_id(1)
    kvh = h // GROUP
    b, m, q_start, q_len, kv_len, rows, row_ok = query_block(
        blk, BLK_SEQ, BLK_M, Q_START, Q_LEN, KV_LEN, BLOCK_M)
    q_pos = kv_len - q_len + rows
    first_pos = kv_len - q_len + m * BLOCK_M  # keys up to here are visible to every row
    d = tl.arange(0, HEAD_DIM)
    q_rows = (q_start + rows).to(tl.int64)
    q = tl.load(Q + q_rows[:, None] * stride_qt + h * stride_qh + d[None, :],
                mask=row_ok[:, None], other=0.0)

    desc = DESC + h.to(tl.int64) * stride_dh + blk.to(tl.int64) * stride_db
    chunk_ptr = tl.load(desc + 0)
    chunk_cnt = tl.load(desc + 1)
    base = tl.load(desc + 2)
    col_ptr = tl.load(desc + 3)
    col_cnt = tl.load(desc + 4)

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)

    # a loop step takes CPT chunks: key t of the tile is key t % CHUNK of chunk j + t // CHUNK
    offs_t = tl.arange(0, CPT * CHUNK)
    within = offs_t % CHUNK
    second = offs_t >= CHUNK
    # chunk metadata (and its block-table pages) for step j is loaded during step j - 1: the
    # key addresses of a step depend on these scalar loads, which the pipeliner cannot hide
    meta = _chunk_meta(CHUNKS, chunk_ptr, 0 < chunk_cnt, base, kv_len, first_pos, b, BT,
                       stride_bt, CHUNK, PAGE, PAGED)
    meta_1 = meta
    if CPT == 2:
        meta_1 = _chunk_meta(CHUNKS, chunk_ptr + 1, 1 < chunk_cnt, base, kv_len, first_pos, b,
                             BT, stride_bt, CHUNK, PAGE, PAGED)
    for j in tl.range(0, chunk_cnt, CPT, warp_specialize=WS):
        k0, floor, need, first, page_a, page_b = meta
        meta = _chunk_meta(CHUNKS, chunk_ptr + j + CPT, j + CPT < chunk_cnt, base, kv_len,
                           first_pos, b, BT, stride_bt, CHUNK, PAGE, PAGED)
        if CPT == 2:
            k0_1, floor_1, need_1, first_1, page_a1, page_b1 = meta_1
            meta_1 = _chunk_meta(CHUNKS, chunk_ptr + j + CPT + 1, j + CPT + 1 < chunk_cnt,
                                 base, kv_len, first_pos, b, BT, stride_bt, CHUNK, PAGE, PAGED)
            keys = tl.where(second, k0_1, k0) + within
            valid = (keys >= tl.where(second, floor_1, floor)) & (keys >= 0) & (keys < kv_len)
            off = _tile_offsets(keys, kv_len, b, tl.where(second, first_1, first),
                                tl.where(second, page_a1, page_a),
                                tl.where(second, page_b1, page_b), BT, stride_bt, KV_START,
                                stride_kp, stride_kt, CHUNK, PAGE, PAGED)
            need = need | need_1
        else:
            keys = k0 + within
            valid = (keys >= floor) & (keys >= 0) & (keys < kv_len)
            off = _tile_offsets(keys, kv_len, b, first, page_a, page_b, BT, stride_bt,
                                KV_START, stride_kp, stride_kt, CHUNK, PAGE, PAGED)
        acc, m_i, l_i = _attend_tile(acc, m_i, l_i, q, kvh, off, keys, valid, need, q_pos,
                                     qk_scale, K, V, stride_kh, stride_vh, HEAD_DIM, PREC)

    for c0 in range(0, col_cnt, CPT * CHUNK):
        c_ok = c0 + offs_t < col_cnt
        keys = tl.load(COLS + col_ptr.to(tl.int64) + c0 + offs_t, mask=c_ok, other=0)
        # columns ascend: the tile needs masking only if partial or reaching the block rows
        full = c0 + CPT * CHUNK <= col_cnt
        top = tl.load(COLS + col_ptr.to(tl.int64) + tl.minimum(c0 + CPT * CHUNK, col_cnt) - 1)
        need = (~full) | (top > first_pos)
        valid = c_ok & (keys >= 0) & (keys < kv_len)
        k_load = tl.minimum(tl.maximum(keys, 0), kv_len - 1)
        off = kv_row_offsets(b, k_load, k_load >= 0, BT, stride_bt, KV_START, stride_kp,
                             stride_kt, PAGE, PAGED)
        acc, m_i, l_i = _attend_tile(acc, m_i, l_i, q, kvh, off, keys, valid, need, q_pos,
                                     qk_scale, K, V, stride_kh, stride_vh, HEAD_DIM, PREC)

    has_keys = l_i > 0.0
    out = acc / tl.where(has_keys, l_i, 1.0)[:, None]
    tl.store(O + q_rows[:, None] * stride_ot + h * stride_oh + d[None, :],
             out.to(O.dtype.element_ty), mask=row_ok[:, None])
    if WRITE_LSE:
        lse = tl.where(has_keys, (m_i + tl.math.log2(l_i)) / 1.4426950408889634,
                       float("-inf"))
        tl.store(LSE + h.to(tl.int64) * stride_lh + q_start + rows, lse, mask=row_ok)


def _kv_args(kv: KVSource) -> dict:
    args = kv.kernel_args()
    if (args["stride_vp"], args["stride_vt"]) != (args["stride_kp"], args["stride_kt"]):
        raise ValueError("key and value must share page and token strides")
    del args["stride_vp"], args["stride_vt"]
    return args


def sparse_attention(
    q: torch.Tensor,
    kv: KVSource,
    layout: SeqLayout,
    worklist: WorkList,
    sm_scale: float | None = None,
    out: torch.Tensor | None = None,
    return_lse: bool = False,
    num_warps: int = 4,
    num_stages: int = 3,
    chunks_per_iter: int | None = None,
    warp_specialize: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Attention of ``q`` (``[tokens, heads, D]``) over the keys its work list names.

    Returns the output (``[tokens, heads, D]``, in ``q``'s dtype; rows outside the layout's
    query rows are left untouched) and, with ``return_lse``, the natural-log log-sum-exp
    ``[heads, tokens]`` in fp32 (``-inf`` for a row that saw no key).
    ``chunks_per_iter`` (1 or 2) sets how many 64-key chunks one loop step computes; by
    default 2 for head_dim 64 (a 64x128 score tile keeps the tensor cores busy) and 1 for
    head_dim 128 (two chunks would spill registers).
    """
    num_tokens, num_heads, head_dim = q.shape
    if head_dim not in (64, 128) or kv.head_dim != head_dim:
        raise ValueError(f"head_dim must be 64 or 128 for q and k/v, got {head_dim}/{kv.head_dim}")
    if num_heads % kv.num_kv_heads:
        raise ValueError(f"{num_heads} query heads are not a multiple of {kv.num_kv_heads} KV heads")
    worklist.check_shape(num_heads, layout)
    if sm_scale is None:
        sm_scale = 1.0 / math.sqrt(head_dim)
    if chunks_per_iter is None:
        chunks_per_iter = 2 if head_dim == 64 else 1

    if chunks_per_iter not in (1, 2):
        raise ValueError(f"chunks_per_iter must be 1 or 2, got {chunks_per_iter}")
    if out is None:
        out = torch.empty_like(q)
    lse = (torch.empty(num_heads, num_tokens, dtype=torch.float32, device=q.device)
           if return_lse else out)
    if layout.num_blocks:
        grid = (layout.num_blocks, num_heads)
        _sparse_attn_fwd_kernel[grid](
            q, out, lse, sm_scale * LOG2E,
            q.stride(0), q.stride(1), out.stride(0), out.stride(1),
            lse.stride(0) if return_lse else 0,
            **_kv_args(kv),
            Q_START=layout.q_start, Q_LEN=layout.q_len, KV_LEN=layout.kv_len,
            BLK_SEQ=layout.blk_seq, BLK_M=layout.blk_m,
            DESC=worklist.desc, stride_dh=worklist.desc.stride(0),
            stride_db=worklist.desc.stride(1), CHUNKS=worklist.chunks, COLS=worklist.cols,
            NB=layout.num_blocks, GROUP=num_heads // kv.num_kv_heads, HEAD_DIM=head_dim,
            BLOCK_M=BLOCK_M, CHUNK=BLOCK_N, CPT=chunks_per_iter, WRITE_LSE=return_lse,
            PREC=dot_precision(q.dtype), WS=warp_specialize,
            num_warps=num_warps, num_stages=num_stages,
        )
    return (out, lse) if return_lse else out
