"""Sparse attention on FlashAttention-3: page lists for the key tiles, Triton for the columns.

On an H100 the Triton kernel of :mod:`..attention` computes a key tile at 0.55-0.59 of
FA3's speed, while FA3 itself runs the per-(head, row group) page lists of :mod:`.index` at
0.85-0.91 of its dense speed (``benchmarks/probe_fa3_pages.py``, dense lists, 128K keys).
So the tiles go to FA3, and a small Triton pass continues each row's online softmax from
FA3's output and log-sum-exp over the work list's gathered columns (the few not already in
the row's pages), then writes the final rows in the query tensor's order.

FA3 (``vllm.vllm_flash_attn``) is looked up at call time; tests pass an emulation.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
import triton
import triton.language as tl

from ..attention.kernel import (LOG2E, _attend_tile, _chunk_meta, _kv_args, _tile_offsets,
                                dot_precision)
from ..layout import BLOCK_M, BLOCK_N, KVSource, SeqLayout, kv_row_offsets, query_block
from ..worklist import WorkList
from .index import (SUB, TABLE_BYTES, PageGeometry, compact_pages, group_block, group_rows,
                    long_run_flags, mark_pages, short_chunk_index)


def fa3_varlen() -> Callable:
    """vLLM's FlashAttention varlen entry point (FA3 on Hopper)."""
    from vllm.vllm_flash_attn import flash_attn_varlen_func
    return flash_attn_varlen_func


def hnd_cache_ok(kv_cache: torch.Tensor, head_dim: int) -> bool:
    """Is ``kv_cache`` vLLM's packed cache in HND order, ``[pages, kv_heads, page, 2 * D]``
    contiguous, with pages of a multiple of 16 keys?  (The page lists need it.)"""
    return (kv_cache.dim() == 4 and kv_cache.shape[-1] == 2 * head_dim
            and kv_cache.shape[2] % SUB == 0 and kv_cache.is_contiguous())


@triton.jit
def _attend_uncovered(acc, m_i, l_i, q, kvh, keys, inside, bits, b, kv_len, q_pos, qk_scale,
                      K, V, stride_kp, stride_kt, stride_kh, stride_vh, BT, stride_bt,
                      KV_START, HEAD_DIM: tl.constexpr, PAGE: tl.constexpr,
                      PAGED: tl.constexpr, PREC: tl.constexpr, SUB_: tl.constexpr):
    """One online-softmax step over 64 gathered ``keys``: those ``inside`` whose sub-page the
    row group's FA3 pages do not hold (``bits``), so no key is counted twice."""
    covered = tl.load(bits + keys // SUB_, mask=inside, other=1)
    k_load = tl.minimum(tl.maximum(keys, 0), kv_len - 1)
    off = kv_row_offsets(b, k_load, k_load >= 0, BT, stride_bt, KV_START, stride_kp,
                         stride_kt, PAGE, PAGED)
    return _attend_tile(acc, m_i, l_i, q, kvh, off, keys, inside & (covered == 0),
                        kv_len > 0, q_pos, qk_scale, K, V, stride_kh, stride_vh, HEAD_DIM,
                        PREC)


@triton.jit(do_not_specialize=["t0", "stride_bits", "stride_plane", "stride_bt", "stride_dh",
                               "row0", "NG", "N"])
def _column_pass_kernel(
    Q, O, stride_qt, stride_qh, stride_ot, stride_oh, OP, LSE, OPB, LSEB, t0, BITS,
    stride_bits, stride_plane,
    K, V, stride_kp, stride_kt, stride_kh, stride_vh, BT, stride_bt, KV_START,
    DESC, stride_dh, stride_db, CHUNKS, SHORT_IDX, SHORT_BEFORE, COLS,
    G_BLK0, G_NBLK, SEQ_ROW0, Q_START, Q_LEN, KV_LEN, BLK_SEQ, BLK_M,
    row0, NG, N, qk_scale,
    GROUP: tl.constexpr, HEAD_DIM: tl.constexpr, BPG: tl.constexpr, PAGE: tl.constexpr,
    PAGED: tl.constexpr, PREC: tl.constexpr, SUB_: tl.constexpr, HAS_FLAGS: tl.constexpr,
    SPLIT: tl.constexpr, BLOCK_M: tl.constexpr, CHUNK: tl.constexpr,
):
    """Block ``j`` of a row's group: resume FA3's softmax state (with ``SPLIT`` merged with
    that of the block's own pages, ``OPB``/``LSEB``), add the chunks of short runs (with
    ``HAS_FLAGS``: the packed list of :func:`.index.short_chunk_index`) and the columns,
    each key only if the pages do not hold it (``BITS``: the bitmap of what the pages hold,
    the block's own with ``SPLIT``)."""
    r_loc, j, h, g = group_block(row0, NG, BPG)
    if j < tl.load(G_NBLK + g):
        blk = tl.load(G_BLK0 + g) + j
        b, m, q_start, q_len, kv_len, rows, row_ok = query_block(
            blk, BLK_SEQ, BLK_M, Q_START, Q_LEN, KV_LEN, BLOCK_M)
        q_pos = kv_len - q_len + rows
        d = tl.arange(0, HEAD_DIM)
        prow = (h * N + tl.load(SEQ_ROW0 + b) + rows - t0).to(tl.int64)
        acc = tl.load(OP + prow[:, None] * HEAD_DIM + d[None, :], mask=row_ok[:, None],
                      other=0.0).to(tl.float32)
        lse = tl.load(LSE + prow, mask=row_ok, other=float("-inf"))
        m_i = lse * 1.4426950408889634  # FA3's state: max = lse (log2 units), sum = 1
        l_i = tl.where(lse == float("-inf"), 0.0, 1.0)
        if SPLIT:  # the block's own pages: FA3's second state, merged (none: lse -inf)
            lse_b = tl.load(LSEB + prow, mask=row_ok, other=float("-inf"))
            m_b = lse_b * 1.4426950408889634
            acc_b = tl.load(OPB + prow[:, None] * HEAD_DIM + d[None, :], mask=row_ok[:, None],
                            other=0.0).to(tl.float32)
            m_new = tl.maximum(m_i, m_b)
            m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
            w_a = tl.exp2(m_i - m_safe)
            w_b = tl.exp2(m_b - m_safe)
            none = m_b == float("-inf")
            acc = acc * w_a[:, None] + tl.where(none[:, None], 0.0, w_b[:, None] * acc_b)
            l_i = l_i * w_a + tl.where(none, 0.0, w_b)
            m_i = m_new
        q_rows = (q_start + rows).to(tl.int64)
        q = tl.load(Q + q_rows[:, None] * stride_qt + h * stride_qh + d[None, :],
                    mask=row_ok[:, None], other=0.0)
        desc = DESC + h.to(tl.int64) * stride_dh + blk.to(tl.int64) * stride_db
        col_ptr = tl.load(desc + 3)
        col_cnt = tl.load(desc + 4)
        kvh = h // GROUP
        bits = BITS + r_loc.to(tl.int64) * stride_bits
        if SPLIT:
            bits += j * stride_plane.to(tl.int64)
        offs = tl.arange(0, 64)
        if HAS_FLAGS:
            # the block's short-run chunks, packed: a chunk's scalars (and its pages) are
            # loaded one step ahead, as in the main kernel, since its key addresses need them
            chunk_ptr = tl.load(desc + 0)
            base = tl.load(desc + 2)
            s0 = tl.load(SHORT_BEFORE + chunk_ptr)
            s1 = tl.load(SHORT_BEFORE + chunk_ptr + tl.load(desc + 1))
            first_pos = kv_len - q_len + m * BLOCK_M
            meta = _chunk_meta(CHUNKS, tl.load(SHORT_IDX + s0), s0 < s1, base, kv_len,
                               first_pos, b, BT, stride_bt, CHUNK, PAGE, PAGED)
            for i in range(s0, s1):
                k0, floor, need, first, page_a, page_b = meta
                meta = _chunk_meta(CHUNKS, tl.load(SHORT_IDX + i + 1), i + 1 < s1, base,
                                   kv_len, first_pos, b, BT, stride_bt, CHUNK, PAGE, PAGED)
                keys = k0 + offs
                inside = (keys >= floor) & (keys >= 0) & (keys < kv_len)
                covered = tl.load(bits + keys // SUB_, mask=inside, other=1)
                off = _tile_offsets(keys, kv_len, b, first, page_a, page_b, BT, stride_bt,
                                    KV_START, stride_kp, stride_kt, CHUNK, PAGE, PAGED)
                acc, m_i, l_i = _attend_tile(acc, m_i, l_i, q, kvh, off, keys,
                                             inside & (covered == 0), kv_len > 0, q_pos,
                                             qk_scale, K, V, stride_kh, stride_vh, HEAD_DIM,
                                             PREC)
        for c0 in range(0, col_cnt, 64):
            c_ok = c0 + offs < col_cnt
            keys = tl.load(COLS + col_ptr.to(tl.int64) + c0 + offs, mask=c_ok, other=-1)
            inside = c_ok & (keys >= 0) & (keys < kv_len)
            acc, m_i, l_i = _attend_uncovered(
                acc, m_i, l_i, q, kvh, keys, inside, bits, b, kv_len, q_pos, qk_scale,
                K, V, stride_kp, stride_kt, stride_kh, stride_vh, BT, stride_bt, KV_START,
                HEAD_DIM, PAGE, PAGED, PREC, SUB_)
        out = acc / tl.where(l_i > 0.0, l_i, 1.0)[:, None]
        tl.store(O + q_rows[:, None] * stride_ot + h * stride_oh + d[None, :],
                 out.to(O.dtype.element_ty), mask=row_ok[:, None])


class _StageClock:
    """Benchmark-only: GPU milliseconds per stage of one call (CUDA events, one sync at the
    end); a no-op unless ``stats`` was given and the tensors are on a GPU."""

    def __init__(self, enabled: bool):
        self.enabled = enabled and torch.cuda.is_available()
        self._marks: list[tuple[str, object]] = []
        self.lap("start")

    def lap(self, stage: str) -> None:
        """Close the stage that ends here (its time runs from the previous lap)."""
        if self.enabled:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            self._marks.append((stage, event))

    def totals(self) -> dict[str, float]:
        if not self.enabled:
            return {}
        self._marks[-1][1].synchronize()
        out: dict[str, float] = {}
        for (_, a), (stage, b) in zip(self._marks, self._marks[1:]):
            out[stage] = out.get(stage, 0.0) + a.elapsed_time(b)
        return out


def page_list_attention(
    q: torch.Tensor,
    kv_cache: torch.Tensor,
    block_table: torch.Tensor,
    layout: SeqLayout,
    worklist: WorkList,
    sm_scale: float | None = None,
    out: torch.Tensor | None = None,
    geometry: PageGeometry | None = None,
    varlen_fn: Callable | None = None,
    table_bytes: int = TABLE_BYTES,
    stats: dict | None = None,
    min_run: int = 1,
    stage_times: bool = True,
    min_blocks: int = 1,
) -> torch.Tensor:
    """Attention of ``q`` (``[tokens, heads, D]``) over (a superset of) its work list's keys.

    ``kv_cache`` is vLLM's packed cache in HND order (``[pages, kv_heads, page, 2 * D]``,
    keys then values in the last dim) and ``block_table`` its ``[B, max_pages]`` rows in the
    layout's sequence order.  Rows outside the layout's query rows are left untouched.
    ``stats`` (benchmarks) receives ``key_rows``: query rows x keys FA3 computes (0-d tensor),
    and on a GPU ``stage_ms``: milliseconds spent gathering rows, building the page tables,
    in FA3 and in the column pass.
    ``min_run`` > 1 leaves chunks in runs shorter than that to the Triton pass, and
    ``min_blocks`` > 1 the sub-pages fewer than that many blocks of a row group list to a
    second FA3 call over each block's own pages (:mod:`.index`).
    ``stage_times=False`` leaves ``stage_ms`` out: its timing waits for the GPU at the end of
    the call, which a serving trace (``key_rows`` only) must not do once per layer.
    """
    num_tokens, num_heads, head_dim = q.shape
    kv_heads = kv_cache.shape[1]
    if not hnd_cache_ok(kv_cache, head_dim):
        raise ValueError(f"page lists need a contiguous HND cache [pages, kv_heads, page, "
                         f"2 * {head_dim}] with 16-key multiples, got {tuple(kv_cache.shape)}")
    worklist.check_shape(num_heads, layout)
    if sm_scale is None:
        sm_scale = 1.0 / math.sqrt(head_dim)
    if out is None:
        out = torch.empty_like(q)
    if block_table.dtype != torch.int32:
        block_table = block_table.to(torch.int32)
    geo = geometry or PageGeometry.build(layout, num_heads, group_rows(head_dim))
    varlen_fn = varlen_fn or fa3_varlen()
    page = kv_cache.shape[2]
    subs = kv_cache.view(-1, SUB, 2 * head_dim)
    k_sub, v_sub = subs[:, :, None, :head_dim], subs[:, :, None, head_dim:]
    kv_args = _kv_args(KVSource.packed(kv_cache, block_table))

    clock = _StageClock(stats is not None and stage_times and q.is_cuda)
    # head-major virtual sequences in one gather instead of an indexing copy and a transposing
    # one (H100, 128K, Llama-3-8B shape: 2.17 vs 2.42 ms of a 119 ms layer)
    q_perm = torch.index_select(q.transpose(0, 1), 1, geo.token_index).view(-1, 1, head_dim)
    o_perm = torch.empty_like(q_perm)
    starts = geo.row_starts_dev
    split = min_blocks > 1
    bpg = geo.rows_per_group // BLOCK_M
    planes = geo.bitmap_planes(min_blocks)
    slices = geo.slices(table_bytes, planes, bpg if split else 0)
    n_max = max(r1 - r0 for r0, r1 in slices)
    bits = torch.empty(n_max, planes, geo.width, dtype=torch.int8, device=q.device)
    table = torch.empty(n_max, geo.width, dtype=torch.int32, device=q.device)
    seqused = torch.empty(n_max, dtype=torch.int32, device=q.device)
    table_b = seqused_b = None
    o_b, lse_b = o_perm, seqused  # unread placeholders without the per-block pages
    cover = bits  # the Triton pass's bitmaps: [rows, blocks, width] with the per-block pages
    if split:
        table_b = torch.empty(n_max * bpg, geo.width, dtype=torch.int32, device=q.device)
        seqused_b = torch.empty(n_max * bpg, dtype=torch.int32, device=q.device)
        cover = torch.empty(n_max, bpg, geo.width, dtype=torch.int8, device=q.device)
        block_starts = geo.block_starts()
        o_b = torch.empty_like(q_perm)
    flags = long_run_flags(worklist.chunks, min_run) if min_run > 1 else None
    short_idx, short_before = (short_chunk_index(flags) if flags is not None
                               else (worklist.cols, worklist.cols))  # unread placeholders
    clock.lap("gather")
    for r0, r1 in slices:
        n = r1 - r0
        mark_pages(bits, geo, layout, worklist, r0, r1, flags)
        compact_pages(bits, table, seqused, geo, layout, block_table, page, kv_heads, r0, r1,
                      min_blocks, table_b, seqused_b, cover.view(-1, geo.width))
        clock.lap("tables")
        t0, t1 = geo.row_starts[r0], geo.row_starts[r1]
        _, lse = varlen_fn(
            q_perm[t0:t1], k_sub, v_sub, max_seqlen_q=geo.rows_per_group,
            cu_seqlens_q=starts[r0:r1 + 1] - t0, max_seqlen_k=layout.max_kv_len,
            seqused_k=seqused[:n], block_table=table[:n], softmax_scale=sm_scale, causal=True,
            out=o_perm[t0:t1], return_softmax_lse=True, num_splits=1, fa_version=3)
        if split:  # each block's own pages: one 64-row virtual sequence a block, every key
            # before the group's rows (those are on the group's pages), so not causal
            cu_b = block_starts[r0 * bpg:r1 * bpg + 1] - t0
            _, lse_b = varlen_fn(
                q_perm[t0:t1], k_sub, v_sub, max_seqlen_q=BLOCK_M, cu_seqlens_q=cu_b,
                max_seqlen_k=layout.max_kv_len, seqused_k=seqused_b[:n * bpg],
                block_table=table_b[:n * bpg], softmax_scale=sm_scale, causal=False,
                out=o_b[t0:t1], return_softmax_lse=True, num_splits=1, fa_version=3)
        clock.lap("fa3")
        _column_pass_kernel[(n * bpg,)](
            q, out, q.stride(0), q.stride(1), out.stride(0), out.stride(1),
            o_perm[t0:t1], lse.reshape(-1), o_b[t0:t1], lse_b.reshape(-1), t0, cover,
            cover.stride(0), cover.stride(1),
            **kv_args,
            DESC=worklist.desc, stride_dh=worklist.desc.stride(0),
            stride_db=worklist.desc.stride(1), CHUNKS=worklist.chunks,
            SHORT_IDX=short_idx, SHORT_BEFORE=short_before, COLS=worklist.cols,
            G_BLK0=geo.g_blk0, G_NBLK=geo.g_nblk, SEQ_ROW0=geo.seq_row0,
            Q_START=layout.q_start, Q_LEN=layout.q_len, KV_LEN=layout.kv_len,
            BLK_SEQ=layout.blk_seq, BLK_M=layout.blk_m, row0=r0, NG=geo.num_groups,
            N=geo.num_tokens,
            qk_scale=sm_scale * LOG2E, GROUP=num_heads // kv_heads, HEAD_DIM=head_dim,
            BPG=bpg, PREC=dot_precision(q.dtype), SUB_=SUB, HAS_FLAGS=min_run > 1,
            SPLIT=split, BLOCK_M=BLOCK_M, CHUNK=BLOCK_N, num_warps=4, num_stages=2)
        clock.lap("columns")
        if stats is not None:
            rows = (starts[r0 + 1:r1 + 1] - starts[r0:r1]).long()
            key_rows = (seqused[:n].long() * rows).sum()
            if split:
                rows_b = (cu_b[1:] - cu_b[:-1]).long()
                key_rows = key_rows + (seqused_b[:n * bpg].long() * rows_b).sum()
            stats["key_rows"] = stats.get("key_rows", 0) + key_rows
            clock.lap("stats")
    if stats is not None and clock.enabled:
        stats["stage_ms"] = clock.totals()
    return out
