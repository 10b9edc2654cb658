"""Work lists -> FlashAttention-3 page lists: one virtual sequence per (query head, row group).

FA3 runs any key set that is a list of KV pages, through its block table.  So each
(query head ``h``, group of ``R`` consecutive query rows of one sequence) becomes a virtual
sequence of its own: one head, the group's ``R`` query rows, and a block table listing, in
ascending key order, the 16-key sub-pages that hold the keys its 64-row blocks' work lists
name, plus the group's own rows.  FA3 aligns the causal mask to the bottom right, so with
the group's own keys last and ``seqused_k`` ending at the group's last row, its mask is
exactly the causal mask.  Sub-pages of one KV head need the cache in vLLM's HND layout
(``[pages, kv_heads, page_size, 2 * head_dim]``): 16-key sub-page ``s`` of page ``P`` and
KV head ``k`` is then sub-page ``(P * kv_heads + k) * (page_size // 16) + s`` of the
cache viewed as ``[-1, 16, 2 * head_dim]``.

The key set is a superset of the work list's (whole sub-pages, the union over the group's
blocks, and its own rows); gathered columns stay with the Triton kernel, which skips those
the pages already hold (``covered`` bitmap).  ``R`` is FA3's query tile (192 rows at head
dim 64, 128 at 128), so no tile computes padding rows.  Two rules keep chunks off the
group's pages:

* ``min_run`` > 1: only chunks in runs of at least that many contiguous chunks go to the
  pages (:func:`long_run_flags`): an isolated diagonal costs a group about ``R + 16`` keys
  per row on FA3 but 64 on the Triton kernel, which takes the rest
  (:func:`short_chunk_index`).
* ``min_blocks`` > 1: a sub-page goes to the group's pages only where at least that many of
  its blocks list it (all of them in a group of fewer blocks).  The union makes FA3 compute
  a tile listed by one block of three for all three rows, at three times its listed cost.
  Each block marks its own bitmap plane, the compaction counts the planes, and a block's
  other sub-pages go to its own page list: a second FA3 call with one 64-row virtual
  sequence per block, not causal (they all lie before the group's rows, which are on the
  group's pages), merged with the first by log-sum-exp in the Triton pass.

Built per slice of rows with two Triton launches (mark the sub-pages of a bitmap, then
compact it into the block table); shapes depend on host sizes only.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from ..layout import BLOCK_M, SeqLayout, _aligned_rows, append_kept, host_to_device
from ..worklist import WorkList

SUB = 16  # keys per FA3 page (a sub-page of a vLLM cache page)
TABLE_BYTES = 256 << 20  # block table + bitmap of one slice stay under this


def group_rows(head_dim: int) -> int:
    """FA3's query tile on Hopper (hopper/tile_size.h): 192 rows at head dim 64, else 128."""
    return 192 if head_dim <= 64 else 128


@dataclass(frozen=True)
class PageGeometry:
    """Host-side shape of a batch's virtual sequences (built once per step, like the layout).

    Row ``r = h * num_groups + g`` is query head ``h`` of group ``g``; its query rows are
    rows ``h * num_tokens + g_row0[g] ...`` of the head-major permuted query tensor.
    """

    rows_per_group: int
    num_heads: int
    num_groups: int
    num_tokens: int  # query rows of the batch (all sequences)
    width: int  # sub-pages of the longest sequence: block-table width
    g_seq: torch.Tensor  # [G] int32 sequence of each group
    g_m: torch.Tensor  # [G] int32 group index inside its sequence
    g_blk0: torch.Tensor  # [G] int32 first flat 64-row block
    g_nblk: torch.Tensor  # [G] int32 blocks in the group
    seq_row0: torch.Tensor  # [B] int32 first row of each sequence in the permuted order
    token_index: torch.Tensor  # [num_tokens] int64 query-tensor row of each permuted row
    row_starts: tuple[int, ...]  # permuted first row of every virtual sequence, + the end
    row_starts_dev: torch.Tensor  # the same, int32 on the device (FA3's cu_seqlens_q)

    @staticmethod
    def build(layout: SeqLayout, num_heads: int, rows_per_group: int) -> "PageGeometry":
        if rows_per_group % BLOCK_M:
            raise ValueError(f"rows_per_group must be a multiple of {BLOCK_M}")
        bpg = rows_per_group // BLOCK_M
        g_seq, g_m, g_blk0, g_nblk, g_row0, seq_row0, tokens = [], [], [], [], [], [], []
        blk0 = row0 = 0
        for b, (ql, qs) in enumerate(zip(layout.q_lens_host, layout.q_starts_host)):
            seq_row0.append(row0)
            nblk = triton.cdiv(ql, BLOCK_M)
            for g in range(triton.cdiv(ql, rows_per_group)):
                g_seq.append(b)
                g_m.append(g)
                g_blk0.append(blk0 + g * bpg)
                g_nblk.append(min(bpg, nblk - g * bpg))
                g_row0.append(row0 + g * rows_per_group)
            tokens.append(torch.arange(qs, qs + ql))
            blk0 += nblk
            row0 += ql
        n = row0
        starts = [h * n + r for h in range(num_heads) for r in g_row0] + [num_heads * n]
        dev = layout.q_len.device
        rows = _aligned_rows([g_seq, g_m, g_blk0, g_nblk], dev)
        G = len(g_seq)
        return PageGeometry(
            rows_per_group=rows_per_group, num_heads=num_heads, num_groups=G, num_tokens=n,
            width=triton.cdiv(layout.max_kv_len, SUB),
            g_seq=rows[0, :G], g_m=rows[1, :G], g_blk0=rows[2, :G], g_nblk=rows[3, :G],
            seq_row0=_aligned_rows([seq_row0], dev)[0, :layout.num_seqs],
            token_index=host_to_device(torch.cat(tokens), dev),
            row_starts=tuple(starts),
            row_starts_dev=host_to_device(torch.tensor(starts, dtype=torch.int32), dev))

    @property
    def num_rows(self) -> int:
        return self.num_heads * self.num_groups

    def block_starts(self) -> torch.Tensor:
        """Permuted first row of every 64-row block of every virtual sequence
        (``rows_per_group // 64`` a sequence, empty past its end), + the end, int32 on the
        device: FA3's cu_seqlens_q for the per-block pages (built on the device, and only
        where they are used)."""
        starts = self.row_starts_dev
        offs = torch.arange(0, self.rows_per_group, BLOCK_M, dtype=torch.int32,
                            device=starts.device)
        blocks = torch.minimum(starts[:-1, None] + offs, starts[1:, None]).flatten()
        return torch.cat([blocks, starts[-1:]])

    def bitmap_planes(self, min_blocks: int) -> int:
        """Bitmap planes a row needs: one, or with ``min_blocks`` > 1 one per block of the
        group plus the plane of what goes to the group's pages whatever the count (its own
        rows, extra tiles)."""
        return self.rows_per_group // BLOCK_M + 1 if min_blocks > 1 else 1

    def slices(self, table_bytes: int = TABLE_BYTES, planes: int = 1,
               block_tables: int = 0) -> list[tuple[int, int]]:
        """Row ranges whose block table (int32), bitmap (int8, ``planes`` per row) and
        ``block_tables`` per-block tables (int32) and bitmaps (int8) fit ``table_bytes``."""
        per = max(1, table_bytes // ((4 + 5 * block_tables + planes) * self.width))
        return [(r, min(r + per, self.num_rows)) for r in range(0, self.num_rows, per)]


def long_run_flags(chunks: torch.Tensor, min_run: int) -> torch.Tensor:
    """int8 per chunk of the pool: 1 if it lies in a run of >= ``min_run`` chunks whose
    starts follow each other by 64 keys (a merged diagonal segment, dense tiles), else 0.
    Fixed shapes, no host sync (run lengths by scatter-add over run ids)."""
    start = chunks[:, 0]
    n = start.numel()
    brk = torch.ones(n, dtype=torch.bool, device=start.device)
    brk[1:] = start[1:] != start[:-1] + 64
    run = torch.cumsum(brk.to(torch.int64), 0) - 1
    length = torch.zeros(n, dtype=torch.int32, device=start.device).scatter_add_(
        0, run, torch.ones(n, dtype=torch.int32, device=start.device))
    return (length[run] >= min_run).to(torch.int8)


def short_chunk_index(flags: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The pool's chunks that :func:`long_run_flags` leaves to the Triton pass, packed.

    Returns ``(index, before)``: ``index[before[c]:before[c + n]]`` are the pool positions of
    the short-run chunks among ``c .. c + n - 1``, in pool order (``before`` is the exclusive
    running count, ``[Nc + 1]``).  A block then walks only its own short chunks instead of
    testing a flag per chunk: at 1M keys a block lists ~1000 chunks of which ~100 are short.
    Fixed shapes, no host sync."""
    short = (flags == 0).to(torch.int32)
    n = short.numel()
    before = torch.zeros(n + 1, dtype=torch.int32, device=flags.device)
    before[1:] = torch.cumsum(short, 0)
    slot = torch.where(short.bool(), before[:-1].long(), n)  # long runs write a spare slot
    index = torch.zeros(n + 1, dtype=torch.int32, device=flags.device)
    index.scatter_(0, slot, torch.arange(n, dtype=torch.int32, device=flags.device))
    return index, before


@triton.jit
def group_block(row0, NG, BPG: tl.constexpr):
    """Program -> (row in the slice, block ``j`` of the group, query head, group): the
    launches over (virtual sequence, 64-row block) pairs of a slice share this order."""
    pid = tl.program_id(0)
    r_loc = pid // BPG
    r = row0 + r_loc
    return r_loc, pid % BPG, r // NG, r % NG


@triton.jit(do_not_specialize=["stride_bits", "stride_plane", "stride_dh", "stride_eh",
                               "stride_eb", "row0", "NG"])
def _mark_kernel(BITS, stride_bits, stride_plane, DESC, stride_dh, stride_db, CHUNKS, FLAGS,
                 EXTRA, stride_eh, stride_eb, N_EXTRA,
                 G_SEQ, G_M, G_BLK0, G_NBLK, BLK_M, Q_LEN, KV_LEN,
                 row0, NG,
                 BPG: tl.constexpr, R: tl.constexpr, SUB_: tl.constexpr, OWN: tl.constexpr,
                 CB: tl.constexpr, HAS_FLAGS: tl.constexpr, EB: tl.constexpr,
                 SPLIT: tl.constexpr):
    """Set the bitmap's sub-pages that block ``j`` of the row's group needs (program j == 0
    also sets the group's own rows: FA3's causal mask must find them last), and with
    ``EB`` > 0 those of the block's extra tiles.  With ``SPLIT`` block ``j`` marks its
    chunks in plane ``j`` and the own rows and extra tiles go to plane ``BPG`` (every store
    to a plane writes 1, so programs sharing one need no atomics); else all in plane 0."""
    r_loc, j, h, g = group_block(row0, NG, BPG)
    b = tl.load(G_SEQ + g)
    q_len = tl.load(Q_LEN + b)
    ctx = tl.load(KV_LEN + b) - q_len
    bits = BITS + r_loc.to(tl.int64) * stride_bits
    forced = bits
    if SPLIT:
        forced = bits + BPG * stride_plane.to(tl.int64)
        bits += j * stride_plane.to(tl.int64)
    if j == 0:
        gm = tl.load(G_M + g)
        g_first = ctx + gm * R
        g_last = ctx + tl.minimum(gm * R + R, q_len) - 1
        s = g_first // SUB_ + tl.arange(0, OWN)
        tl.store(forced + s, tl.full(s.shape, 1, tl.int8), mask=s <= g_last // SUB_)
    if j < tl.load(G_NBLK + g):
        blk = tl.load(G_BLK0 + g) + j
        m = tl.load(BLK_M + blk)
        last = ctx + tl.minimum(m * 64 + 64, q_len) - 1  # keys past it are never used
        desc = DESC + h.to(tl.int64) * stride_dh + blk.to(tl.int64) * stride_db
        ptr = tl.load(desc + 0)
        cnt = tl.load(desc + 1)
        base = tl.load(desc + 2)
        span = tl.arange(0, 8)  # a 64-key chunk touches at most 5 sub-pages
        for c0 in range(0, cnt, CB):
            idx = c0 + tl.arange(0, CB)
            ok = idx < cnt
            cp = CHUNKS + 2 * (ptr + idx).to(tl.int64)
            start = tl.load(cp, mask=ok, other=0)
            lo = tl.load(cp + 1, mask=ok, other=0)
            if HAS_FLAGS:  # chunks of short runs stay with the Triton pass
                ok = ok & (tl.load(FLAGS + ptr + idx, mask=ok, other=0) != 0)
            k_lo = tl.maximum(base + tl.maximum(lo, start), 0)
            k_hi = tl.minimum(base + start + 63, last)
            ok = ok & (k_lo <= k_hi)
            s = (k_lo // SUB_)[:, None] + span[None, :]
            keep = ok[:, None] & (s <= (k_hi // SUB_)[:, None])
            tl.store(bits + s, tl.full(s.shape, 1, tl.int8), mask=keep)
        if EB > 0:  # aligned 64-key tiles: 64 // SUB_ sub-pages each
            e = tl.arange(0, EB)
            ext = EXTRA + h.to(tl.int64) * stride_eh + blk.to(tl.int64) * stride_eb
            start = tl.load(ext + e, mask=e < N_EXTRA, other=-1)
            per = tl.arange(0, 64 // SUB_)
            s = (start // SUB_)[:, None] + per[None, :]
            keep = (start >= 0)[:, None] & (s * SUB_ <= last)
            tl.store(forced + s, tl.full(s.shape, 1, tl.int8), mask=keep)


@triton.jit(do_not_specialize=["stride_bits", "stride_plane", "stride_tab", "stride_tb",
                               "stride_cov", "stride_bt", "row0", "NG", "MIN_BLOCKS"])
def _compact_kernel(BITS, stride_bits, stride_plane, TABLE, stride_tab, SEQUSED,
                    TABLE_B, stride_tb, SEQUSED_B, COVER, stride_cov, BT, stride_bt,
                    G_SEQ, G_M, G_NBLK, Q_LEN, KV_LEN, row0, NG, KV_HEADS, MIN_BLOCKS,
                    GROUP: tl.constexpr, R: tl.constexpr, SUB_: tl.constexpr,
                    SUBS_PER_PAGE: tl.constexpr, BS: tl.constexpr, BPG: tl.constexpr,
                    SPLIT: tl.constexpr):
    """Bitmap row -> ascending FA3 sub-page ids (through vLLM's block table) + seqused_k.

    With ``SPLIT`` a sub-page goes to the group's pages if its plane ``BPG`` is set or at
    least ``MIN_BLOCKS`` of the group's blocks (all, in a group of fewer) marked it, and
    program ``(row, 1 + j)`` (the blocks' programs run beside the group's) lists block
    ``j``'s other marked sub-pages in its row of ``TABLE_B`` (``SEQUSED_B``: their keys)
    and writes ``COVER[row, j]``: what the group's pages and its own hold for it, the
    bitmap the Triton pass reads.  The planes are only read, so the programs need no
    order among them."""
    r_loc, _, h, g = group_block(row0, NG, 1)  # one program per row (and block)
    part = tl.program_id(1)  # 0: the group's pages; 1 + j: block j's own
    kvh = h // GROUP
    b = tl.load(G_SEQ + g)
    gm = tl.load(G_M + g)
    q_len = tl.load(Q_LEN + b)
    ctx = tl.load(KV_LEN + b) - q_len
    g_last = ctx + tl.minimum(gm * R + R, q_len) - 1
    n_sub = g_last // SUB_ + 1
    bits = BITS + r_loc.to(tl.int64) * stride_bits
    plane = stride_plane.to(tl.int64)
    forced = bits
    need = tl.minimum(MIN_BLOCKS, tl.load(G_NBLK + g))
    if SPLIT:
        forced = bits + BPG * plane
    table = TABLE + r_loc.to(tl.int64) * stride_tab
    mine_plane = bits + tl.maximum(part - 1, 0) * plane
    row_b = (r_loc * BPG + tl.maximum(part - 1, 0)).to(tl.int64)
    if part > 0:
        table = TABLE_B + row_b * stride_tb
    cover = COVER + row_b * stride_cov
    bt = BT + b.to(tl.int64) * stride_bt
    count = tl.zeros([], tl.int32)
    for s0 in range(0, n_sub, BS):
        s = s0 + tl.arange(0, BS)
        in_row = s < n_sub
        on = tl.load(forced + s, mask=in_row, other=0) != 0
        if SPLIT:
            marks = tl.zeros([BS], tl.int32)
            for p in tl.static_range(BPG):
                marks += (tl.load(bits + p * plane + s, mask=in_row, other=0) != 0).to(tl.int32)
            on = on | (marks >= need)
        keep = on
        if part > 0:  # block part - 1: its marked sub-pages the group's pages leave out
            mine = (tl.load(mine_plane + s, mask=in_row, other=0) != 0) & ~on
            tl.store(cover + s, (on | mine).to(tl.int8), mask=in_row)
            keep = mine
        page = tl.load(bt + s // SUBS_PER_PAGE, mask=keep, other=0)
        sub_id = (page * KV_HEADS + kvh) * SUBS_PER_PAGE + s % SUBS_PER_PAGE
        count = append_kept(table, count, sub_id, keep)
    if part == 0:
        tl.store(SEQUSED + r_loc, (count - 1) * SUB_ + g_last % SUB_ + 1)
    else:  # whole sub-pages, all before the group's rows
        tl.store(SEQUSED_B + row_b, count * SUB_)


def mark_pages(bits: torch.Tensor, geo: PageGeometry, layout: SeqLayout, wl: WorkList,
               row0: int, row1: int, flags: torch.Tensor | None = None) -> None:
    """Zero ``bits[: row1 - row0]`` (``[rows, planes, width]`` int8, planes from
    :meth:`PageGeometry.bitmap_planes`) and mark the sub-pages rows ``[row0, row1)`` need
    (only the chunks ``flags`` marks, if given)."""
    n = row1 - row0
    bits[:n].zero_()
    bpg = geo.rows_per_group // BLOCK_M
    extra = wl.extra if wl.extra is not None else wl.desc  # placeholder pointer when none
    n_extra = wl.extra.shape[-1] if wl.extra is not None else 0
    _mark_kernel[(n * bpg,)](
        bits, bits.stride(0), bits.stride(1), wl.desc, wl.desc.stride(0), wl.desc.stride(1),
        wl.chunks, wl.chunks if flags is None else flags, extra, extra.stride(0),
        extra.stride(1), n_extra, geo.g_seq, geo.g_m, geo.g_blk0, geo.g_nblk,
        layout.blk_m, layout.q_len, layout.kv_len, row0, geo.num_groups, BPG=bpg,
        R=geo.rows_per_group, SUB_=SUB,
        OWN=triton.next_power_of_2(geo.rows_per_group // SUB + 1), CB=64,
        HAS_FLAGS=flags is not None,
        EB=triton.next_power_of_2(n_extra) if n_extra else 0, SPLIT=bits.shape[1] > 1)


def compact_pages(bits: torch.Tensor, table: torch.Tensor, seqused: torch.Tensor,
                  geo: PageGeometry, layout: SeqLayout, block_table: torch.Tensor,
                  page_size: int, kv_heads: int, row0: int, row1: int,
                  min_blocks: int = 1, table_b: torch.Tensor | None = None,
                  seqused_b: torch.Tensor | None = None,
                  cover: torch.Tensor | None = None) -> None:
    """Fill ``table[: row1 - row0]`` and ``seqused[: row1 - row0]`` from the bitmap; with
    several planes (``min_blocks`` > 1) also each block's own pages and bitmap, ``table_b``,
    ``seqused_b`` and ``cover`` rows ``(row - row0) * blocks_per_group + block``."""
    if page_size % SUB:
        raise ValueError(f"KV page size {page_size} is not a multiple of {SUB}")
    split = bits.shape[1] > 1
    bpg = geo.rows_per_group // BLOCK_M
    if split != (min_blocks > 1) or split and any(
            t is None for t in (table_b, seqused_b, cover)):
        raise ValueError(f"{bits.shape[1]} bitmap plane(s) do not fit min_blocks={min_blocks}"
                         " (and its per-block tables)")
    if not split:  # unread placeholders
        table_b, seqused_b, cover = table, seqused, bits[:, 0]
    _compact_kernel[(row1 - row0, 1 + bpg if split else 1)](
        bits, bits.stride(0), bits.stride(1), table, table.stride(0), seqused,
        table_b, table_b.stride(0), seqused_b, cover, cover.stride(0), block_table,
        block_table.stride(0), geo.g_seq, geo.g_m, geo.g_nblk, layout.q_len, layout.kv_len,
        row0, geo.num_groups, kv_heads, min_blocks, GROUP=geo.num_heads // kv_heads,
        R=geo.rows_per_group, SUB_=SUB, SUBS_PER_PAGE=page_size // SUB, BS=1024,
        BPG=bpg, SPLIT=split)
