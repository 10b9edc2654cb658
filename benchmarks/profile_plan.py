"""Where the time of one sparse prefill step goes, stage by stage (GPU).

One chunk of ``--chunk`` queries at the end of ``--kv`` keys (vLLM's chunked prefill), at a
model shape, random data (stage costs do not depend on values): CUDA-event time of the
estimate kernels, the top-k selection, the diagonal merge, the per-block list kernel and
the attention kernel, plus a torch.profiler table of the whole plan.

    python benchmarks/profile_plan.py --kv 131072 --chunk 8192 --heads 14 --kv-heads 2 --head-dim 64
"""

import argparse
import time

import torch

from vllm_minference.kernels import (HeadPattern, KVSource, LayerPatterns, SeqLayout,
                                     estimate_vertical_slash, plan_layer, select_vertical_slash,
                                     sparse_attention)
from vllm_minference.kernels.vertical_slash.adaptive import select_adaptive
from vllm_minference.kernels.vertical_slash.index import (build_vertical_slash_worklist,
                                                          merge_diagonals)


def cuda_ms(fn, reps=20):
    fn()
    torch.cuda.synchronize()
    a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    a.record()
    for _ in range(reps):
        fn()
    b.record()
    torch.cuda.synchronize()
    return a.elapsed_time(b) / reps


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--kv", type=int, nargs="+", default=[131072])
    ap.add_argument("--chunk", type=int, default=8192)
    ap.add_argument("--heads", type=int, default=14)
    ap.add_argument("--kv-heads", type=int, default=2)
    ap.add_argument("--head-dim", type=int, default=64)
    ap.add_argument("--gamma", type=float, default=0.95, help="adaptive selection's target")
    ap.add_argument("--no-table", action="store_true", help="skip the torch.profiler table")
    args = ap.parse_args()
    for L in args.kv:
        profile_step(args, L)


def profile_step(args, L: int) -> None:
    H, Hk, D, C = args.heads, args.kv_heads, args.head_dim, min(args.chunk, L)
    dev = "cuda"
    q = torch.randn(C, H, D, device=dev, dtype=torch.bfloat16)
    k = torch.randn(L, Hk, D, device=dev, dtype=torch.bfloat16)
    v = torch.randn_like(k)
    kv = KVSource.contiguous(k, v, [L])
    layout = SeqLayout.from_lengths([C], [L], dev)
    heads = torch.arange(H, device=dev)
    vb, sb = torch.full((H,), 1000, device=dev), torch.full((H,), 6096, device=dev)
    est = lambda: estimate_vertical_slash(q, kv, layout, heads)  # noqa: E731
    vert, slash = est()
    sel_fn = lambda: select_vertical_slash(vert, slash, layout, vb, sb, 1000, 6096)  # noqa: E731
    sel = sel_fn()
    merge = lambda: merge_diagonals(sel[2], sel[3])  # noqa: E731
    build = lambda: build_vertical_slash_worklist(*sel, layout)  # noqa: E731
    wl = build()
    attn = lambda: sparse_attention(q, kv, layout, wl)  # noqa: E731
    pats = LayerPatterns.from_heads([HeadPattern("vertical_and_slash", 1000, 6096)] * H, dev)
    plan = lambda: plan_layer(q, kv, layout, pats)  # noqa: E731
    pats_ad = LayerPatterns.from_heads([HeadPattern("vertical_and_slash", 1000, 6096)] * H, dev,
                                       gamma=args.gamma)
    plan_ad = lambda: plan_layer(q, kv, layout, pats_ad)  # noqa: E731
    sel_ad = lambda: select_adaptive(vert, slash, layout, vb, sb, 1000, 6096, args.gamma)  # noqa: E731
    rows = [("select adaptive", cuda_ms(sel_ad)), ("plan_layer adaptive total", cuda_ms(plan_ad)),
            ("estimate kernels", cuda_ms(est)), ("select (top-k)", cuda_ms(sel_fn)),
            ("merge diagonals", cuda_ms(merge)), ("index total (merge + lists)", cuda_ms(build)),
            ("plan_layer total", cuda_ms(plan)), ("attention", cuda_ms(attn))]
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(20):
        plan_ad()
    host_ms = (time.perf_counter() - t0) / 20 * 1e3  # launch time, if the GPU keeps up
    torch.cuda.synchronize()
    rows.append(("adaptive plan host (launch) time", host_ms))
    print(f"kv={L} chunk={C} heads={H}/{Hk} d={D} density={float(wl.density(layout).mean()):.3f}")
    for name, ms in rows:
        print(f"  {name:30s} {ms:8.3f} ms")
    if args.no_table:
        return
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(5):
            plan_ad()
        torch.cuda.synchronize()
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=18))


if __name__ == "__main__":
    main()
