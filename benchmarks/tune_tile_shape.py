"""Which query-tile shape can a Triton attention kernel reach FA3 with on Hopper? (GPU)

The sparse kernel computes 64-row query blocks (MInference's granularity) and reaches about
0.45 of FA3 per computed tile even on a dense list.  This probe times a *dense* causal
attention written the way the sparse kernel reads keys (row offsets computed per key, paged
cache through the block table, unmasked interior tiles) at several tile shapes
(BLOCK_M x BLOCK_N, warps, pipeline stages), next to PyTorch SDPA (cuDNN and flash) and,
when vLLM is importable, FA3.  It answers one question before any redesign: does a 128-row
tile close the gap, and by how much?

    python benchmarks/tune_tile_shape.py --out /tmp/tile.json
"""

from __future__ import annotations

import argparse
import json
import math

import torch
import triton
import triton.language as tl

from timing import bench_ms


@triton.jit
def _dense_probe_kernel(Q, K, V, O, BT, qk_scale, L,
                        stride_qt, stride_qh, stride_kp, stride_kt, stride_kh, stride_bt,
                        GROUP: tl.constexpr, D: tl.constexpr, BLOCK_M: tl.constexpr,
                        BLOCK_N: tl.constexpr, PAGE: tl.constexpr, PAGED: tl.constexpr):
    blk = tl.num_programs(0) - 1 - tl.program_id(0)  # heaviest first
    h = tl.program_id(1)
    kvh = h // GROUP
    rows = blk * BLOCK_M + tl.arange(0, BLOCK_M)
    d = tl.arange(0, D)
    q = tl.load(Q + rows[:, None].to(tl.int64) * stride_qt + h * stride_qh + d[None, :])
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, D], tl.float32)
    n_full = (blk * BLOCK_M) // BLOCK_N
    n_all = tl.cdiv((blk + 1) * BLOCK_M, BLOCK_N)
    cols = tl.arange(0, BLOCK_N)
    for j in range(0, n_all):
        keys = j * BLOCK_N + cols
        if PAGED:
            page = tl.load(BT + keys // PAGE)
            off = page.to(tl.int64) * stride_kp + (keys % PAGE).to(tl.int64) * stride_kt
        else:
            off = keys.to(tl.int64) * stride_kt
        k = tl.load(K + kvh * stride_kh + off[:, None] + d[None, :])
        v = tl.load(V + kvh * stride_kh + off[:, None] + d[None, :])
        s = tl.dot(q, tl.trans(k))
        if j >= n_full:
            s = tl.where(keys[None, :] <= rows[:, None], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, axis=1) * qk_scale)
        p = tl.math.exp2(s * qk_scale - m_new[:, None])
        alpha = tl.math.exp2(m_i - m_new)
        l_i = l_i * alpha + tl.sum(p, axis=1)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
        m_i = m_new
    out = acc / l_i[:, None]
    tl.store(O + rows[:, None].to(tl.int64) * stride_qt + h * stride_qh + d[None, :],
             out.to(O.dtype.element_ty))


def probe(q, kc, vc, bt, paged: bool, bm: int, bn: int, warps: int, stages: int):
    L, H, D = q.shape
    Hk = kc.shape[-2]
    out = torch.empty_like(q)
    if paged:
        sp, st, sh = kc.stride(0), kc.stride(1), kc.stride(2)
        page = kc.shape[1]
    else:
        sp, st, sh = 0, kc.stride(0), kc.stride(1)
        page = 1
    _dense_probe_kernel[(L // bm, H)](
        q, kc, vc, out, bt, 1.0 / math.sqrt(D) * 1.4426950408889634, L,
        q.stride(0), q.stride(1), sp, st, sh, bt.stride(0) if bt is not None else 0,
        GROUP=H // Hk, D=D, BLOCK_M=bm, BLOCK_N=bn, PAGE=page, PAGED=paged,
        num_warps=warps, num_stages=stages)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shapes", default="32,8,128,32768;14,2,64,131072",
                    help="';'-separated heads,kv_heads,head_dim,seq_len")
    ap.add_argument("--configs", default="64x64w4s3,64x128w4s3,128x64w8s3,128x128w8s3,"
                    "128x64w4s3,128x128w8s2,128x64w8s4")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    dev = "cuda"
    rows = []
    try:
        from vllm.vllm_flash_attn import flash_attn_varlen_func as fa3
    except Exception:  # noqa: BLE001 - vLLM absent
        fa3 = None
    from torch.nn.attention import SDPBackend, sdpa_kernel
    for shape in args.shapes.split(";"):
        H, Hk, D, L = (int(x) for x in shape.split(","))
        torch.manual_seed(0)
        q = torch.randn(L, H, D, device=dev, dtype=torch.bfloat16)
        k = torch.randn(L, Hk, D, device=dev, dtype=torch.bfloat16)
        v = torch.randn(L, Hk, D, device=dev, dtype=torch.bfloat16)
        page = 16
        n_pages = L // page
        perm = torch.randperm(n_pages, device=dev)
        kc = torch.empty(n_pages, page, Hk, D, device=dev, dtype=torch.bfloat16)
        vc = torch.empty_like(kc)
        kc[perm] = k.view(n_pages, page, Hk, D)
        vc[perm] = v.view(n_pages, page, Hk, D)
        bt = perm.int()[None].contiguous()
        qs, ks, vs = (x.transpose(0, 1)[None] for x in (q, k, v))
        flops = 4 * L * L / 2 * D * H
        base = {}
        for name, be in (("sdpa_cudnn", SDPBackend.CUDNN_ATTENTION),
                         ("sdpa_flash", SDPBackend.FLASH_ATTENTION)):
            try:
                with sdpa_kernel(be):
                    base[name] = bench_ms(lambda: torch.nn.functional.scaled_dot_product_attention(
                        qs, ks, vs, is_causal=True, enable_gqa=True))
            except Exception as e:  # noqa: BLE001
                print(f"{name}: {type(e).__name__}: {e}")
        if fa3 is not None:
            cu = torch.tensor([0, L], dtype=torch.int32, device=dev)
            base["fa3"] = bench_ms(lambda: fa3(q, k, v, max_seqlen_q=L, cu_seqlens_q=cu,
                                               max_seqlen_k=L, cu_seqlens_k=cu, causal=True,
                                               fa_version=3))
        ref = base.get("fa3") or base.get("sdpa_cudnn") or base.get("sdpa_flash")
        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
            want = torch.nn.functional.scaled_dot_product_attention(
                qs, ks, vs, is_causal=True, enable_gqa=True)[0].transpose(0, 1)
        for name, ms in base.items():
            print(f"{H}/{Hk} d{D} L{L} {name:24s} {ms:8.2f} ms {flops / ms / 1e9:6.0f} TFLOP/s")
            rows.append(dict(shape=shape, kernel=name, ms=ms, tflops=flops / ms / 1e9))
        try:
            from vllm_minference.kernels import KVSource, SeqLayout, dense_worklist, sparse_attention
            layout = SeqLayout.from_lengths([L], [L], dev)
            wl = dense_worklist(layout, H)
            kv = KVSource.paged(kc, vc, bt)
            ms = bench_ms(lambda: sparse_attention(q, kv, layout, wl))
            print(f"{H}/{Hk} d{D} L{L} {'sparse_kernel dense list':24s} {ms:8.2f} ms "
                  f"{flops / ms / 1e9:6.0f} TFLOP/s  vs ref {ref / ms:.2f}")
            rows.append(dict(shape=shape, kernel="sparse_attention dense paged16", ms=ms,
                             tflops=flops / ms / 1e9, vs_ref=ref / ms))
        except Exception as e:  # noqa: BLE001
            print(f"sparse kernel: {type(e).__name__}: {e}")
        for cfg in args.configs.split(","):
            bm, rest = cfg.split("x")
            bn, rest = rest.split("w")
            warps, stages = rest.split("s")
            bm, bn, warps, stages = int(bm), int(bn), int(warps), int(stages)
            for paged in (False, True):
                try:
                    o = probe(q, kc if paged else k, vc if paged else v, bt if paged else q,
                              paged, bm, bn, warps, stages)
                    err = float((o.float() - want.float()).norm() / want.float().norm())
                    ms = bench_ms(lambda: probe(q, kc if paged else k, vc if paged else v,
                                                bt if paged else q, paged, bm, bn, warps, stages))
                except Exception as e:  # noqa: BLE001 - out of resources etc.
                    print(f"{cfg} paged={paged}: {type(e).__name__}: {str(e)[:120]}")
                    continue
                tag = f"probe {cfg} {'paged16' if paged else 'contig'}"
                print(f"{H}/{Hk} d{D} L{L} {tag:24s} {ms:8.2f} ms {flops / ms / 1e9:6.0f} "
                      f"TFLOP/s  vs ref {ref / ms:.2f}  err {err:.1e}")
                rows.append(dict(shape=shape, kernel=tag, ms=ms, tflops=flops / ms / 1e9,
                                 vs_ref=ref / ms, rel_err=err))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
