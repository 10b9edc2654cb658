"""Plain PyTorch references for Vertical-Slash: the estimate, the diagonal merge, the mask."""

from __future__ import annotations

import math

import torch

from ..attention.reference import causal_mask
from ..layout import BLOCK_M, BLOCK_N, KVSource, SeqLayout
from . import adaptive  # COLUMN_DISCOUNT is read at call time: studies patch it
from .adaptive import chunk_masses
from .estimate import FORCED, INVALID, LAST_Q
from .index import _BIG


def estimate_reference(q: torch.Tensor, kv: KVSource, layout: SeqLayout, heads: list[int],
                       sm_scale: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Column and diagonal sums of the last-64-query softmax, in float64, row by row."""
    num_heads, head_dim = q.shape[1], q.shape[2]
    group = num_heads // kv.num_kv_heads
    scale = sm_scale if sm_scale is not None else 1.0 / math.sqrt(head_dim)
    B, kv_max = layout.num_seqs, layout.max_kv_len
    vertical = torch.zeros(B, len(heads), kv_max, dtype=torch.float64)
    slash = torch.zeros_like(vertical)
    for b in range(B):
        q_len, kv_len, q0 = layout.q_lens_host[b], layout.kv_lens_host[b], layout.q_starts_host[b]
        n = min(LAST_Q, q_len)
        k, _ = kv.gather(b, kv_len)
        mask = causal_mask(q_len, kv_len)[-n:]
        pos = torch.arange(kv_len - n, kv_len)
        for i, h in enumerate(heads):
            s = (q[q0 + q_len - n:q0 + q_len, h].double().cpu()
                 @ k[:, h // group].double().cpu().T) * scale
            p = torch.softmax(s.masked_fill(~mask, float("-inf")), dim=-1)
            vertical[b, i, :kv_len] = p.sum(0)
            for r in range(n):
                keys = torch.arange(pos[r] + 1)
                slash[b, i].index_add_(0, pos[r] - keys, p[r, keys])
    return vertical, slash


def vertical_slash_mask(cols: list[int], diags: list[int], q_len: int, kv_len: int) -> torch.Tensor:
    """Keys each query row sees under the Vertical-Slash pattern (before causality).

    A block of 64 rows starting at position ``qs`` sees, for each kept diagonal ``d``, the
    64 keys ``qs - d + [0, 64)`` (the tile the diagonal crosses), plus every kept column.
    """
    ctx = kv_len - q_len
    mask = torch.zeros(q_len, kv_len, dtype=torch.bool)
    mask[:, [c for c in cols if 0 <= c < kv_len]] = True
    for m in range((q_len + BLOCK_M - 1) // BLOCK_M):
        r0, r1 = m * BLOCK_M, min(q_len, (m + 1) * BLOCK_M)
        qs = ctx + r0
        for d in diags:
            k0, k1 = max(0, qs - d), min(kv_len, qs - d + BLOCK_N)
            if k0 < k1:
                mask[r0:r1, k0:k1] = True
    return mask & causal_mask(q_len, kv_len)


def select_vertical_slash_reference(
    vertical: torch.Tensor, slash: torch.Tensor, layout: SeqLayout, v_budget: torch.Tensor,
    s_budget: torch.Tensor, v_max: int, s_max: int, keep_first: int = 30, keep_diag: int = 100,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`.estimate.select_vertical_slash` in plain PyTorch (the tests' reference, and
    the recall study's selection on a CPU without Triton): forced first columns / nearest
    diagonals above any estimate, top ``budget[h]`` by score, indices descending, ``INVALID``
    padding to ``v_max``/``s_max``."""
    def top(score, budget, k_max):
        k = min(k_max, score.shape[-1])
        val, idx = torch.topk(score, k, dim=-1, sorted=True)
        rank = torch.arange(k, device=score.device)
        keep = (rank[None, None, :] < budget.to(score.device)[None, :, None]) & (
            val > float("-inf"))
        idx = torch.where(keep, idx, torch.full_like(idx, INVALID))
        idx = torch.sort(idx, dim=-1, descending=True).values.to(torch.int32)
        if k < k_max:
            pad = torch.full((*idx.shape[:2], k_max - k), INVALID, dtype=torch.int32,
                             device=idx.device)
            idx = torch.cat([idx, pad], dim=-1)
        return idx, keep.sum(dim=-1, dtype=torch.int32)

    def force(score, pos, keep, inside):
        score = torch.where((pos < keep)[None, None, :],
                            FORCED + (keep - pos).to(score.dtype), score)
        return torch.where(inside[:, None, :], score, float("-inf"))

    pos = torch.arange(vertical.shape[-1], device=vertical.device)
    inside = pos[None, :] < layout.kv_len.to(vertical.device)[:, None]
    cols, n_cols = top(force(vertical, pos, keep_first, inside), v_budget, v_max)
    diags, n_diags = top(force(slash, pos, keep_diag, inside), s_budget, s_max)
    return cols, n_cols, diags, n_diags


def merge_diagonals_reference(diags: torch.Tensor,
                              n_diags: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-head relative segments and chunks of the selected diagonals, in plain torch ops.

    The readable definition that ``index.merge_diagonals`` (one Triton kernel) must match
    bit for bit, padding included: downstream kernels binary-search these arrays.

    ``diags`` is ``[B, H, S]`` sorted descending with ``-1`` padding after ``n_diags``.
    Returns ``seg_start``/``seg_end`` (``[B, H, S]``, relative key offsets, ascending),
    ``n_seg``, ``chunks`` (``[B, H, S, 2]`` (start, lo)) and ``n_chunks`` (``[B, H]``).
    """
    B, H, S = diags.shape
    dev = diags.device
    idx = torch.arange(S, device=dev)
    valid = idx[None, None, :] < n_diags[..., None]
    a = torch.where(valid, -diags.long(), torch.full_like(diags, _BIG, dtype=torch.long))
    prev = torch.cat([torch.full_like(a[..., :1], -_BIG), a[..., :-1]], dim=-1)
    brk = valid & (a > prev + BLOCK_N)
    seg = torch.cumsum(brk.long(), dim=-1) - 1
    n_seg = brk.sum(dim=-1)
    nxt_brk = torch.cat([brk[..., 1:], torch.ones_like(brk[..., :1])], dim=-1)
    nxt_valid = torch.cat([valid[..., 1:], torch.zeros_like(valid[..., :1])], dim=-1)
    last = valid & (nxt_brk | ~nxt_valid)
    dummy = torch.full_like(seg, S)  # scatter target for entries that start/end nothing
    seg_start = torch.full((B, H, S + 1), _BIG, dtype=torch.long, device=dev)
    seg_end = torch.full((B, H, S + 1), _BIG, dtype=torch.long, device=dev)
    seg_start.scatter_(-1, torch.where(brk, seg, dummy), a)
    seg_end.scatter_(-1, torch.where(last, seg, dummy), a + BLOCK_N)
    seg_start, seg_end = seg_start[..., :S], seg_end[..., :S]
    seg_ok = idx[None, None, :] < n_seg[..., None]
    n_ch = torch.where(seg_ok, (seg_end - seg_start + BLOCK_N - 1) // BLOCK_N,
                       torch.zeros_like(seg_start))
    cum = torch.cumsum(n_ch, dim=-1)
    n_chunks = cum[..., -1]
    j = idx.expand(B, H, S).contiguous()
    seg_of = torch.searchsorted(cum.contiguous(), j, right=True).clamp_max(S - 1)
    nch_of = n_ch.gather(-1, seg_of)
    k_in = j - (cum.gather(-1, seg_of) - nch_of)
    start = seg_end.gather(-1, seg_of) - BLOCK_N * (nch_of - k_in)
    lo = seg_start.gather(-1, seg_of)
    ok = j < n_chunks[..., None]
    chunks = torch.stack([torch.where(ok, start, 0), torch.where(ok, lo, 0)], dim=-1)
    return dict(seg_start=seg_start.to(torch.int32).contiguous(),
                seg_end=seg_end.to(torch.int32).contiguous(),
                n_seg=n_seg.to(torch.int32).contiguous(),
                chunks=chunks.to(torch.int32).contiguous(),
                n_chunks=n_chunks.to(torch.int32).contiguous())


# --- adaptive selection -------------------------------------------------------------------
# ``adaptive.select_adaptive`` (two Triton kernels, two top-k) must return the same lists.
# Its sums run in another order, so where two chunk masses are within a rounding step of
# each other at a cut, either may be kept (as between this code on CPU and on GPU).


def _adaptive_ranked(score: torch.Tensor, mass: torch.Tensor, ceiling: torch.Tensor, k_max: int
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Top ``k_max`` entries by ``score``: (index, ranking key, mass), beyond-ceiling ones -inf."""
    k = min(k_max, score.shape[-1])
    key, idx = torch.topk(score, k, dim=-1, sorted=True)
    rank = torch.arange(k, device=score.device)
    ok = (rank[None, None, :] < ceiling[..., None]) & (key > float("-inf"))
    key = torch.where(ok, key, float("-inf"))
    return idx, key, torch.where(ok, mass.gather(-1, idx), 0.0)


def _adaptive_sorted_desc(idx: torch.Tensor, keep: torch.Tensor, scale: int = 1) -> torch.Tensor:
    """Kept indices (times ``scale``) sorted descending, ``INVALID`` after them."""
    out = torch.where(keep, idx * scale, torch.full_like(idx, INVALID))
    return torch.sort(out, dim=-1, descending=True).values.to(torch.int32).contiguous()


def select_adaptive_reference(
    vertical: torch.Tensor,
    slash: torch.Tensor,
    layout: SeqLayout,
    v_ceiling: torch.Tensor,
    s_ceiling: torch.Tensor,
    v_max: int,
    s_max: int,
    gamma: float,
    keep_first: int = 30,
    keep_diag: int = 100,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``adaptive.select_adaptive`` written out in PyTorch ops (~95 launches on a GPU).

    Scores and masses per column and chunk, a top-k per kind under the head's ceiling, one
    sort of both lists by key, and the first key where the cumulative mass reaches ``gamma``
    of the estimate rows' total as the threshold.
    """
    B, H, kv_max = vertical.shape
    dev = vertical.device
    kv_len = layout.kv_len.to(dev).long()
    pos = torch.arange(kv_max, device=dev)
    inside = pos[None, :] < kv_len[:, None]  # [B, kv]
    total = vertical.sum(-1, keepdim=True)  # mass of the estimate rows, [B, H, 1]

    # columns: the first keys are forced; the last keys' mass is the local band's, which the
    # forced near chunks already hold for the estimate rows (no double counting)
    near = pos[None, :] >= (kv_len[:, None] - BLOCK_N - keep_diag)
    v_mass = torch.where((inside & ~near)[:, None, :], vertical, 0.0)
    v_score = torch.where((pos < keep_first)[None, None, :], FORCED + (keep_first - pos),
                          v_mass * (BLOCK_N * adaptive.COLUMN_DISCOUNT))
    v_score = torch.where(inside[:, None, :], v_score, float("-inf"))
    v_mass = torch.where((pos < keep_first)[None, None, :], vertical, v_mass)

    # chunks: the ones holding the nearest keep_diag diagonals are forced
    c_mass = chunk_masses(slash)
    n_chunk = c_mass.shape[-1]
    cpos = torch.arange(n_chunk, device=dev)
    c_forced = (keep_diag - 1) // BLOCK_N + 1 if keep_diag > 0 else -1
    c_inside = cpos[None, :] * BLOCK_N < kv_len[:, None] + BLOCK_N
    c_score = torch.where((cpos <= c_forced)[None, None, :],
                          FORCED + (c_forced - cpos).to(c_mass.dtype), c_mass)
    c_score = torch.where(c_inside[:, None, :], c_score, float("-inf"))

    # floors above a head's budget win: the budget is a ceiling on what the estimate adds
    v_ceiling = v_ceiling.to(dev).clamp_min(keep_first)
    s_ceiling = s_ceiling.to(dev).clamp_min(c_forced + 1)
    v_max, s_max = max(v_max, keep_first), max(s_max, c_forced + 1)
    v_idx, v_key, v_m = _adaptive_ranked(v_score, v_mass, v_ceiling[None, :].expand(B, H), v_max)
    c_idx, c_key, c_m = _adaptive_ranked(c_score, c_mass, s_ceiling[None, :].expand(B, H), s_max)

    # joint ranking in mass per tile; the threshold key is the one where the target is reached
    key = torch.cat([v_key, c_key], dim=-1)
    mass = torch.cat([v_m, c_m], dim=-1)
    key_sorted, order = torch.sort(key, dim=-1, descending=True)
    reached = torch.cumsum(mass.gather(-1, order), dim=-1) >= gamma * total
    # first position where the target is reached (the last one if it never is)
    n_take = torch.where(reached.any(-1), reached.float().argmax(-1), key.shape[-1] - 1)
    tau = key_sorted.gather(-1, n_take[..., None]).clamp_max(FORCED)  # floors always stay
    keep_v = (v_key >= tau) & (v_key > float("-inf"))
    keep_c = (c_key >= tau) & (c_key > float("-inf"))
    cols = _adaptive_sorted_desc(v_idx, keep_v)
    diags = _adaptive_sorted_desc(c_idx, keep_c, BLOCK_N)
    return cols, keep_v.sum(-1, dtype=torch.int32), diags, keep_c.sum(-1, dtype=torch.int32)
