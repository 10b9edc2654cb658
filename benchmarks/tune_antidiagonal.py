"""Where the antidiagonal estimate's time goes, and its launch options (GPU).

The first version of ``antidiagonal`` mode's estimate took 38 ms per layer at 128K keys on
the real model's shape on an H100 (dense FA3: 58 ms), 1/16 of dense attention's work at a
third of FA3's speed.  This times the estimate on its own: the partials kernel alone (the
selection launch replaced by nothing), and the whole plan, for each stride and launch
option (``w8n2``: warps, pipeline stages; see ``parse_launch``), against FA3's dense
attention of the same rows, and checks that every option keeps the same tiles as the first.
``--search-ways`` times the selection testing 2 (bisection), 4 or 16 threshold points per
read of the shares (same tiles: compare ``kept_tiles``).

Inputs are random: the partials cost the same whatever the attention looks like (the
selection's time depends a little on it).  One row per (shape, case, stride, option).

    python benchmarks/tune_antidiagonal.py --out tune_antidiagonal.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_kernels as bk  # noqa: E402
from timing import bench_ms  # noqa: E402

from vllm_minference.kernels import SeqLayout  # noqa: E402
from vllm_minference.kernels.antidiagonal import index as ad  # noqa: E402


class _NoLaunch:
    """Stands in for a kernel: ``kernel[grid](...)`` does nothing (times the rest alone)."""

    def __getitem__(self, grid):
        return lambda *args, **kwargs: None


def run(shape: str, q_len: int, kv_len: int, stride: int, options: list[str], tau: float,
        rows: list, device: str = "cuda", dtype: torch.dtype = torch.bfloat16) -> None:
    hq, hk, d = (int(x) for x in shape.split("/"))
    g = torch.Generator(device=device).manual_seed(kv_len)
    k = torch.randn(kv_len, hk, d, generator=g, device=device, dtype=dtype)
    v = torch.randn(kv_len, hk, d, generator=g, device=device, dtype=dtype)
    q = torch.randn(q_len, hq, d, generator=g, device=device, dtype=dtype)
    kv, cache = bk.paged(k, v)
    layout = SeqLayout.from_lengths([q_len], [kv_len], device)
    heads = torch.arange(hq, device=device)
    dense_ms = bench_ms(bk.fa3(q, k, v))

    first = None
    for opt in options:
        def plan():
            return ad.antidiagonal_worklist(q, kv, layout, heads, tau, 2048, stride,
                                            launch=opt)
        wl = plan()
        counts = wl.desc[..., 1].clone()
        same = None if first is None else bool(torch.equal(counts, first))
        first = counts if first is None else first
        total_ms = bench_ms(plan)
        select = ad._select_kernel
        ad._select_kernel = _NoLaunch()
        try:
            partials_ms = bench_ms(plan)
        finally:
            ad._select_kernel = select
        density = float(wl.tiles().sum()) / (float(layout.dense_tiles().sum()) * hq)
        ran = ad.fitted_launch(q, opt, stride, hq // hk)  # != option: "" or did not fit
        row = dict(shape=shape, q_len=q_len, kv_len=kv_len, stride=stride, option=opt, ran=ran,
                   launch=ad.partials_launch(stride, d, q.element_size(), hq // hk,
                                             **ad.parse_launch(ran)[1]),
                   dense_ms=dense_ms,
                   partials_ms=partials_ms, select_ms=total_ms - partials_ms,
                   total_ms=total_ms, share_of_dense=total_ms / dense_ms,
                   density_random=density, same_tiles_as_first=same,
                   search_ways=ad.SEARCH_WAYS, kept_tiles=int(counts.sum()))
        rows.append(row)
        print(json.dumps(row), flush=True)
    del q, k, v, kv, cache
    torch.cuda.empty_cache()


def best_option(rows: list[dict], shape: str, stride: int = 8) -> str:
    """The option of ``shape`` and ``stride`` with the least summed plan time over the cases
    timed for every option, among those that kept the first option's tiles."""
    rows = [r for r in rows if r["shape"] == shape and r["stride"] == stride]
    cases = {(r["q_len"], r["kv_len"]) for r in rows}
    totals: dict[str, float] = {}
    for opt in dict.fromkeys(r["option"] for r in rows):
        mine = [r for r in rows if r["option"] == opt]
        if {(r["q_len"], r["kv_len"]) for r in mine} == cases and all(
                r["same_tiles_as_first"] is not False for r in mine):
            totals[opt] = sum(r["total_ms"] for r in mine)
    if not totals:
        raise SystemExit(f"no complete option for {shape} at stride {stride}")
    return min(totals, key=totals.get)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shapes", default="14/2/64,32/8/128", help="q_heads/kv_heads/head_dim")
    ap.add_argument("--cases", nargs="+", default=["131072:131072", "16384:131072"],
                    help="query rows:keys (a prefill chunk at the end of its keys)")
    ap.add_argument("--strides", type=int, nargs="+", default=[8, 16])
    ap.add_argument("--options", nargs="+", default=["w8n2", "w4n2", "w8n3", "w4n1"],
                    help="launch options (vllm_minference.kernels.antidiagonal.index."
                         "parse_launch), the first the reference for same_tiles_as_first")
    ap.add_argument("--tau", type=float, default=0.9)
    ap.add_argument("--search-ways", type=int, nargs="+", default=[ad.SEARCH_WAYS],
                    help="threshold points the selection tests per read of the shares "
                         "(2: bisection); each runs every option")
    ap.add_argument("--best", metavar="JSON",
                    help="print the fastest option of the first of --shapes in this earlier "
                         "output (first of --strides) and exit")
    ap.add_argument("--out")
    args = ap.parse_args()
    if args.best:
        with open(args.best) as f:
            print(best_option(json.load(f)["rows"], args.shapes.split(",")[0], args.strides[0]))
        return
    if not args.out:
        ap.error("--out is required")
    earlier = earlier_rows(args.out)
    rows: list = []
    for shape in args.shapes.split(","):
        for case in args.cases:
            q_len, kv_len = (int(x) for x in case.split(":"))
            for stride in args.strides:
                for ways in args.search_ways:
                    ad.SEARCH_WAYS = ways
                    run(shape, q_len, kv_len, stride, args.options, args.tau, rows)
                with open(args.out, "w") as f:  # after each, so a stopped run leaves rows
                    json.dump(dict(device=torch.cuda.get_device_name(), rows=earlier + rows),
                              f, indent=1)


def earlier_rows(path: str) -> list:
    """The rows already in ``path`` (a lane's earlier call with the same ``--out``; a second
    call overwrote them before 2026-11-28), or none."""
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return json.load(f)["rows"]


if __name__ == "__main__":
    main()
