"""Adaptive, tile-aware Vertical-Slash selection: the fewest lines that hold a mass target.

MInference keeps a fixed number of columns and diagonals per head.  Two things waste work:

* **units** — the kernel computes diagonals as 64-key chunks relative to each query block
  (see :mod:`.index`): a lone diagonal costs a whole 64x64 tile, and every other diagonal in
  that tile comes for free.  So slashes are chosen here as *chunks*: chunk ``c`` is the tile
  of keys ``qs - 64c + [0, 64)`` of the block starting at ``qs``, i.e. diagonal ``64c`` in
  the index builder's terms.  Its estimated mass is the part of each diagonal
  ``d = 64c + delta`` that falls inside it (``(64 - delta) / 64`` of the rows) plus the part
  of diagonal ``64(c-1) + delta`` that spills into it (``delta / 64``).
* **budgets** — most heads need far fewer lines than the profile budget for most prompts.
  Columns (1/64 tile per block each) and chunks (1 tile each) are ranked together by mass
  per tile, and the fewest whose summed estimated mass reaches ``gamma`` of the estimate
  rows' total are kept (FlexPrefill's cumulative-mass rule, in kernel cost units).  The
  profile budgets stay as ceilings (columns; chunks), the sinks and the nearest diagonals
  as floors.

Everything is batched over sequences and heads with fixed shapes (no host sync): the
outputs have the same form as :func:`.estimate.select_vertical_slash` and feed the same
index builder.
"""

from __future__ import annotations

import torch

from ..layout import BLOCK_N, SeqLayout
from .estimate import FORCED, INVALID

# A far diagonal crosses the 64 estimate rows as 64 columns of one row each, whose mass per
# tile equals the diagonal's: but only the diagonal carries over to other query blocks.
# Columns therefore need twice a chunk's mass per tile to rank above it.
COLUMN_DISCOUNT = 0.5


def chunk_masses(slash: torch.Tensor) -> torch.Tensor:
    """Estimated mass of each relative key chunk, ``[B, H, cdiv(kv, 64) + 1]`` float32."""
    B, H, kv = slash.shape
    n = -(-kv // BLOCK_N)
    s = torch.nn.functional.pad(slash, (0, n * BLOCK_N - kv)).view(B, H, n, BLOCK_N)
    w_in = (BLOCK_N - torch.arange(BLOCK_N, device=slash.device, dtype=slash.dtype)) / BLOCK_N
    inside = (s * w_in).sum(-1)
    spill = (s * (1.0 - w_in)).sum(-1)
    out = torch.zeros(B, H, n + 1, dtype=slash.dtype, device=slash.device)
    out[..., :n] += inside
    out[..., 1:] += spill
    return out


def _ranked(score: torch.Tensor, mass: torch.Tensor, ceiling: torch.Tensor, k_max: int
            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Top ``k_max`` entries by ``score``: (index, ranking key, mass), beyond-ceiling ones -inf."""
    k = min(k_max, score.shape[-1])
    key, idx = torch.topk(score, k, dim=-1, sorted=True)
    rank = torch.arange(k, device=score.device)
    ok = (rank[None, None, :] < ceiling[..., None]) & (key > float("-inf"))
    key = torch.where(ok, key, float("-inf"))
    return idx, key, torch.where(ok, mass.gather(-1, idx), 0.0)


def _sorted_desc(idx: torch.Tensor, keep: torch.Tensor, scale: int = 1) -> torch.Tensor:
    """Kept indices (times ``scale``) sorted descending, ``INVALID`` after them."""
    out = torch.where(keep, idx * scale, torch.full_like(idx, INVALID))
    return torch.sort(out, dim=-1, descending=True).values.to(torch.int32).contiguous()


def select_adaptive(
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
    """Fewest columns and diagonal chunks per (sequence, head) holding ``gamma`` of the mass.

    ``v_ceiling``/``s_ceiling`` (``[H]``) cap columns and chunks; ``v_max``/``s_max`` their
    maxima.  Returns ``(cols, n_cols, diags, n_diags)`` like ``select_vertical_slash``, with
    every diagonal a multiple of 64 (one relative chunk each); the lists are as wide as the
    candidates (at most ``v_max`` columns, at most ``s_max`` chunks), not the budgets.
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
    v_score = torch.where((pos < keep_first)[None, None, :], FORCED + (keep_first - pos), v_mass * (BLOCK_N * COLUMN_DISCOUNT))
    v_score = torch.where(inside[:, None, :], v_score, float("-inf"))
    v_mass = torch.where((pos < keep_first)[None, None, :], vertical, v_mass)

    # chunks: the ones holding the nearest keep_diag diagonals are forced
    c_mass = chunk_masses(slash)
    n_chunk = c_mass.shape[-1]
    cpos = torch.arange(n_chunk, device=dev)
    c_forced = (keep_diag - 1) // BLOCK_N + 1 if keep_diag > 0 else -1
    c_inside = cpos[None, :] * BLOCK_N < kv_len[:, None] + BLOCK_N
    c_score = torch.where((cpos <= c_forced)[None, None, :], FORCED + (c_forced - cpos).to(c_mass.dtype),
                          c_mass)
    c_score = torch.where(c_inside[:, None, :], c_score, float("-inf"))

    # floors above a head's budget win: the budget is a ceiling on what the estimate adds
    v_ceiling = v_ceiling.to(dev).clamp_min(keep_first)
    s_ceiling = s_ceiling.to(dev).clamp_min(c_forced + 1)
    v_max, s_max = max(v_max, keep_first), max(s_max, c_forced + 1)
    v_idx, v_key, v_m = _ranked(v_score, v_mass, v_ceiling[None, :].expand(B, H), v_max)
    c_idx, c_key, c_m = _ranked(c_score, c_mass, s_ceiling[None, :].expand(B, H), s_max)

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
    cols = _sorted_desc(v_idx, keep_v)
    diags = _sorted_desc(c_idx, keep_c, BLOCK_N)
    return cols, keep_v.sum(-1, dtype=torch.int32), diags, keep_c.sum(-1, dtype=torch.int32)
