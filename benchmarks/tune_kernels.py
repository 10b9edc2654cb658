"""Kernel tuning sweep on the GPU: launch configs of the sparse attention kernel.

Times the attention kernel with a dense work list and with a synthetic Vertical-Slash list
(scattered diagonals plus a local band, built by the real index builder) at the
Llama-3-8B shape, for several (num_warps, num_stages), paged and contiguous K/V, against
PyTorch's SDPA flash kernel (and vLLM's FA3 when vLLM is importable).  Prints a table and
writes JSON; the chosen defaults live in kernels/attention/kernel.py.

    python benchmarks/tune_kernels.py --seq-lens 32768 131072 --out /tmp/tune.json
"""

from __future__ import annotations

import argparse
import json

import torch

from timing import bench_ms

from vllm_minference.kernels import (KVSource, SeqLayout, build_vertical_slash_worklist,
                                     dense_worklist, estimate_vertical_slash,
                                     select_vertical_slash, sparse_attention)


def fa3_or_none():
    try:
        from vllm.vllm_flash_attn import flash_attn_varlen_func  # noqa: F401
        return flash_attn_varlen_func
    except Exception:  # vLLM absent or built without FA
        return None


def synthetic_selection(L: int, H: int, n_cols: int, n_diags: int, far_frac: float, device, seed=0):
    """Columns and diagonals shaped like real attention: band + clumps + some isolated far ones."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    cols = torch.full((1, H, n_cols), -1, dtype=torch.int32)
    diags = torch.full((1, H, n_diags), -1, dtype=torch.int32)
    for h in range(H):
        c = torch.randperm(L, generator=g)[:n_cols]
        n_far = int(n_diags * far_frac)
        band = torch.arange(0, min(L, n_diags - n_far))
        far = torch.randint(0, L, (n_far,), generator=g)
        d = torch.unique(torch.cat([band, far]))[:n_diags]
        cols[0, h, :len(c)] = c.sort(descending=True).values
        diags[0, h, :len(d)] = d.sort(descending=True).values
    n_c = (cols >= 0).sum(-1).int()
    n_d = (diags >= 0).sum(-1).int()
    return [x.to(device) for x in (cols, n_c, diags, n_d)]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seq-lens", type=int, nargs="+", default=[32768, 131072])
    ap.add_argument("--heads", type=int, default=32)
    ap.add_argument("--kv-heads", type=int, default=8)
    ap.add_argument("--head-dim", type=int, default=128)
    ap.add_argument("--configs", default="w4s3c1,w4s3c2",
                    help="comma list of w<warps>s<stages>c<chunks per loop step>[ws] (ws: "
                    "warp-specialized loop)")
    ap.add_argument("--pages", default="16", help="comma list of paged-cache page sizes")
    ap.add_argument("--lists", default="dense,vs_far0.1")
    ap.add_argument("--out", default=None)
    ap.add_argument("--device", default="cuda", help="cpu: a smoke test under TRITON_INTERPRET=1")
    args = ap.parse_args()
    dev = args.device
    H, Hk, D = args.heads, args.kv_heads, args.head_dim
    fa3 = fa3_or_none()
    rows = []
    for L in args.seq_lens:
        torch.manual_seed(0)
        q = torch.randn(L, H, D, device=dev, dtype=torch.bfloat16)
        k = torch.randn(L, Hk, D, device=dev, dtype=torch.bfloat16)
        v = torch.randn(L, Hk, D, device=dev, dtype=torch.bfloat16)
        layout = SeqLayout.from_lengths([L], [L], dev)
        kv_c = KVSource.contiguous(k, v, [L])
        kv_sources = [("contig", kv_c)]
        for page in (int(x) for x in args.pages.split(",")):
            n_pages = L // page
            perm = torch.randperm(n_pages, device=dev) + 1
            kc = torch.empty(n_pages + 1, page, Hk, D, device=dev, dtype=torch.bfloat16)
            vc = torch.empty_like(kc)
            kc[perm] = k.view(n_pages, page, Hk, D)
            vc[perm] = v.view(n_pages, page, Hk, D)
            kv_sources.append((f"paged{page}", KVSource.paged(kc, vc, perm[None].int())))
        kv_p = kv_sources[1][1]
        # baselines
        qs = q.transpose(0, 1)[None]
        ks = k.transpose(0, 1)[None]
        vs = v.transpose(0, 1)[None]
        from torch.nn.attention import SDPBackend, sdpa_kernel
        with sdpa_kernel(SDPBackend.FLASH_ATTENTION if dev == "cuda" else SDPBackend.MATH):
            t_sdpa = bench_ms(
                lambda: torch.nn.functional.scaled_dot_product_attention(
                    qs, ks, vs, is_causal=True, enable_gqa=True))
        t_fa3 = None
        if fa3 is not None:
            cu = torch.tensor([0, L], dtype=torch.int32, device=dev)
            t_fa3 = bench_ms(
                lambda: fa3(q, k, v, max_seqlen_q=L, cu_seqlens_q=cu, max_seqlen_k=L,
                            cu_seqlens_k=cu, causal=True, fa_version=3))
        print(f"L={L}: sdpa(flash) {t_sdpa:.2f} ms, fa3 {t_fa3}")
        dense_tiles = float(layout.dense_tiles().sum()) * H
        lists = {}
        for name in args.lists.split(","):
            if name == "dense":
                lists[name] = dense_worklist(layout, H)
            else:
                far = float(name.removeprefix("vs_far"))
                sel = synthetic_selection(L, H, 1000, 6096, far, dev)
                lists[name] = build_vertical_slash_worklist(*sel, layout)
        # estimation + index timing on the real path
        heads = torch.arange(H, device=dev)
        vb = torch.full((H,), 1000, device=dev)
        sb = torch.full((H,), 6096, device=dev)

        def est():
            vert, sl = estimate_vertical_slash(q, kv_p, layout, heads)
            return select_vertical_slash(vert, sl, layout, vb, sb, 1000, 6096)
        t_est = bench_ms(est)
        sel = est()
        t_idx = bench_ms(lambda: build_vertical_slash_worklist(*sel, layout))
        print(f"  estimate+select {t_est:.2f} ms, index {t_idx:.2f} ms (random q/k)")
        for name, wl in lists.items():
            density = float(wl.tiles().sum()) / dense_tiles
            for kvname, kv in kv_sources:
                for cfg in args.configs.split(","):
                    nw = int(cfg[1:cfg.index("s")])
                    ns = int(cfg[cfg.index("s") + 1:cfg.index("c")])
                    ws = cfg.endswith("ws")
                    cpt = int(cfg[cfg.index("c") + 1:].removesuffix("ws"))
                    try:
                        t = bench_ms(
                            lambda: sparse_attention(q, kv, layout, wl, num_warps=nw,
                                                     num_stages=ns, chunks_per_iter=cpt,
                                                     warp_specialize=ws),
                        )
                    except Exception as e:  # out of resources etc.
                        print(f"  {name} {kvname} {cfg}: failed {type(e).__name__}: {e}")
                        continue
                    base = t_fa3 if t_fa3 is not None else t_sdpa
                    row = dict(seq_len=L, list=name, kv=kvname, cfg=cfg, density=density,
                               ms=t, sdpa_ms=t_sdpa, fa3_ms=t_fa3,
                               speedup=base / t, efficiency=base / t * density,
                               est_ms=t_est, index_ms=t_idx)
                    rows.append(row)
                    print(f"  {name:10s} {kvname:8s} {cfg:9s}: density {density:.3f} {t:8.2f} ms "
                          f"speedup {base / t:5.2f} eff {base / t * density:.2f}")
        del q, k, v, kv_sources, kv_p, kv_c
        torch.cuda.empty_cache()
    if args.out:
        with open(args.out, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
