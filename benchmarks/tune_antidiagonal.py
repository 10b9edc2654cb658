"""Where the antidiagonal estimate's time goes, and its launch options (GPU).

The first version of ``antidiagonal`` mode's estimate took 38 ms per layer at 128K keys on
the real model's shape on an H100 (dense FA3: 58 ms), 1/16 of dense attention's work at a
third of FA3's speed.  This times the estimate on its own: the partials kernel alone (the
selection launch replaced by nothing), and the whole plan, for each stride and launch
option (``w8n2``: warps, pipeline stages), against FA3's dense attention of the same rows,
and checks that every option keeps the same tiles as the first.

Inputs are random: the partials cost the same whatever the attention looks like (the
selection's time depends a little on it).  One row per (shape, case, stride, option).

    python benchmarks/tune_antidiagonal.py --out tune_antidiagonal.json
"""

from __future__ import annotations

import argparse
import json
import os
import re
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


def parse_option(text: str) -> tuple[dict, dict]:
    """``w8n2``: warps 8, pipeline stages 2; ``r128k32w8n2``: also 128 row groups per
    program and 32 key groups per step (else :func:`partials_launch`'s defaults)."""
    m = re.fullmatch(r"(?:r(\d+)k(\d+))?w(\d+)(?:n(\d+))?", text)
    if not m:
        raise SystemExit(f"bad option {text!r}: expected e.g. w8n2 or r128k32w8n2")
    rows, key_groups, warps, stages = m.groups()
    shape = dict(rows=int(rows), key_groups=int(key_groups)) if rows else {}
    return dict(num_warps=int(warps), num_stages=int(stages or 2)), shape


def run(shape: str, q_len: int, kv_len: int, stride: int, options: list[str], tau: float,
        rows: list) -> None:
    hq, hk, d = (int(x) for x in shape.split("/"))
    g = torch.Generator(device="cuda").manual_seed(kv_len)
    k = torch.randn(kv_len, hk, d, generator=g, device="cuda", dtype=torch.bfloat16)
    v = torch.randn(kv_len, hk, d, generator=g, device="cuda", dtype=torch.bfloat16)
    q = torch.randn(q_len, hq, d, generator=g, device="cuda", dtype=torch.bfloat16)
    kv, cache = bk.paged(k, v)
    layout = SeqLayout.from_lengths([q_len], [kv_len], "cuda")
    heads = torch.arange(hq, device="cuda")
    dense_ms = bench_ms(bk.fa3(q, k, v))

    def plan():
        return ad.antidiagonal_worklist(q, kv, layout, heads, tau, 2048, stride)
    first = None
    for opt in options:
        ad.PARTIALS_WARPS, ad.PARTIALS_SHAPE = parse_option(opt)
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
        row = dict(shape=shape, q_len=q_len, kv_len=kv_len, stride=stride, option=opt,
                   launch=ad.partials_launch(stride, d, 2, hq // hk, **ad.PARTIALS_SHAPE),
                   dense_ms=dense_ms,
                   partials_ms=partials_ms, select_ms=total_ms - partials_ms,
                   total_ms=total_ms, share_of_dense=total_ms / dense_ms,
                   density_random=density, same_tiles_as_first=same)
        rows.append(row)
        print(json.dumps(row), flush=True)
    del q, k, v, kv, cache
    torch.cuda.empty_cache()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shapes", default="14/2/64,32/8/128", help="q_heads/kv_heads/head_dim")
    ap.add_argument("--cases", nargs="+", default=["131072:131072", "16384:131072"],
                    help="query rows:keys (a prefill chunk at the end of its keys)")
    ap.add_argument("--strides", type=int, nargs="+", default=[8, 16])
    ap.add_argument("--options", nargs="+", default=["w8n2", "w4n2", "w8n3", "w4n1"])
    ap.add_argument("--tau", type=float, default=0.9)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    rows: list = []
    for shape in args.shapes.split(","):
        for case in args.cases:
            q_len, kv_len = (int(x) for x in case.split(":"))
            for stride in args.strides:
                run(shape, q_len, kv_len, stride, args.options, args.tau, rows)
    with open(args.out, "w") as f:
        json.dump(dict(device=torch.cuda.get_device_name(), rows=rows), f, indent=1)


if __name__ == "__main__":
    main()
