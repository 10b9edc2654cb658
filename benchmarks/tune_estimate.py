"""Where the Vertical-Slash estimate's time goes, and its launch options (GPU).

At 1M keys the estimate (the last 64 queries of a prefill chunk against every key) took
4.8-5.1 ms per layer and step on an H100, a third of an adaptive layer's sparse time, and
one FA3 call for the row statistics instead of the first pass saved nothing (3.80 vs 3.89
ms for the passes, 2026-11-26).  So this times each part on its own — pass 1 (row
statistics), pass 2 (column and diagonal sums), FA3's row statistics, the fixed top-k and
the adaptive selections — for several launch options of the two passes (keys per program,
warps, pipeline stages), and checks that every option gives the default option's sums.

Inputs are random: the estimate computes every score whatever the attention looks like, so
its time does not depend on it.  One row per (shape, keys, option).

    python benchmarks/tune_estimate.py --seq-lens 131072 1048576 --out tune_estimate.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import torch
import triton

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_kernels as bk  # noqa: E402
from timing import bench_ms  # noqa: E402

from vllm_minference.kernels import SeqLayout, select_vertical_slash  # noqa: E402
from vllm_minference.kernels.vertical_slash import estimate  # noqa: E402
from vllm_minference.kernels.vertical_slash.adaptive import select_adaptive  # noqa: E402
from vllm_minference.kernels.vertical_slash.estimate import (LAST_Q,  # noqa: E402
                                                             estimate_vertical_slash)


ADAPTIVE_GAMMA = 0.95  # the backend's default target (vllm_minference.config)


def _launch(warps: str, stages: str | None) -> dict:
    launch = dict(num_warps=int(warps))
    if stages:
        launch["num_stages"] = int(stages)
    return launch


def parse_option(text: str) -> dict:
    """``s4096w4`` / ``s2048w8n2`` / ``s4096w4:w2``: keys per program, warps, optional
    pipeline stages; after ``:`` pass 2's own warps and stages (else pass 1's)."""
    import re
    m = re.fullmatch(r"s(\d+)w(\d+)(?:n(\d+))?(?::w(\d+)(?:n(\d+))?)?", text)
    if not m:
        raise SystemExit(f"option {text!r} is not s<keys>w<warps>[n<stages>][:w<warps>[n<stages>]]")
    stats = _launch(m[2], m[3])
    sums = _launch(m[4], m[5]) if m[4] else dict(stats)
    return dict(name=text, keys_per_split=int(m[1]), stats=stats, sums=sums)


def apply_option(opt: dict | None) -> None:
    """Set the estimate's launch options (the module constants the backend uses); an
    option's keys per program is fixed (the package's split of few heads finer is not)."""
    if opt is None:
        return
    estimate.KEYS_PER_SPLIT = opt["keys_per_split"]
    if hasattr(estimate, "MIN_KEYS_PER_SPLIT"):
        estimate.MIN_KEYS_PER_SPLIT = opt["keys_per_split"]
    estimate.LAUNCH_STATS = dict(opt["stats"])
    estimate.LAUNCH_SUMS = dict(opt["sums"])


def _saved_options() -> tuple:
    return (estimate.KEYS_PER_SPLIT, dict(getattr(estimate, "LAUNCH_STATS", {})),
            dict(getattr(estimate, "LAUNCH_SUMS", {})),
            getattr(estimate, "MIN_KEYS_PER_SPLIT", None))


def _restore_options(saved: tuple) -> None:
    estimate.KEYS_PER_SPLIT = saved[0]
    if saved[3] is not None:
        estimate.MIN_KEYS_PER_SPLIT = saved[3]
    if hasattr(estimate, "LAUNCH_STATS"):
        estimate.LAUNCH_STATS, estimate.LAUNCH_SUMS = saved[1], saved[2]


def row_stats_fn(q, kv, layout, heads):
    """FA3's row statistics of the estimate rows (None where vLLM's FA3 is missing)."""
    try:
        from vllm_minference.kernels.vertical_slash.row_stats import estimate_row_lse
        estimate_row_lse(q, kv, layout, heads)
    except Exception as e:  # no vLLM / no Hopper: leave the FA3 column empty
        print(f"FA3 row statistics unavailable: {e}", flush=True)
        return None
    return lambda: estimate_row_lse(q, kv, layout, heads)


def random_chunk(q_len: int, n_heads: int, kv_heads: int, head_dim: int, seq_len: int,
                 device: str, seed: int) -> tuple:
    """Random queries of a chunk at the end of ``seq_len`` random keys in a paged cache:
    ``(q, k, kv, cache, layout, heads)`` (bf16 on a GPU, fp16 for the CPU interpreter)."""
    g = torch.Generator(device=device).manual_seed(seed)
    dtype = torch.bfloat16 if device == "cuda" else torch.float16
    q = torch.randn(q_len, n_heads, head_dim, device=device, dtype=dtype, generator=g)
    k, v = (torch.randn(seq_len, kv_heads, head_dim, device=device, dtype=dtype, generator=g)
            for _ in range(2))
    kv, cache = bk.paged(k, v)
    layout = SeqLayout.from_lengths([q_len], [seq_len], device)
    return q, k, kv, cache, layout, torch.arange(n_heads, device=device)


def time_shape(rows: list[dict], n_heads: int, kv_heads: int, head_dim: int, seq_len: int,
               options: list[dict | None], label: str, device: str,
               est_heads: int | None = None) -> None:
    """``est_heads``: estimate only the first that many query heads (a profile's pinned
    heads are one or two a layer), else all."""
    # the chunk's last rows
    q, k, kv, _cache, layout, heads = random_chunk(LAST_Q, n_heads, kv_heads, head_dim, seq_len,
                                                   device, seed=0)
    heads = heads[:est_heads]
    stats_fn = row_stats_fn(q, kv, layout, heads) if device == "cuda" else None
    base = dict(label=label, q_heads=n_heads, kv_heads=kv_heads, head_dim=head_dim,
                seq_len=seq_len, est_heads=heads.numel())
    lse = stats_fn() if stats_fn is not None else _row_lse_reference(q, k, heads)
    saved = _saved_options()
    try:
        apply_option(options[0])
        reference = estimate_vertical_slash(q, kv, layout, heads)
        # the FA3 statistics and the top-k do not depend on the passes' launch options: once
        budget = torch.full((n_heads,), 1000, device=device), torch.full(
            (n_heads,), 6096, device=device)
        shared = dict(select_ms=bench_ms(lambda: select_vertical_slash(
            *reference, layout, budget[0], budget[1], 1000, 6096)),
            adaptive_select_ms=bench_ms(lambda: select_adaptive(
                *reference, layout, budget[0], budget[1], 1000, 6096, gamma=ADAPTIVE_GAMMA,
                keep_first=128, keep_diag=1024)))  # the A-shape floors of the measured mode
        if stats_fn is not None:
            shared["fa3_row_stats_ms"] = bench_ms(stats_fn)
        for opt in options:
            apply_option(opt)
            vert, slash = estimate_vertical_slash(q, kv, layout, heads)
            err = max(float((a - b).abs().max()) for a, b in zip((vert, slash), reference))
            row = dict(base, option=opt["name"] if opt else "default",
                       both_passes_ms=bench_ms(
                           lambda: estimate_vertical_slash(q, kv, layout, heads)),
                       pass2_ms=bench_ms(
                           lambda: estimate_vertical_slash(q, kv, layout, heads, row_lse=lse)),
                       max_diff_vs_first=err, **shared)
            row["pass1_ms"] = row["both_passes_ms"] - row["pass2_ms"]
            rows.append(row)
            print(json.dumps(row), flush=True)
    finally:
        _restore_options(saved)


def time_extra_tiles(rows: list[dict], n_heads: int, kv_heads: int, head_dim: int,
                     seq_len: int, chunk: int, per_block: int, label: str, device: str,
                     rank_launches: tuple[str, ...] = (), slice_mbs: tuple[int, ...] = ()
                     ) -> None:
    """``extra_block_tiles`` for one prefill chunk at the end of ``seq_len`` keys, and its
    parts: pooled queries and keys; the far scores and their best per bucket of 16 tiles
    (one kernel; ``bucket_max_ms``); ``torch.topk`` of the buckets; the kernel that ranks the
    chosen buckets' tiles (and that kernel with each of ``rank_launches``, "blocks/warps";
    the whole call with ``RANK_BYTES`` set to each of ``slice_mbs`` MB);
    ``rank_ms`` = everything after the scores kernel.
    An older package (``.whl/old/``, without buckets) gives the total and the pooling only."""
    from vllm_minference.kernels.block_sparse import extra_block_tiles
    from vllm_minference.kernels.block_sparse import index as bs
    q, _, kv, _cache, layout, heads = random_chunk(chunk, n_heads, kv_heads, head_dim, seq_len,
                                                   device, seed=1)
    pooled = bs.PooledBlocks.build(q, kv, layout, heads)
    row = dict(label=label, kind="extra_tiles", q_heads=n_heads, kv_heads=kv_heads,
               head_dim=head_dim, seq_len=seq_len, chunk=chunk, per_block=per_block,
               extra_tiles_ms=bench_ms(lambda: extra_block_tiles(q, kv, layout, heads,
                                                                 per_block, 100)),
               pooling_ms=bench_ms(lambda: bs.PooledBlocks.build(q, kv, layout, heads)))
    H, NB, T = pooled.num_heads, layout.num_blocks, pooled.num_tiles
    bmax = torch.empty(H, NB, triton.cdiv(T, getattr(bs, "BUCKET", 1)), dtype=torch.float32,
                       device=device)
    kb = min(per_block, bmax.shape[2])
    if hasattr(pooled, "far_scores_into"):  # far scores kept, chosen buckets ranked in registers
        scores = torch.empty(H, NB, T, dtype=torch.float32, device=device)

        def far_scores():  # every sequence's blocks (one slice: the timing of the kernels)
            for seq, blk0, nb in pooled.layout.block_ranges(NB):
                pooled.far_scores_into(bmax[:, blk0:blk0 + nb], scores[:, blk0:blk0 + nb], seq,
                                       blk0, 100, None, bs.SPLIT_TILES)
        row.update(bucket_max_ms=bench_ms(far_scores))
        row.update(bucket_topk_ms=bench_ms(lambda: torch.topk(bmax, kb, dim=-1, sorted=False)))
        buckets = torch.topk(bmax, kb, dim=-1, sorted=False).indices
        out = torch.empty(H, NB, per_block, dtype=torch.int32, device=device)

        def rank_kernel():  # the chosen buckets' tiles of every block, ranked in registers
            bs.rank_far_tiles_into(out, buckets, bmax, scores)
        row.update(rank_kernel_ms=bench_ms(rank_kernel))
        rank_bytes = bs.RANK_BYTES
        for mb in slice_mbs:  # the whole call with other limits on the scores held at once
            bs.RANK_BYTES = mb << 20
            try:
                row[f"extra_tiles_ms_{mb}mb"] = bench_ms(
                    lambda: extra_block_tiles(q, kv, layout, heads, per_block, 100))
            finally:
                bs.RANK_BYTES = rank_bytes
        default = dict(bs.RANK_LAUNCH)
        for opt in rank_launches:  # "blocks/warps": other launches of the ranking kernel
            bb, warps = (int(x) for x in opt.split("/"))
            bs.RANK_LAUNCH.update(BB=bb, num_warps=warps)
            try:
                row[f"rank_kernel_ms_{opt}"] = bench_ms(rank_kernel)
            finally:
                bs.RANK_LAUNCH.update(default)
    elif hasattr(pooled, "far_bucket_max_into"):  # the two-level package (commit 8e5f745)

        def bucket_maxima():  # every sequence's blocks: the first ranking's scores
            for seq, blk0, nb in pooled.layout.block_ranges(NB):
                pooled.far_bucket_max_into(bmax[:, blk0:blk0 + nb], seq, blk0, 100, None,
                                           bs.SPLIT_TILES)
        row.update(bucket_max_ms=bench_ms(bucket_maxima))
        row.update(bucket_topk_ms=bench_ms(lambda: torch.topk(bmax, kb, dim=-1, sorted=False)))
    if "bucket_max_ms" in row:
        row["rank_ms"] = row["extra_tiles_ms"] - row["pooling_ms"] - row["bucket_max_ms"]
    rows.append(row)
    print(json.dumps(row), flush=True)


def time_block_sparse(rows: list[dict], n_heads: int, kv_heads: int, head_dim: int,
                      seq_len: int, chunk: int, k_max: int, label: str, device: str) -> None:
    """Block-Sparse work lists for half the heads of one prefill chunk at the end of
    ``seq_len`` keys: from the full ``[blocks, tiles]`` scores and ``torch.topk`` (the path
    before the thirteenth session) and ranked like the extra tiles (``block_sparse_worklist``,
    where the package has it)."""
    from vllm_minference.kernels.block_sparse import index as bs
    q, _, kv, _cache, layout, _ = random_chunk(chunk, n_heads, kv_heads, head_dim, seq_len,
                                               device, seed=2)
    heads = torch.arange(0, n_heads, 2, device=device, dtype=torch.int32)
    topk = torch.full((heads.numel(),), k_max, device=device)
    row = dict(label=label, kind="block_sparse_lists", q_heads=n_heads, kv_heads=kv_heads,
               head_dim=head_dim, seq_len=seq_len, chunk=chunk, heads=heads.numel(),
               k_max=k_max)
    row["full_scores_ms"] = bench_ms(lambda: bs.build_block_sparse_worklist(
        bs.block_sparse_scores(q, kv, layout, heads), topk, k_max))
    if hasattr(bs, "block_sparse_worklist"):
        row["ranked_ms"] = bench_ms(
            lambda: bs.block_sparse_worklist(q, kv, layout, heads, topk, k_max))
    rows.append(row)
    print(json.dumps(row), flush=True)


def _row_lse_reference(q, k, heads):
    """Natural-log log-sum-exp of the estimate rows in PyTorch, where FA3 is missing (the
    pass-2-only timing's input: CPU smoke tests)."""
    n = k.shape[0]
    group = q.shape[1] // k.shape[1]
    kk = k.float().repeat_interleave(group, dim=1)[:, heads]  # [L, H, D]
    s = torch.einsum("qhd,khd->hqk", q[:, heads].float(), kk) * q.shape[-1] ** -0.5
    pos = torch.arange(n - LAST_Q, n, device=q.device)
    s = s.masked_fill(torch.arange(n, device=q.device)[None, None, :] > pos[None, :, None],
                      float("-inf"))
    return torch.logsumexp(s, -1)[None]  # [1, H, 64]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seq-lens", type=int, nargs="+", default=[131072, 1048576])
    ap.add_argument("--shapes", default="14/2/64,32/8/128",
                    help="q_heads/kv_heads/head_dim, comma separated")
    ap.add_argument("--options", default="s4096w4:w2,s4096w4,s4096w2,s4096w1,s2048w4:w2,s8192w4:w2",
                    help="launch options (first = reference for the sums); 'default' alone "
                         "keeps the package's own (for an older package without LAUNCH_*)")
    ap.add_argument("--label", default="current", help="names the package version in rows")
    ap.add_argument("--extra-chunks", type=int, nargs="*", default=[],
                    help="also time extra_block_tiles (32 per block) for prefill chunks of "
                         "these sizes at the end of each sequence length")
    ap.add_argument("--rank-launches", nargs="*", default=[],
                    help="also time the extra tiles' ranking kernel with these launches, "
                         "'blocks/warps' each (e.g. 4/2)")
    ap.add_argument("--slice-mbs", type=int, nargs="*", default=[],
                    help="also time the extra tiles with the far scores held in slices of "
                         "at most these many MB")
    ap.add_argument("--block-sparse-chunks", type=int, nargs="*", default=[],
                    help="also time Block-Sparse work lists (100 tiles, half the heads) for "
                         "prefill chunks of these sizes at the end of each sequence length")
    ap.add_argument("--est-heads", type=int, nargs="*", default=[None],
                    help="estimate only the first N query heads (several: one row set each; "
                         "default all)")
    ap.add_argument("--no-estimate", action="store_true",
                    help="time the extra tiles only, not the estimate's passes")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    bk.DEVICE = args.device
    options = [None if o == "default" else parse_option(o) for o in args.options.split(",")]
    rows: list[dict] = []
    try:
        for shape in args.shapes.split(","):
            h, hk, d = (int(x) for x in shape.split("/"))
            for n in args.seq_lens:
                for est in ([] if args.no_estimate else args.est_heads):
                    time_shape(rows, h, hk, d, n, options, args.label, args.device, est)
                for chunk in args.extra_chunks:
                    time_extra_tiles(rows, h, hk, d, n, min(chunk, n), 32, args.label,
                                     args.device, tuple(args.rank_launches),
                                     tuple(args.slice_mbs))
                for chunk in args.block_sparse_chunks:
                    time_block_sparse(rows, h, hk, d, n, min(chunk, n), 100, args.label,
                                      args.device)
    finally:
        old = []
        if os.path.exists(args.out):
            with open(args.out) as f:
                old = json.load(f)
        with open(args.out, "w") as f:
            json.dump(old + rows, f, indent=1)


if __name__ == "__main__":
    main()
