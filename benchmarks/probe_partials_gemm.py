"""Could the antidiagonal partials run at cuBLAS speed?  A probe, not a plugin path (GPU).

At 1M keys the per-block antidiagonal estimate is a third of the sparse prefill's attention
time (6.6 of 22 s, H100, twenty-first session), and its partials kernel runs 3-4x below the
tensor-core bound of its work (1/(2 x stride) of dense attention).  The partials are one
GEMM per KV head: with stride ``S`` a row group's ``S`` rows, reversed, side by side make a
``[S * D]`` vector, and so do a key group's ``S`` keys in order; their dot product is the
antidiagonal score ``sum_i q[aS + S-1-i] . k[bS + i]``.  Then each 64-key tile's log2-sum-exp2
over its ``64 / S`` key groups, causal-masked.

This times, for one prefill chunk at the end of its keys, on random inputs (the cost does
not depend on the values):

* ``triton_ms``: the plugin's partials kernel (the selection launch left out, as
  ``tune_antidiagonal.py`` does);
* ``gather_ms``: the keys (and, here, the values) out of the paged cache into per-head
  contiguous rows;
* ``gemm_ms``: ``torch.bmm`` of bf16/fp16 operands into fp32 scores (cuBLAS), in slabs of
  at most ``--slab-mb`` of scores;
* ``gemm_reduce_ms``: the same with each slab's tile log-sum-exp in plain PyTorch (several
  passes over the scores: an upper bound of a fused reduction);

and the largest difference between the two ways' partials on the first slab of blocks (the
GEMM path's formulation checked against the kernel's).

    python benchmarks/probe_partials_gemm.py --cases 65536:1048576 16384:131072 --out probe.json
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
from tune_antidiagonal import _NoLaunch  # noqa: E402

from vllm_minference.kernels import BLOCK_M, BLOCK_N, SeqLayout  # noqa: E402
from vllm_minference.kernels.antidiagonal import index as ad  # noqa: E402

LOG2E = 1.4426950408889634


def keys_by_head(kv, kv_len: int) -> torch.Tensor:
    """``[kv_heads, kv_len, D]`` keys of sequence 0, contiguous per head: ``KVSource.gather``
    (which copies the values too, so ``gather_ms`` is about twice what the keys alone cost)
    and one transposing copy."""
    return kv.gather(0, kv_len)[0].transpose(0, 1).contiguous()


def stacked_queries(q: torch.Tensor, kv_heads: int, stride: int) -> torch.Tensor:
    """``[kv_heads, group * q_len / S, S * D]``: each row group's rows reversed, side by side,
    the query heads of a KV group one after another (rows ``hh * q_len / S + a``)."""
    t, h, d = q.shape
    qv = q.view(t // stride, stride, h, d).flip(1).permute(2, 0, 1, 3)  # [H, T/S, S, D]
    return qv.reshape(kv_heads, (h // kv_heads) * (t // stride), stride * d)


def gemm_partials(q: torch.Tensor, keys: torch.Tensor, kv_len: int, stride: int,
                  scale: float, slab_bytes: int, reduce: bool = True) -> torch.Tensor | None:
    """The plugin's partials ``[H, q_len / S, tiles]`` (log2-sum-exp2 of each row group's
    scaled scores per 64-key tile, -inf where none is causal) by cuBLAS GEMMs in slabs of
    key groups; ``reduce=False`` runs the GEMMs alone and returns nothing."""
    t, h, _ = q.shape
    hk = keys.shape[0]
    m = t // stride
    qs = stacked_queries(q, hk, stride)
    kg = keys.reshape(hk, kv_len // stride, -1)  # key groups, keys in order
    n_groups = kv_len // stride
    per = BLOCK_N // stride  # key groups per tile
    cols = max(per, slab_bytes // (4 * hk * qs.shape[1]) // per * per)
    rows_last = kv_len - t + torch.arange(m, device=q.device) * stride + stride - 1
    out = torch.empty(hk, qs.shape[1], n_groups // per, device=q.device) if reduce else None
    for c0 in range(0, n_groups, cols):
        c1 = min(n_groups, c0 + cols)
        kt = kg[:, c0:c1].transpose(1, 2)
        s = (torch.bmm(qs, kt, out_dtype=torch.float32) if q.is_cuda
             else torch.bmm(qs.float(), kt.float()))
        if not reduce:
            continue
        first = torch.arange(c0, c1, device=q.device) * stride
        causal = first[None, :] <= rows_last[:, None]  # [M, cols]: same for every head
        s = (s * scale).view(hk, -1, m, c1 - c0).masked_fill(~causal, float("-inf"))
        lse = torch.logsumexp(s.view(hk, -1, m, (c1 - c0) // per, per) / LOG2E, dim=-1)
        out[:, :, c0 // per:c1 // per] = (lse * LOG2E).view(hk, -1, (c1 - c0) // per)
    return None if out is None else out.view(h, m, -1)


def triton_partials(q, kv, layout, stride: int) -> tuple[torch.Tensor, int]:
    """The plugin's first slab of partials and its blocks (the selection launch replaced by
    a copy of what it would read)."""
    seen = {}

    class Grab:
        def __getitem__(self, grid):
            def run(part, *args, **kwargs):
                seen.setdefault("part", part.clone())
                seen.setdefault("nb", args[9])  # NB, blocks of this slab
            return run

    select = ad._select_kernel
    ad._select_kernel = Grab()
    try:
        heads = torch.arange(q.shape[1], device=q.device)
        ad.antidiagonal_worklist(q, kv, layout, heads, 0.98, 2048, stride)
    finally:
        ad._select_kernel = select
    return seen["part"], seen["nb"]


def compare(q, kv, keys, layout, stride: int, scale: float, slab_bytes: int
            ) -> tuple[bool, float]:
    """Both ways' partials on the plugin's first slab of blocks, over each row group's
    causal tiles (the kernel leaves the others unwritten): whether the same cells are
    finite, and the largest difference where both are."""
    part, nb = triton_partials(q, kv, layout, stride)
    kv_len = layout.max_kv_len
    mine = gemm_partials(q, keys, kv_len, stride, scale, slab_bytes)
    rg = BLOCK_M // stride
    a, b = part[:, :nb * rg], mine[:, :nb * rg, :part.shape[2]]
    last = kv_len - q.shape[0] + torch.arange(nb * rg, device=q.device) * stride + stride - 1
    causal = (torch.arange(a.shape[2], device=q.device)[None, :] * BLOCK_N <= last[:, None])
    causal = causal.expand_as(a)
    fa, fb = torch.isfinite(a) & causal, torch.isfinite(b) & causal
    both = fa & fb
    err = float((a[both] - b[both]).abs().max()) if both.any() else 0.0
    return bool(torch.equal(fa, fb)), err


def run(shape: str, q_len: int, kv_len: int, stride: int, slab_bytes: int, rows: list,
        device: str = "cuda", dtype: torch.dtype = torch.bfloat16) -> dict:
    hq, hk, d = (int(x) for x in shape.split("/"))
    g = torch.Generator(device=device).manual_seed(kv_len)
    k = torch.randn(kv_len, hk, d, generator=g, device=device, dtype=dtype)
    q = torch.randn(q_len, hq, d, generator=g, device=device, dtype=dtype)
    kv, _ = bk.paged(k, torch.zeros_like(k))
    del k
    layout = SeqLayout.from_lengths([q_len], [kv_len], device)
    scale = d ** -0.5 * LOG2E / stride  # the plugin's: XAttention divides by the stride

    keys = keys_by_head(kv, kv_len)
    same_mask, err = compare(q, kv, keys, layout, stride, scale, slab_bytes)
    select = ad._select_kernel
    ad._select_kernel = _NoLaunch()
    try:
        heads = torch.arange(hq, device=device)
        triton_ms = bench_ms(lambda: ad.antidiagonal_worklist(q, kv, layout, heads, 0.98, 2048,
                                                              stride))
    finally:
        ad._select_kernel = select
    row = dict(shape=shape, q_len=q_len, kv_len=kv_len, stride=stride, dtype=str(dtype),
               triton_ms=triton_ms,
               gather_ms=bench_ms(lambda: keys_by_head(kv, kv_len)),
               gemm_ms=bench_ms(lambda: gemm_partials(q, keys, kv_len, stride, scale,
                                                      slab_bytes, reduce=False)),
               gemm_reduce_ms=bench_ms(lambda: gemm_partials(q, keys, kv_len, stride, scale,
                                                             slab_bytes)),
               tflop=2 * hq * (q_len / stride) * (kv_len / stride) * stride * d / 1e12,
               same_causal_cells=same_mask, max_abs_diff_log2=err)
    rows.append(row)
    print(json.dumps(row), flush=True)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shape", default="14/2/64", help="q_heads/kv_heads/head_dim")
    ap.add_argument("--cases", nargs="+", default=["65536:1048576", "16384:131072"],
                    help="query rows:keys (a prefill chunk at the end of its keys)")
    ap.add_argument("--stride", type=int, default=32)
    ap.add_argument("--slab-mb", type=int, default=1024, help="fp32 scores held at once")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    rows: list = []
    for case in args.cases:
        q_len, kv_len = (int(x) for x in case.split(":"))
        run(args.shape, q_len, kv_len, args.stride, args.slab_mb << 20, rows)
        with open(args.out, "w") as f:  # after each, so a stopped run leaves rows
            json.dump(dict(device=torch.cuda.get_device_name(), rows=rows), f, indent=1)
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
