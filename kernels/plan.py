"""Planning a layer: per-head patterns -> one work list for the whole layer.

``LayerPatterns`` holds the static part (which query heads use which pattern, and their
budgets), built once per layer from the profile.  :func:`plan_layer` runs the online part
for one batch: the Vertical-Slash estimate and selection, the Block-Sparse pooled scores,
the index builders, the merge into one list over all heads and the density guard.  Every
step is a batched launch over heads and sequences with fixed shapes, so a plan costs a
handful of kernel launches and never waits on the host.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cache, partial
from typing import Callable

import torch

from .a_shape.index import build_a_shape_worklist
from .antidiagonal.columns import add_tile_columns
from .antidiagonal.index import antidiagonal_worklist, check_tau_and_stride, parse_launch
from .block_sparse.index import block_sparse_worklist, extra_block_tiles, pool_keys
from .layout import BLOCK_M, KVSource, SeqLayout
from .page_lists.index import group_rows
from .vertical_slash.adaptive import select_adaptive, union_selections
from .vertical_slash.estimate import estimate_vertical_slash, select_vertical_slash
from .vertical_slash.index import build_vertical_slash_worklist
from .worklist import WorkList, apply_density_guard, dense_worklist, merge_worklists

VERTICAL_SLASH = "vertical_and_slash"
BLOCK_SPARSE = "block_sparse"
A_SHAPE = "stream_llm"
DENSE = "dense"
PATTERNS = (VERTICAL_SLASH, BLOCK_SPARSE, A_SHAPE, DENSE)
# group of the Vertical-Slash heads pinned to MInference's fixed top-k (``HeadPattern.fixed``)
# in a mode that would select theirs otherwise (adaptive, antidiagonal)
PINNED = "vertical_and_slash fixed"

MIN_VERTICAL, MIN_SLASH = 30, 50  # floors of the Vertical-Slash budgets
FLOOR = "vertical_and_slash floor"  # budgets key of the adaptive mode's fixed floor
KEEP_FIRST_KEYS, KEEP_NEAR_DIAGS = 30, 100


@dataclass(frozen=True)
class HeadPattern:
    """One head's pattern: (vertical, slash) budgets, (top-k blocks, -), (sink, local) or dense.

    ``fixed`` pins a Vertical-Slash head to MInference's fixed top-k whatever the layer's
    selection mode: the few heads that look far back for single tokens (retrieval heads)
    keep the estimate's exact columns while the rest use cheaper per-block lists.
    """

    kind: str
    a: int = 0
    b: int = 0
    fixed: bool = False

    def __post_init__(self) -> None:
        if self.kind not in PATTERNS:
            raise ValueError(f"unknown pattern {self.kind!r}; expected one of {PATTERNS}")
        if self.fixed and self.kind != VERTICAL_SLASH:
            raise ValueError(f"only {VERTICAL_SLASH} heads can be pinned to fixed top-k, "
                             f"not {self.kind}")


@dataclass(frozen=True)
class AntidiagonalRule:
    """Per-block selection for Vertical-Slash heads (:mod:`.antidiagonal`): each 64-row
    query block keeps its fewest key tiles holding ``tau`` of its attention as stride-``stride``
    antidiagonal scores estimate it, with ``sink_tiles`` first tiles and its own tiles plus
    ``local_tiles`` before them always kept, at most ``max_tiles`` tiles per block;
    ``launch``: the estimate kernel's launch option (:func:`.antidiagonal.index.parse_launch`,
    "" for the defaults); ``columns`` > 0 adds the Vertical-Slash estimate's top ``columns``
    columns of the chunk's last 64 rows to every block (:mod:`.antidiagonal.columns`);
    ``fa3_groups``: the blocks FA3's page lists run as one row group
    (:func:`.page_lists.group_rows`) share one selection, since FA3 computes their union."""

    tau: float = 0.9
    stride: int = 8
    sink_tiles: int = 1
    local_tiles: int = 1
    max_tiles: int = 2048
    launch: str = ""
    columns: int = 0
    fa3_groups: bool = False

    def __post_init__(self) -> None:
        check_tau_and_stride(self.tau, self.stride)
        parse_launch(self.launch)
        if self.sink_tiles < 0 or self.local_tiles < 0 or self.max_tiles < 1:
            raise ValueError("need sink_tiles >= 0, local_tiles >= 0 and max_tiles >= 1")
        if self.columns < 0:
            raise ValueError(f"columns must be >= 0, got {self.columns}")


@dataclass
class LayerPatterns:
    """The heads of one layer grouped by pattern, with their budgets on the device.

    ``gamma`` switches Vertical-Slash heads from fixed budgets (MInference) to adaptive,
    tile-aware selection (:mod:`.vertical_slash.adaptive`): the budgets become ceilings and
    each prompt keeps the fewest columns and diagonal chunks holding ``gamma`` of the mass.
    ``floor_scale`` > 0 adds, under the adaptive selection, MInference's fixed top-k at that
    fraction of each budget (the estimate's last 64 rows misjudge what other query blocks
    need; a fixed floor keeps their recall).  ``extra_blocks`` > 0 gives every
    Vertical-Slash query block that many far key tiles more, its own best by pooled Q.K
    (read by the FA3 page lists only; see :attr:`.worklist.WorkList.extra`).
    ``antidiagonal`` replaces both selections of Vertical-Slash heads by per-block lists
    from the blocks' own antidiagonal scores (:class:`AntidiagonalRule`).  Heads with
    ``HeadPattern.fixed`` keep the fixed top-k in either mode (group :data:`PINNED`).
    """

    num_heads: int
    gamma: float | None = None
    keep_first: int = KEEP_FIRST_KEYS  # always-kept first keys (sinks) of Vertical-Slash heads
    keep_diag: int = KEEP_NEAR_DIAGS  # always-kept nearest diagonals (local window)
    floor_scale: float = 0.0  # adaptive mode: fixed top-k at this fraction of the budgets
    extra_blocks: int = 0  # Vertical-Slash heads: far key tiles per query block, pooled
    antidiagonal: AntidiagonalRule | None = None  # Vertical-Slash heads: per-block lists
    groups: dict[str, torch.Tensor] = field(default_factory=dict)  # kind -> head ids (int64)
    budget_a: dict[str, torch.Tensor] = field(default_factory=dict)  # kind -> [n] int64
    budget_b: dict[str, torch.Tensor] = field(default_factory=dict)
    max_a: dict[str, int] = field(default_factory=dict)
    max_b: dict[str, int] = field(default_factory=dict)

    @staticmethod
    def from_heads(patterns: list[HeadPattern], device: torch.device | str,
                   gamma: float | None = None, keep_first: int = KEEP_FIRST_KEYS,
                   keep_diag: int = KEEP_NEAR_DIAGS, floor_scale: float = 0.0,
                   extra_blocks: int = 0, antidiagonal: AntidiagonalRule | None = None
                   ) -> "LayerPatterns":
        if gamma is not None and not 0.0 < gamma <= 1.0:
            raise ValueError(f"gamma must be in (0, 1], got {gamma}")
        if not 0.0 <= floor_scale <= 1.0:
            raise ValueError(f"floor_scale must be in [0, 1], got {floor_scale}")
        if extra_blocks < 0:
            raise ValueError(f"extra_blocks must be >= 0, got {extra_blocks}")
        if keep_first < 0 or keep_diag < 1:
            raise ValueError(f"need keep_first >= 0 and keep_diag >= 1, got {keep_first}, "
                             f"{keep_diag}")
        lp = LayerPatterns(num_heads=len(patterns), gamma=gamma, keep_first=keep_first,
                           keep_diag=keep_diag, floor_scale=floor_scale if gamma else 0.0,
                           extra_blocks=extra_blocks, antidiagonal=antidiagonal)
        pin = gamma is not None or antidiagonal is not None  # else fixed is the mode's own

        def group(p: HeadPattern) -> str:
            return PINNED if p.fixed and pin else p.kind

        for kind in (*PATTERNS, PINNED):
            ids = [h for h, p in enumerate(patterns) if group(p) == kind]
            if not ids:
                continue
            a = [patterns[h].a for h in ids]
            b = [patterns[h].b for h in ids]
            if kind in (VERTICAL_SLASH, PINNED):
                a = [max(MIN_VERTICAL, x) for x in a]
                b = [max(MIN_SLASH, x) for x in b]
            lp.groups[kind] = torch.tensor(ids, dtype=torch.long, device=device)
            lp.budget_a[kind] = torch.tensor(a, dtype=torch.long, device=device)
            lp.budget_b[kind] = torch.tensor(b, dtype=torch.long, device=device)
            lp.max_a[kind], lp.max_b[kind] = max(a), max(b)
            if kind == VERTICAL_SLASH and lp.floor_scale > 0:
                fa = [max(MIN_VERTICAL, round(x * lp.floor_scale)) for x in a]
                fb = [max(MIN_SLASH, round(x * lp.floor_scale)) for x in b]
                lp.budget_a[FLOOR] = torch.tensor(fa, dtype=torch.long, device=device)
                lp.budget_b[FLOOR] = torch.tensor(fb, dtype=torch.long, device=device)
                lp.max_a[FLOOR], lp.max_b[FLOOR] = max(fa), max(fb)
        return lp


def plan_layer(q: torch.Tensor, kv: KVSource, layout: SeqLayout, patterns: LayerPatterns,
               sm_scale: float | None = None, max_density: float | None = None,
               row_lse_fn: Callable | None = None) -> WorkList:
    """Work list of every head of a layer for this batch (the "plan" half of the kernel).

    ``row_lse_fn(q, kv, layout, heads, sm_scale)`` (e.g. FA3's
    :func:`.vertical_slash.estimate_row_lse`) gives the Vertical-Slash estimate its rows'
    log-sum-exp instead of its first pass.
    """
    parts: list[tuple[torch.Tensor, WorkList]] = []
    # mean key per 64-key tile: pooled once for the extra tiles and the Block-Sparse heads
    pooled_keys = cache(lambda: pool_keys(kv, layout, q.shape[2], q.device))
    for kind, heads in patterns.groups.items():
        if kind == VERTICAL_SLASH and patterns.antidiagonal is not None:
            rule = patterns.antidiagonal
            wl = antidiagonal_worklist(q, kv, layout, heads, rule.tau, rule.max_tiles,
                                       rule.stride, rule.sink_tiles, rule.local_tiles,
                                       sm_scale, rule.launch, group_blocks=(
                                           group_rows(q.shape[2]) // BLOCK_M
                                           if rule.fa3_groups else 1))
            if rule.columns:
                wl = _with_columns(wl, q, kv, layout, heads, rule, patterns, sm_scale)
        elif kind in (VERTICAL_SLASH, PINNED):
            row_lse = row_lse_fn(q, kv, layout, heads, sm_scale) if row_lse_fn else None
            vertical, slash = estimate_vertical_slash(q, kv, layout, heads, sm_scale,
                                                      row_lse=row_lse)
            select = select_vertical_slash if patterns.gamma is None or kind == PINNED else \
                partial(select_adaptive, gamma=patterns.gamma)
            sel = select(
                vertical, slash, layout, patterns.budget_a[kind], patterns.budget_b[kind],
                patterns.max_a[kind], patterns.max_b[kind], keep_first=patterns.keep_first,
                keep_diag=patterns.keep_diag)
            if FLOOR in patterns.budget_a and kind == VERTICAL_SLASH:
                sel = union_selections(sel, select_vertical_slash(
                    vertical, slash, layout, patterns.budget_a[FLOOR],
                    patterns.budget_b[FLOOR], patterns.max_a[FLOOR], patterns.max_b[FLOOR],
                    keep_first=patterns.keep_first, keep_diag=patterns.keep_diag))
            wl = build_vertical_slash_worklist(*sel, layout)
        elif kind == BLOCK_SPARSE:
            wl = block_sparse_worklist(q, kv, layout, heads, patterns.budget_a[kind],
                                       patterns.max_a[kind], sm_scale, kbar=pooled_keys())
        elif kind == A_SHAPE:
            wl = build_a_shape_worklist(layout, patterns.budget_a[kind], patterns.budget_b[kind],
                                        patterns.max_a[kind], patterns.max_b[kind])
        else:
            wl = dense_worklist(layout, heads.numel())
        if kind in (VERTICAL_SLASH, PINNED) and patterns.extra_blocks:
            wl.extra = extra_block_tiles(q, kv, layout, heads, patterns.extra_blocks,
                                         patterns.keep_diag, sm_scale, kbar=pooled_keys())
        parts.append((heads, wl))
    if len(parts) == 1 and parts[0][0].numel() == patterns.num_heads:
        merged = parts[0][1]  # one pattern for every head (groups list heads in order)
    else:
        merged = merge_worklists(parts, patterns.num_heads, layout.num_blocks)
    if max_density is not None:
        merged = apply_density_guard(merged, layout, max_density)
    return merged


def _with_columns(wl: WorkList, q: torch.Tensor, kv: KVSource, layout: SeqLayout,
                  heads: torch.Tensor, rule: AntidiagonalRule, patterns: LayerPatterns,
                  sm_scale: float | None) -> WorkList:
    """Antidiagonal lists plus the top ``rule.columns`` columns of the Vertical-Slash
    estimate (the chunk's last 64 rows against every key; its diagonals are not used)."""
    vertical, slash = estimate_vertical_slash(q, kv, layout, heads, sm_scale)
    n = heads.numel()
    cols, n_cols, _, _ = select_vertical_slash(
        vertical, slash, layout, torch.full((n,), rule.columns, device=q.device),
        torch.full((n,), 1, device=q.device), rule.columns, 1,
        keep_first=patterns.keep_first, keep_diag=1)
    return add_tile_columns(wl, cols, n_cols, layout, rule.max_tiles)
