"""Offline recall study: how much real attention each Vertical-Slash selection keeps.

Runs a real model with transformers (CPU is enough for a 0.5B model at 8K tokens), captures
every layer's post-RoPE queries and keys, and for each selection rule (MInference's fixed
budgets, adaptive with several gamma) measures on sampled 64-row query blocks

* recall: the share of each row's true (fp32, causal softmax) attention that falls on the
  keys the kernel would compute (diagonals expanded to the 64-key chunks the index builder
  makes, plus the kept columns);
* key density: those keys over the causal keys of the block.

This explains accuracy results without a GPU: a rule whose recall drops on some layers
loses answers even when passkey retrieval still works.

    python benchmarks/recall_study.py MODEL_DIR --length 8192 --out study.json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from far_line_summary import mass_of, rank_heads  # noqa: E402
from vllm_minference.kernels import KVSource, SeqLayout  # noqa: E402
from vllm_minference.kernels.layout import BLOCK_M, BLOCK_N  # noqa: E402
from vllm_minference.kernels.vertical_slash import adaptive  # noqa: E402
# the torch definitions of the kernels' index steps: the study runs on a CPU without Triton
from vllm_minference.kernels.vertical_slash.reference import (  # noqa: E402
    estimate_reference, merge_diagonals_reference as merge_diagonals,
    select_adaptive_reference, select_vertical_slash_reference as select_vertical_slash)
from vllm_minference.search import (block_recalls, capture_attention, sample_blocks,  # noqa: E402
                                    weighted_recall)

BUDGET = (1000, 6096)


def rules(gammas: list[float], scales: list[float] = (), floor_scales: list[float] = (),
          part_floors: bool = False, columns: list[int] = ()) -> dict:
    """name -> select(vertical, slash, layout, H) returning (cols, n_cols, diags, n_diags)."""
    def fixed_rule(scale, parts=(1.0, 1.0)):
        def fixed(v, s, layout, H):
            a = max(30, round(BUDGET[0] * scale * parts[0]))  # never below the forced lines
            b = max(100, round(BUDGET[1] * scale * parts[1]))
            return select_vertical_slash(v, s, layout, torch.full((H,), a), torch.full((H,), b),
                                         a, b)
        return fixed

    def adaptive_rule(gamma, discount=None, keep_first=30, keep_diag=100):
        def sel(v, s, layout, H):
            old = adaptive.COLUMN_DISCOUNT
            if discount is not None:
                adaptive.COLUMN_DISCOUNT = discount
            try:
                b = torch.full((H,), BUDGET[0]), torch.full((H,), BUDGET[1])
                return select_adaptive_reference(v, s, layout, b[0], b[1], *BUDGET, gamma=gamma,
                                                 keep_first=keep_first, keep_diag=keep_diag)
            finally:
                adaptive.COLUMN_DISCOUNT = old
        return sel
    out = {"fixed 1000/6096": fixed_rule(1.0), "fixed 250/1524 (x0.25)": fixed_rule(0.25)}
    for sc in scales:
        out[f"fixed x{sc}"] = fixed_rule(sc)
    mid = gammas[len(gammas) // 2]  # the variants below take the middle gamma
    for g in gammas:
        out[f"adaptive g={g}"] = adaptive_rule(g)
    out[f"adaptive g={gammas[-1]} no column discount"] = adaptive_rule(gammas[-1], 1.0)
    # floors of an A-shape (128 sink keys, 1024 local keys) under the adaptive selection
    out["A-shape floor only (128 + 1024)"] = adaptive_rule(1e-6, keep_first=128, keep_diag=1024)
    for g in gammas:
        out[f"adaptive g={g} + A-shape floor"] = adaptive_rule(g, keep_first=128, keep_diag=1024)
    # the same selection from an estimate over 4 query blocks spread over the prompt
    out[f"adaptive g={mid} {MULTI}"] = adaptive_rule(mid)
    out[f"adaptive g={mid} + A-shape floor {MULTI}"] = adaptive_rule(
        mid, keep_first=128, keep_diag=1024)
    # adaptive over a fixed-budget floor (MInference's top-k at a fraction of the budget)
    for f in floor_scales:
        floor = fixed_rule(f)
        for g, kf, kd, tag in ((mid, 30, 100, ""),
                               (mid, 128, 1024, " + A-shape floor")):
            out[f"adaptive g={g}{tag} + fixed x{f} floor"] = union_rule(
                adaptive_rule(g, keep_first=kf, keep_diag=kd), floor)
    for n in columns:  # the chunk's top-n columns alone: unioned with the antidiagonal tiles
        out[columns_name(n)] = fixed_columns_rule(n)
    if part_floors:  # which half of MInference's top-k carries what the adaptive rule misses:
        # its 1000 columns alone (a column costs a row one key) or its 6096 diagonals alone
        ad = adaptive_rule(mid, keep_first=128, keep_diag=1024)
        for part, parts in (("columns", (1.0, 0.0)), ("diagonals", (0.0, 1.0))):
            out[f"adaptive g={mid} + A-shape floor + fixed {part} part floor"] = (
                union_rule(ad, fixed_rule(1.0, parts)))
    return out


def union_rule(rule, floor):
    """A rule that keeps the lines of both ``rule`` and ``floor``."""
    return lambda v, s, layout, H: adaptive.union_selections(rule(v, s, layout, H),
                                                            floor(v, s, layout, H))


MULTI = "[4-block estimate]"
COLUMNS = "columns of the chunk's last rows"


def columns_name(n: int) -> str:
    return f"{COLUMNS}: top {n}"


def fixed_columns_rule(n: int):
    """MInference's top-``n`` columns (first 30 keys forced) of the chunk's last 64 rows,
    without diagonals: the keys its question-like rows read, for every block of the chunk."""
    def sel(v, s, layout, H):
        cols, n_cols, diags, n_diags = select_vertical_slash(
            v, s, layout, torch.full((H,), n), torch.full((H,), 1), n, 1)
        return cols, n_cols, diags, torch.zeros_like(n_diags)
    return sel


def estimate_blocks(q, k, scale, starts: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Column and diagonal sums of the attention of several 64-row blocks (not only the
    last), each block normalised to 64 rows of mass so the total matches the real estimate."""
    N, H, D = q.shape
    G = H // k.shape[1]
    kf = k.float().transpose(0, 1).repeat_interleave(G, 0)
    vert = torch.zeros(1, H, N)
    slash = torch.zeros(1, H, N)
    for r0 in starts:
        r1 = min(N, r0 + BLOCK_M)
        sc = q[r0:r1].float().transpose(0, 1) @ kf[:, :r1].transpose(1, 2) * scale
        causal = torch.arange(r1)[None, :] <= torch.arange(r0, r1)[:, None]
        p = torch.softmax(sc.masked_fill(~causal, float("-inf")), -1) / len(starts)
        vert[0, :, :r1] += p.sum(1)
        for i in range(r1 - r0):
            pos = r0 + i
            slash[0].index_add_(1, pos - torch.arange(pos + 1), p[:, i, : pos + 1])
    return vert, slash


def block_keys(sel, layout: SeqLayout, blocks: list[int], H: int, N: int) -> torch.Tensor:
    """``[H, S, N]`` bool: keys the kernel computes for each sampled block (one sequence)."""
    cols, n_cols, diags, n_diags = sel
    merged = merge_diagonals(diags, n_diags)
    out = torch.zeros(H, len(blocks), N + 1, dtype=torch.bool)
    offs = torch.arange(BLOCK_N)
    for h in range(H):
        nc = int(merged["n_chunks"][0, h])
        ch = merged["chunks"][0, h, :nc].long()  # (start, lo) relative to the block start
        c = cols[0, h, : int(n_cols[0, h])].long()
        for si, blk in enumerate(blocks):
            qs = blk * BLOCK_M
            last = min(N - 1, qs + BLOCK_M - 1)
            rel = ch[:, :1] + offs  # [nc, 64]
            key = qs + rel
            keep = (rel >= ch[:, 1:]) & (key >= 0) & (key <= last)
            out[h, si, torch.where(keep, key, N).reshape(-1)] = True
            out[h, si, c[c <= last]] = True
    return out[..., :N]


def block_sparse_keys(q, k, scale: float, blocks: list[int], topk: list[int], N: int
                      ) -> torch.Tensor:
    """``[H, S, N]`` keys of Block-Sparse top-``topk[h]`` for the sampled blocks (one sequence,
    ``q_len == kv_len``): mean-pooled query block against mean-pooled 64-key tiles, the sink
    tile and the block's own tiles always kept — the torch reading of ``block_sparse``."""
    H, G = q.shape[1], q.shape[1] // k.shape[1]
    n_tiles = -(-N // BLOCK_N)
    kbar = torch.nn.functional.pad(k.float(), (0, 0, 0, 0, 0, n_tiles * BLOCK_N - N))
    counts = torch.full((n_tiles,), float(BLOCK_N))
    counts[-1] = N - (n_tiles - 1) * BLOCK_N
    kbar = kbar.view(n_tiles, BLOCK_N, *k.shape[1:]).sum(1) / counts[:, None, None]
    kbar = kbar.repeat_interleave(G, 1)  # [tiles, H, D]
    out = torch.zeros(H, len(blocks), N, dtype=torch.bool)
    for si, blk in enumerate(blocks):
        r0, last = blk * BLOCK_M, min(N - 1, blk * BLOCK_M + BLOCK_M - 1)
        qbar = q[r0:last + 1].float().mean(0)  # [H, D]
        sc = torch.einsum("hd,thd->ht", qbar, kbar[: last // BLOCK_N + 1]) * scale
        for t in {0, r0 // BLOCK_N, last // BLOCK_N}:
            sc[:, t] = float("inf")
        order = sc.argsort(dim=-1, descending=True)  # [H, tiles]
        tiles = torch.zeros(H, n_tiles * BLOCK_N, dtype=torch.bool)
        for h in range(H):
            for t in order[h, :max(topk[h], 3)].tolist():
                tiles[h, t * BLOCK_N:(t + 1) * BLOCK_N] = True
        out[:, si] = tiles[:, :N] & (torch.arange(N) <= last)
    return out


def _tile_shares(q, k_groups, scale: float, blk: int, N: int, S: int):
    """One block's antidiagonal estimate: ``[H, tiles]`` each tile's share of the block's
    attention (summing to 1; ``None`` for a block with fewer rows than ``S``) and the
    block's last row."""
    H = q.shape[1]
    r0 = blk * BLOCK_M
    last = min(N - 1, r0 + BLOCK_M - 1)
    n_keys = (last // S + 1) * S  # whole strided groups up to the block's last row
    n_rows = (last + 1 - r0) // S * S
    if n_rows == 0:
        return None, last
    qa = q[r0:r0 + n_rows].float().view(n_rows // S, S, H, -1).flip(1)  # reverse in group
    sc = torch.einsum("aihd,bihd->hab", qa, k_groups[:n_keys // S]) * scale / S
    # [H, A, B]: the antidiagonal sums
    a_last = (r0 + (torch.arange(n_rows // S) + 1) * S - 1)  # last row of each row group
    b_first = torch.arange(n_keys // S) * S
    sc = sc.masked_fill(b_first[None, None, :] > a_last[None, :, None], float("-inf"))
    p = torch.softmax(sc, dim=-1).sum(1)  # [H, B]
    n_tiles = -(-n_keys // BLOCK_N)
    p = torch.nn.functional.pad(p, (0, n_tiles * (BLOCK_N // S) - p.shape[1]))
    tile_mass = p.view(H, n_tiles, BLOCK_N // S).sum(-1)  # [H, tiles]
    return tile_mass / tile_mass.sum(-1, keepdim=True), last


def _strided_keys(k, S: int, G: int) -> torch.Tensor:
    """Every key in groups of ``S`` (``[groups, S, H, D]``, in the query heads' order)."""
    k_groups = torch.nn.functional.pad(k.float(), (0, 0, 0, 0, 0, -k.shape[0] % S))
    return k_groups.view(-1, S, k.shape[1], k.shape[2]).repeat_interleave(G, 2)


def _fewest_tiles(w: torch.Tensor, tau: float, sink_tiles: int, own: int,
                  local_tiles: int) -> torch.Tensor:
    """``[H, tiles]`` kept by one block: the fewest tiles reaching ``tau`` of its shares
    ``w``, plus ``sink_tiles`` first and ``local_tiles`` nearest tiles."""
    H, n_tiles = w.shape
    order = w.argsort(dim=-1, descending=True)
    cum = w.gather(1, order).cumsum(-1)
    keep_n = (cum < tau).sum(-1) + 1  # fewest tiles reaching tau
    rank = torch.empty_like(order).scatter_(1, order, torch.arange(n_tiles).expand(H, -1))
    keep = rank < keep_n[:, None]
    keep[:, :min(sink_tiles, own + 1)] = True
    keep[:, max(0, own - local_tiles + 1):own + 1] = True
    return keep


def _shared_tiles(ws: list[torch.Tensor], tau: float, sink_tiles: int, owns: list[int],
                  local_tiles: int) -> torch.Tensor:
    """``[H, tiles]`` kept by a group of blocks sharing one selection (the plugin's
    ``antidiagonal_shared``): tiles ranked by the blocks' mean share, the fewest that
    give every block ``tau`` of its own, plus the sinks and the group's local band."""
    n_tiles = owns[-1] + 1
    w = torch.stack([torch.nn.functional.pad(x, (0, n_tiles - x.shape[1])) for x in ws], 1)
    H = w.shape[0]  # w: [H, B, tiles], 0 past each block's edge
    forced = torch.zeros(n_tiles, dtype=torch.bool)
    forced[:sink_tiles] = True
    forced[max(0, owns[0] - local_tiles + 1):] = True
    keep = forced.expand(H, -1).clone()
    if forced.all():
        return keep
    got0 = w[:, :, forced].sum(-1)  # [H, B]
    score = w.mean(1).masked_fill(forced, -1.0)
    order = score.argsort(dim=-1, descending=True)[:, :int((~forced).sum())]
    cum = got0[:, :, None] + w.gather(2, order[:, None, :].expand(-1, w.shape[1], -1)).cumsum(-1)
    enough = (cum >= tau - 1e-9).all(1)  # [H, others]: every block reaches tau
    n = torch.where(enough.any(-1), enough.float().argmax(-1) + 1, enough.shape[1])
    n = torch.where((got0 >= tau - 1e-9).all(1), 0, n)  # the forced tiles alone suffice
    take = torch.arange(order.shape[1])[None, :] < n[:, None]
    keep.scatter_(1, order, take | keep.gather(1, order))
    return keep


def antidiagonal_keys(q, k, scale: float, blocks: list[int], N: int, tau: float,
                      stride: int = 8, sink_tiles: int = 1, local_tiles: int = 2,
                      group: int = 1, shared: bool = False) -> torch.Tensor:
    """``[H, S, N]`` keys of a per-block selection from antidiagonal scores (XAttention's
    estimate, read in torch): for each sampled 64-row block, the scores of ``stride``-strided
    antidiagonals (``q[a*S + S-1-i] . k[b*S + i]`` summed over ``i``) give every row group
    ``a`` a softmax over the key positions ``b``; summed per 64-key tile, the block keeps its
    fewest tiles holding ``tau`` of that mass, plus ``sink_tiles`` first and ``local_tiles``
    nearest tiles.  Unlike the Vertical-Slash estimate it reads the block's own rows, so a
    block in the middle of a chunk chooses from its own attention, and a diagonal crosses
    every antidiagonal of the tiles it passes through.

    ``group`` > 1: the keys FA3's page lists compute, whose row groups of ``group`` blocks
    (from the prompt's first row) each attend to the union of their blocks' tiles, or with
    ``shared`` to one selection shared by those blocks (:func:`_shared_tiles`)."""
    H, G = q.shape[1], q.shape[1] // k.shape[1]
    S = stride
    out = torch.zeros(H, len(blocks), N, dtype=torch.bool)
    pos = torch.arange(N)
    k_groups = _strided_keys(k, S, G)
    n_blocks = -(-N // BLOCK_M)
    for si, blk in enumerate(blocks):
        g0 = blk // group * group
        members = list(range(g0, min(n_blocks, g0 + group)))  # FA3 runs them as one
        est = [_tile_shares(q, k_groups, scale, b, N, S) for b in members]
        last = est[members.index(blk)][1]
        if any(w is None for w, _ in est):
            out[:, si] = pos <= last
            continue
        owns = [b_last // BLOCK_N for _, b_last in est]
        if shared:
            keep = _shared_tiles([w for w, _ in est], tau, sink_tiles, owns, local_tiles)
        else:
            keep = torch.zeros(H, owns[-1] + 1, dtype=torch.bool)
            for (w, _), own in zip(est, owns):
                keep[:, :own + 1] |= _fewest_tiles(w, tau, sink_tiles, own, local_tiles)
        mask = keep.repeat_interleave(BLOCK_N, dim=1)
        mask = torch.nn.functional.pad(mask, (0, max(0, N - mask.shape[1])))[:, :N]
        out[:, si] = mask & (pos <= last)
    return out


def profile_keys(specs, v, s, layout: SeqLayout, blocks: list[int], N: int,
                 q=None, k=None, scale: float | None = None) -> torch.Tensor:
    """``[H, S, N]`` keys of a profile layer's heads: Vertical-Slash heads through the same
    selection as the plugin (per-head budgets), A-shape heads as their sink + window lists,
    Block-Sparse heads (with ``q``, ``k``) as their top-k pooled tiles."""
    H = len(specs)
    a = torch.tensor([max(30, sp.a) if sp.pattern == "vertical_and_slash" else 30 for sp in specs])
    b = torch.tensor([max(50, sp.b) if sp.pattern == "vertical_and_slash" else 50 for sp in specs])
    keys = block_keys(select_vertical_slash(v, s, layout, a, b, int(a.max()), int(b.max())),
                      layout, blocks, H, N)
    pos = torch.arange(N)
    bs = None  # Block-Sparse keys of every head, computed on the first such head
    for h, sp in enumerate(specs):
        if sp.pattern == "stream_llm":
            n_loc = max(1, -(-sp.b // BLOCK_N))
            for si, blk in enumerate(blocks):
                qs = blk * BLOCK_M
                last = min(N - 1, qs + BLOCK_M - 1)
                keys[h, si] = ((pos < sp.a) | (pos >= qs - BLOCK_N * (n_loc - 1))) & (pos <= last)
        elif sp.pattern == "block_sparse" and q is not None:
            if bs is None:
                bs = block_sparse_keys(q, k, scale, blocks, [sp.a for sp in specs], N)
            keys[h] = bs[h]
        elif sp.pattern != "vertical_and_slash":
            raise ValueError(f"pattern {sp.pattern} not covered by the study")
    return keys


def chunk_keys(q, k, scale, rule_fns, blocks: list[int], chunk: int, profiles=None,
               layer=None) -> list[tuple[str, torch.Tensor]]:
    """Keys per rule as vLLM's chunked prefill plans them: each sampled block gets the
    selection estimated from the last 64 rows of *its* ``chunk``-token prefill chunk
    (against the keys up to that chunk's end), not from the prompt's last 64 rows."""
    N, H, D = q.shape
    parts: dict[str, torch.Tensor] = {}
    for c0 in range(0, N, chunk):
        c1 = min(N, c0 + chunk)
        idx = [i for i, b in enumerate(blocks) if c0 <= b * BLOCK_M < c1]
        if not idx:
            continue
        layout_c = SeqLayout.from_lengths([c1 - c0], [c1], "cpu")
        kv = KVSource.contiguous(k[:c1], k[:c1], [c1])
        v, s = estimate_reference(q[c0:c1], kv, layout_c, list(range(H)), scale)
        v, s = v.float(), s.float()
        mine = [blocks[i] for i in idx]
        found = [(name, block_keys(fn(v, s, layout_c, H), layout_c, mine, H, N))
                 for name, fn in rule_fns.items() if MULTI not in name]
        found += [(name, profile_keys(prof.layers[layer], v, s, layout_c, mine, N, q, k, scale))
                  for name, prof in (profiles or {}).items()]
        for name, keys in found:
            if name not in parts:
                parts[name] = torch.zeros(H, len(blocks), N, dtype=torch.bool)
            parts[name][:, idx] = keys
    return list(parts.items())


def antidiagonal_name(tau: float, stride: int) -> str:
    return f"antidiagonal tau={tau}" + ("" if stride == 8 else f" stride={stride}")


@torch.no_grad()
def layer_stats(q, k, scale, rule_fns, n_blocks, profiles=None, layer=None,
                chunk: int | None = None, taus: list[float] = (),
                strides: list[int] = (8,), needle_rows: list[int] = (),
                targets: torch.Tensor | None = None, low: float = 0.8,
                fa3_group: int = 0) -> dict:
    """Per rule and head: mean recall of the sampled blocks, of the prompt's last blocks,
    of ``needle_rows`` (rows that must read one far line, e.g. variable tracking's chain
    lines; their blocks join the sample) overall and on the far ``targets`` keys
    (:func:`far_line_recall`), the share of rows below ``low``, and density.  ``fa3_group``
    > 1 adds, per antidiagonal rule, the keys FA3's page lists compute with row groups of
    that many blocks: the union of the blocks' lists, and one selection they share."""
    N, H, D = q.shape
    layout = SeqLayout.from_lengths([N], [N], "cpu")
    blocks = sample_blocks(layout.num_blocks, n_blocks)
    last_two = blocks[-2:]  # the question's blocks stay last (weighted_recall's final pair)
    blocks = sorted(set(blocks[:-2]) | {r // BLOCK_M for r in needle_rows}
                    - set(last_two)) + last_two
    if chunk:
        named_keys = chunk_keys(q, k, scale, rule_fns, blocks, chunk, profiles, layer)
    else:
        kv = KVSource.contiguous(k, k, [N])
        v, s = estimate_reference(q, kv, layout, list(range(H)), scale)
        v, s = v.float(), s.float()
        starts = [max(0, (N * f) // 4 // BLOCK_M * BLOCK_M) for f in (1, 2, 3)] + [N - BLOCK_M]
        v4, s4 = estimate_blocks(q, k, scale, starts)
        named_keys = []
        for name, fn in rule_fns.items():
            vv, ss = (v4, s4) if MULTI in name else (v, s)
            named_keys.append((name, block_keys(fn(vv, ss, layout, H), layout, blocks, H, N)))
        for name, prof in (profiles or {}).items():
            named_keys.append((name, profile_keys(prof.layers[layer], v, s, layout, blocks, N,
                                                  q, k, scale)))
    for tau in taus:  # per block from its own rows: the same in one step or in chunks
        for stride in strides:
            ad = antidiagonal_keys(q, k, scale, blocks, N, tau, stride)
            named_keys.append((antidiagonal_name(tau, stride), ad))
            if fa3_group > 1:  # what FA3 computes: its row groups' union, or one shared list
                for shared in (False, True):
                    named_keys.append((antidiagonal_name(tau, stride) + (
                        " shared" if shared else " fa3 union"), antidiagonal_keys(
                            q, k, scale, blocks, N, tau, stride, group=fa3_group,
                            shared=shared)))
            named_keys += [(f"{antidiagonal_name(tau, stride)} + {name}", ad | kk)
                           for name, kk in named_keys if name.startswith(COLUMNS)]
    keys = torch.stack([kk for _, kk in named_keys])  # [C, H, S, N]
    # the search's own recall: true causal softmax of the sampled blocks, fp32
    per_row = block_recalls(q, k, scale, layout, blocks, keys, per_row=True)  # [C, H, S, M]
    per_block = per_row.nanmean(dim=-1)  # [C, H, S]
    recall = per_block.mean(dim=-1)  # [C, H]
    low_share = (per_row < low).float().nansum((-1, -2)) / per_row[0, 0].isfinite().sum()
    pos = torch.tensor(blocks)[:, None] * BLOCK_M + torch.arange(BLOCK_M)  # [S, M]
    at_needle = torch.isin(pos, torch.tensor(list(needle_rows), dtype=torch.long))
    needle = per_row[:, :, at_needle].mean(-1) if at_needle.any() else None
    far = (far_line_recall(q, k, scale, blocks, keys, list(needle_rows), targets)
           if needle_rows and targets is not None else None)
    final = weighted_recall(per_block, 1.0)  # the prompt's last blocks only: its question
    # key density: computed keys over the mean causal keys of each block's rows
    ends = torch.tensor([min(N, (b + 1) * BLOCK_M) for b in blocks])
    n_rows = ends - torch.tensor(blocks) * BLOCK_M
    causal_keys = (ends - (n_rows - 1) / 2).clamp_min(1)
    density = (keys.sum(-1) / causal_keys).mean(-1).clamp_max(1.0)  # [C, H]
    return {name: dict(recall=recall[c].tolist(), final_recall=final[c].tolist(),
                       needle_recall=None if needle is None else needle[c].tolist(),
                       far_line_recall=None if far is None else far[c].tolist(),
                       low_share=low_share[c].tolist(),
                       density=density[c].tolist())
            for c, (name, _) in enumerate(named_keys)}


CHAIN_LINE = r"VAR [A-Z]{5} = VAR [A-Z]{5}\. "  # variable tracking's lines that point back
ANY_LINE = r"VAR [A-Z]{5} = [^.]*\. "  # and every line they may point to


def prompt_rows(tok, prompt: str, pattern: str) -> tuple[list[int], list[int]]:
    """Token ids of ``prompt`` and the positions of the tokens inside its matches of the
    regular expression ``pattern`` (e.g. the chain lines, whose rows must read a far line)."""
    import re
    enc = tok(prompt, add_special_tokens=False, return_offsets_mapping=True)
    spans = [m.span() for m in re.finditer(pattern, prompt)]
    rows = [i for i, (a, b) in enumerate(enc["offset_mapping"])
            if any(s <= a and b <= e for s, e in spans)]
    return enc["input_ids"], rows


def _far_attention(q, k, scale: float, r: int, targets: torch.Tensor, gap: int) -> torch.Tensor:
    """``[H, r + 1]``: row ``r``'s true attention (fp32, causal softmax) on the ``targets``
    keys more than ``gap`` positions back, zero elsewhere."""
    G = q.shape[1] // k.shape[1]
    kk = k[:r + 1].float().repeat_interleave(G, 1)  # [r+1, H, D]
    p = torch.softmax(torch.einsum("hd,nhd->hn", q[r].float(), kk) * scale, dim=-1)
    return p * (targets[:r + 1] & (torch.arange(r + 1) < r - gap))


def far_line_recall(q, k, scale: float, blocks: list[int], keys: torch.Tensor,
                    rows: list[int], targets: torch.Tensor, gap: int = 256) -> torch.Tensor:
    """``[C, H]``: of the attention ``rows`` pay to ``targets`` keys more than ``gap``
    positions back (variable tracking: a chain line reading the line it points to), the
    share each candidate's keys keep, summed over the rows (mass-weighted)."""
    kept = torch.zeros(keys.shape[0], q.shape[1])
    true = torch.zeros(q.shape[1])
    for r in rows:
        pf = _far_attention(q, k, scale, r, targets, gap)
        true += pf.sum(-1)
        kept += (pf[None] * keys[:, :, blocks.index(r // BLOCK_M), :r + 1]).sum(-1)
    return kept / true.clamp_min(1e-30)


def far_line_mass(q, k, scale: float, rows: list[int], targets: torch.Tensor,
                  gap: int = 256) -> torch.Tensor:
    """``[H]``: the mean share of a row's attention that each head pays to far ``targets``
    keys: how much a head does the lookup that variable tracking needs (a retrieval head)."""
    return sum(_far_attention(q, k, scale, r, targets, gap).sum(-1) for r in rows) / len(rows)


def write_retrieval_profile(mass: dict[int, list[float]], n_dense: int, path: str,
                            prompt: str, control_seed: int | None = None,
                            retrieval_as: str = "dense") -> None:
    """A profile for antidiagonal (or adaptive) mode: the ``n_dense`` heads with the most
    far-line attention dense (``retrieval_as="fixed"``: Vertical-Slash pinned to the fixed
    top-k, much cheaper at long lengths), every other head Vertical-Slash at MInference's
    default budget; each head's far-line mass is its ``score``.  ``control_seed``:
    ``n_dense`` heads drawn at random instead (the control: does the choice matter?)."""
    from vllm_minference.profiles import HeadSpec, Profile, ProfileMetadata, save_profile
    layers = sorted(mass)
    if layers != list(range(len(layers))):
        raise SystemExit("--retrieval-profile needs every layer captured (no --layers)")
    ranked = rank_heads(mass)
    if control_seed is not None:
        import random
        random.Random(control_seed).shuffle(ranked)
    chosen = set(ranked[:n_dense])

    def spec(li: int, h: int, m: float) -> HeadSpec:
        if (li, h) in chosen and retrieval_as == "dense":
            return HeadSpec(pattern="dense", score=round(m, 6))
        return HeadSpec(pattern="vertical_and_slash", a=BUDGET[0], b=BUDGET[1],
                        score=round(m, 6), fixed=True if (li, h) in chosen else None)
    heads = [[spec(li, h, m) for h, m in enumerate(mass[li])] for li in layers]
    who = (f"{n_dense} heads drawn at random (seed {control_seed}, the control)"
           if control_seed is not None else f"the {n_dense} heads with the most far-line "
           f"attention")
    save_profile(Profile(metadata=ProfileMetadata(
        source=f"benchmarks/recall_study.py: {who} {retrieval_as}, ranked on a {prompt} "
               f"prompt run dense",
        num_layers=len(layers),
        num_heads=len(heads[0])), layers=heads), path)


def chunked_causal_attention(module, query, key, value, attention_mask, scale: float,
                             rows: int = 512):
    """Causal attention 512 query rows at a time: a CPU cannot hold a full 8K x 8K score
    matrix per head several times over, which transformers' unfused CPU path would build."""
    B, H, L, D = query.shape
    g = H // key.shape[1]
    k = key.repeat_interleave(g, 1)
    v = value.repeat_interleave(g, 1)
    out = torch.empty_like(query)
    for r0 in range(0, L, rows):
        r1 = min(L, r0 + rows)
        mask = torch.arange(r1)[None, :] <= torch.arange(r0, r1)[:, None]
        out[:, :, r0:r1] = torch.nn.functional.scaled_dot_product_attention(
            query[:, :, r0:r1], k[:, :, :r1], v[:, :, :r1], attn_mask=mask, scale=scale)
    return out.transpose(1, 2).contiguous(), None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("model")
    ap.add_argument("--length", type=int, default=8192)
    ap.add_argument("--prompt", choices=["multivalue", "variable_tracking", "code"],
                    default="multivalue")
    ap.add_argument("--layers", type=int, nargs="*", default=None)
    ap.add_argument("--gammas", type=float, nargs="+", default=[0.9, 0.95, 0.99])
    ap.add_argument("--blocks", type=int, default=24)
    ap.add_argument("--profiles", nargs="*", default=[],
                    help="profile files (or bundled names) to measure as well")
    ap.add_argument("--scales", type=float, nargs="*", default=[],
                    help="extra fixed-budget scales to measure (e.g. 0.05 for a tight budget)")
    ap.add_argument("--only", nargs="*", default=[],
                    help="measure only the rules whose names contain one of these")
    ap.add_argument("--floor-scales", type=float, nargs="*", default=[],
                    help="adaptive selection over a fixed-budget floor at these scales")
    ap.add_argument("--part-floors", action="store_true",
                    help="adaptive + A-shape floors over MInference's columns alone and over "
                         "its diagonals alone")
    ap.add_argument("--chunk", type=int, default=None,
                    help="estimate per prefill chunk of this many tokens, as vLLM's chunked "
                         "prefill does (default: one estimate from the prompt's last rows)")
    ap.add_argument("--antidiagonal-taus", type=float, nargs="*", default=[],
                    help="per-block tile selection from antidiagonal scores "
                         "(XAttention's estimate) at these mass thresholds")
    ap.add_argument("--antidiagonal-strides", type=int, nargs="+", default=[8],
                    help="antidiagonal strides to measure each threshold at")
    ap.add_argument("--fa3-group", type=int, default=0,
                    help="also each antidiagonal rule as FA3's page lists compute it, with "
                         "row groups of this many 64-row blocks (3 at head size 64): the "
                         "union of their lists, and one selection shared by them")
    ap.add_argument("--columns", type=int, nargs="*", default=[],
                    help="also each antidiagonal rule unioned with the chunk's top-N columns "
                         "(from its last 64 rows, as the fixed mode estimates them)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the RULER-style prompt")
    ap.add_argument("--retrieval-profile", default=None,
                    help="variable tracking: write a profile whose --dense-heads heads with the "
                         "most far-line attention (retrieval heads) run dense, the others "
                         "Vertical-Slash at the default budget (capture every layer)")
    ap.add_argument("--dense-heads", type=int, default=16)
    ap.add_argument("--control-seed", type=int, default=None,
                    help="--retrieval-profile with that many heads drawn at random instead")
    ap.add_argument("--retrieval-as", choices=["dense", "fixed"], default="dense",
                    help="--retrieval-profile: the chosen heads dense, or Vertical-Slash "
                         "pinned to the fixed top-k (cheap at 1M)")
    ap.add_argument("--mass-from", default=None,
                    help="write --retrieval-profile from this study JSON's far-line mass "
                         "instead of running the model")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    if args.mass_from:
        if not args.retrieval_profile:
            raise SystemExit("--mass-from writes a --retrieval-profile: name one")
        with open(args.mass_from) as f:
            saved = json.load(f)
        write_retrieval_profile(mass_of(saved), args.dense_heads, args.retrieval_profile,
                                f"{saved['prompt']}, {saved['length']} tokens",
                                args.control_seed, args.retrieval_as)
        return
    from transformers import AutoModelForCausalLM, AutoTokenizer
    tok = AutoTokenizer.from_pretrained(args.model)
    needle_rows: list[int] = []
    targets = None
    if args.prompt == "code":
        from bench_kernels import code_tokens
        ids = code_tokens(tok, args.length).tolist()
    else:
        import random
        import bench_accuracy
        item = getattr(bench_accuracy, args.prompt)(bench_accuracy.PromptMaker(tok),
                                                    args.length, random.Random(args.seed))
        ids, needle_rows = prompt_rows(tok, item["prompt"], CHAIN_LINE)
        targets = torch.zeros(len(ids), dtype=torch.bool)
        targets[prompt_rows(tok, item["prompt"], ANY_LINE)[1]] = True
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32,
                                                 attn_implementation="sdpa")
    captured = {}

    def on_layer(module, query, key, scale):
        li = module.layer_idx
        if args.layers is None or li in args.layers:
            captured[li] = (query[0].transpose(0, 1).contiguous(),
                            key[0].transpose(0, 1).contiguous(), scale)
    t0 = time.time()
    with torch.no_grad(), capture_attention(on_layer, attend=chunked_causal_attention):
        model.model(torch.tensor([ids]), use_cache=False)
    print(f"forward of {len(ids)} tokens: {time.time() - t0:.0f}s", flush=True)
    fns = rules(args.gammas, args.scales, args.floor_scales, args.part_floors, args.columns)
    if args.only:
        fns = {n: fn for n, fn in fns.items() if any(o in n for o in args.only)}
    from vllm_minference.profiles import load_profile, locate_profile
    profiles = {f"profile {os.path.basename(p)}": load_profile(locate_profile(p))
                for p in args.profiles}
    result = dict(model=args.model, prompt=args.prompt, length=len(ids), chunk=args.chunk,
                  needle_rows=needle_rows, layers={})
    mass = {li: far_line_mass(*captured[li], needle_rows, targets).tolist()
            for li in sorted(captured)} if needle_rows else {}
    result["far_line_mass"] = mass
    if args.retrieval_profile:
        write_retrieval_profile(mass, args.dense_heads, args.retrieval_profile,
                                f"{args.prompt} seed {args.seed}, {len(ids)} tokens",
                                args.control_seed, args.retrieval_as)
    for li in sorted(captured):
        q, k, scale = captured[li]
        if not fns and not args.antidiagonal_taus and not profiles:
            continue  # a profile only
        result["layers"][li] = layer_stats(q, k, scale, fns, args.blocks, profiles, li,
                                           chunk=args.chunk, taus=args.antidiagonal_taus,
                                           strides=args.antidiagonal_strides,
                                           needle_rows=needle_rows, targets=targets,
                                           fa3_group=args.fa3_group)
        row = {n: (sum(d["recall"]) / len(d["recall"]), min(d["recall"]),
                   sum(d["density"]) / len(d["density"])) for n, d in result["layers"][li].items()}
        print(f"layer {li:2d}: " + "; ".join(f"{n}: recall {r:.3f} (min {mn:.3f}) dens {de:.3f}"
                                            for n, (r, mn, de) in row.items()), flush=True)
    summary = {}
    for n in next(iter(result["layers"].values()), {}):
        def every(field: str) -> list[float]:  # [nan] where the prompt has no needle rows
            return [x for L in result["layers"].values() for x in L[n][field] or [math.nan]]
        rs, ds, fs, ns = every("recall"), every("density"), every("final_recall"), every(
            "needle_recall")
        fl = every("far_line_recall")
        summary[n] = dict(mean_recall=sum(rs) / len(rs), min_recall=min(rs),
                          final_recall=sum(fs) / len(fs), min_final_recall=min(fs),
                          needle_recall=sum(ns) / len(ns), min_needle_recall=min(ns),
                          far_line_recall=sum(fl) / len(fl), min_far_line_recall=min(fl),
                          low_row_share=sum(every("low_share")) / len(rs),
                          heads_below_0_9=sum(r < 0.9 for r in rs), mean_density=sum(ds) / len(ds))
    result["summary"] = summary
    print(json.dumps(summary, indent=1))
    with open(args.out, "w") as f:
        json.dump(result, f)


if __name__ == "__main__":
    main()
