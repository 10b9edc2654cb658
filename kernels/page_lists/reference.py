"""Plain references for the page-list path: the key sets it computes, and FA3's varlen call.

``page_list_mask`` is the key set, read naively off the work list's descriptors, that
:func:`..page_lists.attention.page_list_attention` computes: whole 16-key sub-pages of the
group's chunk keys, extra tiles and own rows, plus each block's columns.  ``emulate_fa3_varlen`` is
FlashAttention's paged varlen forward (bottom-right causal, log-sum-exp) in a Python loop,
for CPU tests.
"""

from __future__ import annotations

import torch

from ..layout import BLOCK_M, SeqLayout
from ..worklist import WorkList
from .index import SUB


def run_lengths(chunks) -> list[int]:
    """For each chunk of the pool, the length of its run of chunks 64 keys apart."""
    starts = [int(s) for s in chunks[:, 0].tolist()]
    out, i = [0] * len(starts), 0
    while i < len(starts):
        j = i + 1
        while j < len(starts) and starts[j] == starts[j - 1] + 64:
            j += 1
        out[i:j] = [j - i] * (j - i)
        i = j
    return out


def _block_keys(desc_row, chunks, cols, last: int, runs: list[int] | None = None,
                min_run: int = 1) -> tuple[set[int], list[int]]:
    """Keys of one descriptor up to the block's last row: those of chunks in runs of at
    least ``min_run`` (the pages' part), and the others with the columns (Triton's part)."""
    cp, cc, base, colp, colc = (int(x) for x in desc_row)
    paged: set[int] = set()
    rest = [int(c) for c in cols[colp:colp + colc]]
    for i, (start, lo) in enumerate(chunks[cp:cp + cc].tolist()):
        keys = range(max(base + max(lo, start), 0), min(base + start + 63, last) + 1)
        if runs is None or runs[cp + i] >= min_run:
            paged.update(keys)
        else:
            rest.extend(keys)
    return paged, rest


def group_split(wl: WorkList, layout: SeqLayout, rows_per_group: int, b: int, h: int,
                g: int, min_run: int = 1, runs: list[int] | None = None,
                min_blocks: int = 1) -> tuple[list[int], list[list[int]]]:
    """Ascending sub-pages (logical, of sequence ``b``) of group ``g``'s virtual sequence,
    and of each of its blocks' own (``runs``: the pool's :func:`run_lengths`, if the caller
    has them already).  The group's: its own rows', its blocks' extra tiles', and those of
    its blocks' chunk keys that at least ``min_blocks`` of its blocks (all of them, if
    fewer) list; a block's own: the rest of its chunk keys' sub-pages."""
    q_len, kv_len = layout.q_lens_host[b], layout.kv_lens_host[b]
    ctx = kv_len - q_len
    first_blk = sum((ql + BLOCK_M - 1) // BLOCK_M for ql in layout.q_lens_host[:b])
    desc, chunks, cols = wl.desc[h].cpu(), wl.chunks.cpu(), wl.cols.cpu()
    g_first, g_last = ctx + g * rows_per_group, ctx + min((g + 1) * rows_per_group, q_len) - 1
    subs = set(range(g_first // SUB, g_last // SUB + 1))
    bpg = rows_per_group // BLOCK_M
    if runs is None and min_run > 1:  # with min_run 1 every chunk goes to the pages
        runs = run_lengths(chunks)
    blocks = range(g * bpg, min((g + 1) * bpg, (q_len + BLOCK_M - 1) // BLOCK_M))
    marked: list[set[int]] = []  # each block's sub-pages of chunk keys
    for m in blocks:
        last = ctx + min((m + 1) * BLOCK_M, q_len) - 1
        keys, _ = _block_keys(desc[first_blk + m], chunks, cols, last, runs, min_run)
        marked.append({k // SUB for k in keys})
        if wl.extra is not None:  # the block's extra tiles, up to its last row
            for start in wl.extra[h, first_blk + m].tolist():
                if start >= 0:
                    subs.update(k // SUB for k in range(start, min(start + 64, last + 1)))
    need = min(min_blocks, len(blocks))
    subs.update(s for s in set().union(*marked) if sum(s in x for x in marked) >= need)
    return sorted(subs), [sorted(x - subs) for x in marked]


def group_sub_pages(wl: WorkList, layout: SeqLayout, rows_per_group: int, b: int, h: int,
                    g: int, min_run: int = 1, runs: list[int] | None = None,
                    min_blocks: int = 1) -> list[int]:
    """The group's sub-pages of :func:`group_split`."""
    return group_split(wl, layout, rows_per_group, b, h, g, min_run, runs, min_blocks)[0]


def page_list_mask(wl: WorkList, layout: SeqLayout, rows_per_group: int, b: int,
                   h: int, min_run: int = 1, min_blocks: int = 1) -> torch.Tensor:
    """``[q_len, kv_len]`` keys each row of sequence ``b``, head ``h`` sees (before causality):
    its group's pages, its block's own (the sub-pages of its chunk keys) and its block's
    columns and short-run chunk keys."""
    q_len, kv_len = layout.q_lens_host[b], layout.kv_lens_host[b]
    ctx = kv_len - q_len
    first_blk = sum((ql + BLOCK_M - 1) // BLOCK_M for ql in layout.q_lens_host[:b])
    desc, chunks, cols = wl.desc[h].cpu(), wl.chunks.cpu(), wl.cols.cpu()
    mask = torch.zeros(q_len, kv_len, dtype=torch.bool)
    runs = run_lengths(chunks) if min_run > 1 else None  # once, not once per group
    for g in range((q_len + rows_per_group - 1) // rows_per_group):
        r0, r1 = g * rows_per_group, min((g + 1) * rows_per_group, q_len)
        for s in group_sub_pages(wl, layout, rows_per_group, b, h, g, min_run, runs,
                                 min_blocks):
            mask[r0:r1, s * SUB:min((s + 1) * SUB, kv_len)] = True
        for m in range(r0 // BLOCK_M, (r1 + BLOCK_M - 1) // BLOCK_M):
            last = ctx + min((m + 1) * BLOCK_M, q_len) - 1
            paged, rest = _block_keys(desc[first_blk + m], chunks, cols, last, runs, min_run)
            rows = slice(m * BLOCK_M, min((m + 1) * BLOCK_M, q_len))
            mask[rows, rest] = True
            for s in {k // SUB for k in paged}:  # in the group's pages or the block's own
                mask[rows, s * SUB:min((s + 1) * SUB, kv_len)] = True
    return mask


def emulate_fa3_varlen(q, k, v, max_seqlen_q, cu_seqlens_q, max_seqlen_k, seqused_k=None,
                       block_table=None, softmax_scale=None, causal=False, out=None,
                       return_softmax_lse=False, **_ignored):
    """FlashAttention's paged varlen forward, one sequence at a time (tests only); a
    sequence without keys gives zeros and a log-sum-exp of ``-inf``."""
    assert block_table is not None and seqused_k is not None
    page, head_dim = k.shape[1], q.shape[-1]
    cu = cu_seqlens_q.tolist()
    used = seqused_k.tolist()
    lse = torch.full((q.shape[1], q.shape[0]), float("-inf"), dtype=torch.float32,
                     device=q.device)
    out = torch.empty_like(q) if out is None else out
    for s in range(len(cu) - 1):
        q0, q1, nk = cu[s], cu[s + 1], used[s]
        pages = block_table[s, :(nk + page - 1) // page].long()
        ks = k[pages].reshape(-1, k.shape[-2], head_dim)[:nk]
        vs = v[pages].reshape(-1, v.shape[-2], head_dim)[:nk]
        for hh in range(q.shape[1]):
            sc = q[q0:q1, hh].double() @ ks[:, hh // (q.shape[1] // k.shape[-2])].double().T
            sc = sc * softmax_scale
            if causal:  # bottom-right aligned
                pos = torch.arange(nk - (q1 - q0), nk, device=q.device)[:, None]
                sc = sc.masked_fill(torch.arange(nk, device=q.device)[None, :] > pos,
                                    float("-inf"))
            lse[hh, q0:q1] = torch.logsumexp(sc, -1).float()
            p = torch.softmax(sc, -1).nan_to_num(0.0)
            out[q0:q1, hh] = (p @ vs[:, hh // (q.shape[1] // k.shape[-2])].double()).to(q.dtype)
    return (out, lse) if return_softmax_lse else out
