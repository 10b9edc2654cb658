"""Chunked prefill at kernel level: a long prompt's sparse attention step by step, the way
vLLM prefills it (chunks of ``--max-num-batched-tokens``), against FA3 on the same steps.

Why: at 1M tokens one pass over the whole prompt ran 6.3x faster than FA3 (Qwen shape,
MInference budgets, H100), while vLLM's TTFT in 64K chunks gained 4.3x.  This splits that
gap: each chunk ``[s, e)`` is one step of one layer — the estimate (the chunk's last 64
queries against all ``e`` keys), the index, and the chunk's rows over the prefix on the FA3
page lists or the Triton kernel — next to FA3 dense over the same rows.  A step below
``--min-sparse-len`` keys or whose lists cover more than ``--guard`` of its causal area is
counted dense, as the backend would run it (an ideal guard: it knows the step's own density
and skips planning such steps).

Rows: one per (layer, kernel, chunk) with ``kind = "step"``, and one total per (layer,
kernel) with ``kind = "prompt"``.  Real attention: post-RoPE Q/K/V of Qwen2.5-Coder-0.5B
captured as in ``bench_kernels.py``.

    python benchmarks/bench_chunked.py --seq-len 1048576 --chunk 65536 --out chunked.json
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time

import torch

import bench_kernels as bk
from vllm_minference.kernels import KVSource, SeqLayout, sparse_attention
from vllm_minference.kernels.page_lists import PageGeometry, group_rows, page_list_attention


def chunk_bounds(seq_len: int, chunk: int) -> list[tuple[int, int]]:
    """The prefill steps of one prompt: ``[start, end)`` query rows, the last one shorter."""
    return [(s, min(s + chunk, seq_len)) for s in range(0, seq_len, chunk)]


def sparse_step(kernel: str, q_c, kv: KVSource, cache, layout: SeqLayout, wl,
                stats: dict | None = None):
    """The step's sparse attention on ``kernel`` (``fa3`` page lists, with the options of
    :func:`bench_kernels.fa3_options`, or ``triton``); ``stats`` (fa3) receives the stage
    times of a call."""
    out = torch.empty_like(q_c)
    if kernel.startswith("fa3"):
        options = bk.fa3_options(kernel)
        geo = PageGeometry.build(layout, q_c.shape[1], group_rows(q_c.shape[2]))  # per step
        return lambda: page_list_attention(q_c, cache, kv.block_table, layout, wl, out=out,
                                           geometry=geo, stats=stats, **options)
    return lambda: sparse_attention(q_c, kv, layout, wl, out=out)


def run_layer(rows: list[dict], q, k, v, *, chunk: int, kernels, pattern: str, gamma: float,
              guard: float, min_sparse_len: int, extra: dict) -> None:
    """Time every step of one layer's prompt, per kernel; append step and prompt rows."""
    L, n_heads = q.shape[0], q.shape[1]
    kv, cache = bk.paged(k, v)
    steps = []
    for s, e in chunk_bounds(L, chunk):
        q_c = q[s:e]
        dense_ms = bk.time_ms(bk.fa3(q_c, k[:e], v[:e]))  # FA3 over the step's rows
        step = dict(chunk_start=s, chunk_end=e, dense_ms=dense_ms)
        if e >= min_sparse_len:
            layout = SeqLayout.from_lengths([e - s], [e], bk.DEVICE)
            est_fn, index_fn = bk.plan_pattern(pattern, q_c, kv, layout, n_heads, gamma)
            step["estimate_ms"] = bk.time_ms(est_fn)
            if pattern in bk.VS_PATTERNS:  # of which the two estimate passes (the rest: top-k)
                heads = torch.arange(n_heads, device=q.device)
                step["estimate_passes_ms"] = bk.time_ms(
                    lambda: bk.vs_estimate(q_c, kv, layout, heads))  # noqa: B023
            est = est_fn()
            step["index_ms"] = bk.time_ms(lambda: index_fn(est))  # noqa: B023 (called now)
            wl = index_fn(est)
            step["density"] = bk.density(wl, layout)
            step["layout"], step["wl"] = layout, wl
        steps.append(step)
    for kernel in kernels:
        total_dense = total = 0.0
        for st in steps:
            row = dict(kind="step", kernel=kernel, pattern=pattern, seq_len=L, chunk=chunk,
                       q_heads=n_heads, kv_heads=k.shape[1], head_dim=q.shape[2],
                       chunk_start=st["chunk_start"], chunk_end=st["chunk_end"],
                       dense_ms=st["dense_ms"], **extra)
            if "wl" not in st:
                row.update(path="dense (short)", step_ms=st["dense_ms"])
            else:
                q_c = q[st["chunk_start"]:st["chunk_end"]]
                attn_ms = bk.time_ms(sparse_step(kernel, q_c, kv, cache, st["layout"], st["wl"]))
                if kernel.startswith("fa3"):  # one more call, stage by stage (on a GPU)
                    stats: dict = {}
                    sparse_step(kernel, q_c, kv, cache, st["layout"], st["wl"], stats)()
                    row["fa3_stages_ms"] = {k: round(v, 3) for k, v in
                                            stats.get("stage_ms", {}).items()}
                    # keys FA3 computes (whole sub-pages, union over a row group) vs causal
                    row["page_density"] = round(float(stats["key_rows"]) / (
                        n_heads * st["layout"].causal_keys()), 4)
                sparse_ms = st["estimate_ms"] + st["index_ms"] + attn_ms
                dense = st["density"] > guard
                if "estimate_passes_ms" in st:
                    row["estimate_passes_ms"] = st["estimate_passes_ms"]
                row.update(density=round(st["density"], 4), estimate_ms=st["estimate_ms"],
                           index_ms=st["index_ms"], attn_ms=attn_ms, sparse_ms=sparse_ms,
                           path="dense (guard)" if dense else "sparse",
                           step_ms=st["dense_ms"] if dense else sparse_ms)
            rows.append(row)
            total_dense += row["dense_ms"]
            total += row["step_ms"]
        rows.append(dict(kind="prompt", kernel=kernel, pattern=pattern, seq_len=L, chunk=chunk,
                         q_heads=n_heads, kv_heads=k.shape[1], head_dim=q.shape[2],
                         dense_ms=total_dense, total_ms=total, speedup=total_dense / total,
                         sparse_steps=sum(r.get("path") == "sparse" for r in rows[-len(steps):]),
                         steps=len(steps), **extra))
        r = rows[-1]
        print(f"{pattern} {kernel:6s} L={L} chunk={chunk} {extra}: dense {total_dense:.1f} ms, "
              f"chunked sparse {total:.1f} ms, x{r['speedup']:.2f} "
              f"({r['sparse_steps']}/{len(steps)} steps sparse)", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seq-len", type=int, default=1048576)
    ap.add_argument("--chunk", type=int, default=65536)
    ap.add_argument("--model", default=None, help="HF folder (default: $GPU_KIT_MODEL)")
    ap.add_argument("--layers", type=int, nargs="+", default=[3])
    ap.add_argument("--pattern", default="vertical_slash",
                    choices=["vertical_slash", "vertical_slash_adaptive"])
    ap.add_argument("--gamma", type=float, default=0.95)
    ap.add_argument("--kernels", default="fa3,triton")
    ap.add_argument("--guard", type=float, default=0.45)
    ap.add_argument("--min-sparse-len", type=int, default=65536)
    bk.add_estimate_stats_arg(ap)
    ap.add_argument("--out", required=True)
    ap.add_argument("--device", default="cuda",
                    help="cpu: smoke test under TRITON_INTERPRET=1 (random Q/K, triton only)")
    args = ap.parse_args()
    bk.DEVICE, bk.ESTIMATE_STATS = args.device, args.estimate_stats
    kernels = tuple(args.kernels.split(","))
    rows: list[dict] = []
    opts = dict(chunk=args.chunk, kernels=kernels, pattern=args.pattern, gamma=args.gamma,
                guard=args.guard, min_sparse_len=args.min_sparse_len)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(124))  # `timeout`: keep what was measured
    try:
        measure(args, rows, opts)
    finally:
        with open(args.out, "w") as f:
            name = torch.cuda.get_device_name() if args.device == "cuda" else "cpu (smoke test)"
            json.dump(dict(device=name, torch=torch.__version__, page=bk.PAGE,
                           estimate_stats=args.estimate_stats, rows=rows), f, indent=1)


def measure(args, rows: list[dict], opts: dict) -> None:
    if args.device == "cpu":
        q, k, v = (t[:args.seq_len].float() for t in bk.rand_qkv(args.seq_len))
        run_layer(rows, q[:, :4], k[:, :1], v[:, :1], extra=dict(input="random"), **opts)
    else:
        from transformers import AutoTokenizer
        model = args.model or os.environ["GPU_KIT_MODEL"]
        t0 = time.time()
        tokens = bk.code_tokens(AutoTokenizer.from_pretrained(model), args.seq_len)
        cap = bk.capture_qkv(model, tokens, args.layers)
        print(f"captured layers {args.layers} at {args.seq_len} tokens in "
              f"{time.time() - t0:.1f}s", flush=True)
        for li, (q, k, v) in cap.items():
            run_layer(rows, q, k, v, extra=dict(input="real", layer=li), **opts)


if __name__ == "__main__":
    main()
