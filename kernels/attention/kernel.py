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

from ..layout import BLOCK_M, BLOCK_N, KVSource, SeqLayout, kv_row_offsets
from ..worklist import WorkList

LOG2E = 1.4426950408889634


def dot_precision(dtype: torch.dtype) -> str:
    """fp32 inputs (tests) get exact fp32 products instead of Triton's default tf32."""
    return "ieee" if dtype == torch.float32 else "tf32"


@triton.jit
def _attend_tile(acc, m_i, l_i, q, b, kvh, k_idx, k_valid, q_pos, qk_scale,
                 K, V, stride_kp, stride_kt, stride_kh, stride_vh, BT, stride_bt, KV_START,
                 HEAD_DIM: tl.constexpr, PAGE: tl.constexpr, PAGED: tl.constexpr,
                 PREC: tl.constexpr, MASK: tl.constexpr):
    """One online-softmax step over the keys ``k_idx`` (masked by ``k_valid``, causal).

    K and V share their page/token strides (vLLM's views of one cache), so the row offsets
    and block-table lookups are computed once for both.
    """
    d = tl.arange(0, HEAD_DIM)
    off = kv_row_offsets(b, k_idx, k_valid, BT, stride_bt, KV_START, stride_kp, stride_kt,
                         PAGE, PAGED)
    k = tl.load(K + kvh * stride_kh + off[:, None] + d[None, :], mask=k_valid[:, None],
                other=0.0)
    v = tl.load(V + kvh * stride_vh + off[:, None] + d[None, :], mask=k_valid[:, None],
                other=0.0)
    s = tl.dot(q, tl.trans(k), input_precision=PREC) * qk_scale
    if MASK:
        keep = k_valid[None, :] & (k_idx[None, :] <= q_pos[:, None])
        s = tl.where(keep, s, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(s, axis=1))
    m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
    p = tl.math.exp2(s - m_safe[:, None])
    alpha = tl.math.exp2(m_i - m_safe)
    l_i = l_i * alpha + tl.sum(p, axis=1)
    acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PREC)
    return acc, m_new, l_i


@triton.jit
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
    WRITE_LSE: tl.constexpr, PREC: tl.constexpr, MASK: tl.constexpr,
):
    blk = NB - 1 - tl.program_id(0)
    h = tl.program_id(1)
    kvh = h // GROUP
    b = tl.load(BLK_SEQ + blk)
    m = tl.load(BLK_M + blk)
    q_start = tl.load(Q_START + b)
    q_len = tl.load(Q_LEN + b)
    kv_len = tl.load(KV_LEN + b)
    rows = m * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < q_len
    q_pos = kv_len - q_len + rows
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
    # an iteration takes CPT chunks of CHUNK keys: key t of the tile is key t % CHUNK of
    # chunk j + t // CHUNK
    offs_t = tl.arange(0, CPT * CHUNK)
    sub = offs_t // CHUNK
    within = offs_t % CHUNK

    for j in range(0, chunk_cnt, CPT):
        c_ok = j + sub < chunk_cnt
        cp = CHUNKS + 2 * (chunk_ptr + j + sub).to(tl.int64)
        start = tl.load(cp, mask=c_ok, other=0)
        lo = tl.load(cp + 1, mask=c_ok, other=0)
        rel = start + within
        k_idx = base + rel
        k_valid = c_ok & (rel >= lo) & (k_idx >= 0) & (k_idx < kv_len)
        acc, m_i, l_i = _attend_tile(
            acc, m_i, l_i, q, b, kvh, k_idx, k_valid, q_pos, qk_scale,
            K, V, stride_kp, stride_kt, stride_kh, stride_vh, BT, stride_bt, KV_START,
            HEAD_DIM, PAGE, PAGED, PREC, MASK)

    for c0 in range(0, col_cnt, CPT * CHUNK):
        c_ok = c0 + offs_t < col_cnt
        k_idx = tl.load(COLS + col_ptr.to(tl.int64) + c0 + offs_t, mask=c_ok, other=0)
        k_valid = c_ok & (k_idx >= 0) & (k_idx < kv_len)
        acc, m_i, l_i = _attend_tile(
            acc, m_i, l_i, q, b, kvh, k_idx, k_valid, q_pos, qk_scale,
            K, V, stride_kp, stride_kt, stride_kh, stride_vh, BT, stride_bt, KV_START,
            HEAD_DIM, PAGE, PAGED, PREC, MASK)

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
    chunks_per_iter: int = 1,
    _mask: bool = True,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Attention of ``q`` (``[tokens, heads, D]``) over the keys its work list names.

    Returns the output (``[tokens, heads, D]``, in ``q``'s dtype; rows outside the layout's
    query rows are left untouched) and, with ``return_lse``, the natural-log log-sum-exp
    ``[heads, tokens]`` in fp32 (``-inf`` for a row that saw no key).
    ``chunks_per_iter`` (1 or 2) sets how many 64-key chunks one loop step computes;
    ``_mask=False`` skips all masking and is only for timing experiments.
    """
    num_tokens, num_heads, head_dim = q.shape
    if head_dim not in (64, 128) or kv.head_dim != head_dim:
        raise ValueError(f"head_dim must be 64 or 128 for q and k/v, got {head_dim}/{kv.head_dim}")
    if num_heads % kv.num_kv_heads:
        raise ValueError(f"{num_heads} query heads are not a multiple of {kv.num_kv_heads} KV heads")
    if worklist.desc.shape[:2] != (num_heads, layout.num_blocks):
        raise ValueError(f"work list is {tuple(worklist.desc.shape[:2])}, expected "
                         f"({num_heads}, {layout.num_blocks})")
    if sm_scale is None:
        sm_scale = 1.0 / math.sqrt(head_dim)
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
            PREC=dot_precision(q.dtype), MASK=_mask,
            num_warps=num_warps, num_stages=num_stages,
        )
    return (out, lse) if return_lse else out
