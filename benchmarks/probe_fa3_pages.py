"""Probe: can vLLM's FlashAttention-3 run sparse work lists as per-(block, head) page lists?

Idea under test: give every (query block of R rows, query head) its own virtual sequence
whose block table lists the 16-key sub-pages of its key list (KV cache in HND layout, so a
sub-page belongs to one KV head), ordered so that the block's own causal keys come last;
FA3's bottom-right causal mask is then exactly the block's causal mask.  If FA3 computes
such lists at close to its dense per-tile speed, the sparse prefill inherits FA3's speed.

Here every list is the *full* causal prefix (a dense list), so the work equals dense causal
attention and ``dense_ms / list_ms`` is the per-tile speed of the page-list path (1.0 = FA3).
"shuffled" places the 64-key pages at random physical positions (sparse lists read scattered
pages).  Output: JSON rows + max error against the dense call.

    python benchmarks/probe_fa3_pages.py --out $OUT/fa3_pages.json
"""

from __future__ import annotations

import argparse
import json

import torch
from vllm.vllm_flash_attn import flash_attn_varlen_func

from timing import bench_ms

SUB = 16  # keys per FA3 page (sub-page of a 64-key cache page)
PAGE = 64


def page_tables(n_blocks: int, rows: int, ctx: int, q_heads: int, kv_heads: int,
                perm: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Block table [q_heads * n_blocks, max_sub] and seqused_k of the dense page lists."""
    dev = perm.device
    n_keys = ctx + (torch.arange(n_blocks, device=dev) + 1) * rows  # [NB]
    max_sub = (int(n_keys[-1]) + SUB - 1) // SUB
    t = torch.arange(max_sub, device=dev)
    per = PAGE // SUB
    kvh = torch.arange(q_heads, device=dev) // (q_heads // kv_heads)  # [H]
    phys = perm[t // per]  # [S] physical 64-key page of each sub-page
    table = ((phys[None, :] * kv_heads + kvh[:, None]) * per + t[None, :] % per)  # [H, S]
    table = table[:, None, :].expand(q_heads, n_blocks, max_sub).reshape(-1, max_sub)
    seqused = n_keys[None, :].expand(q_heads, n_blocks).reshape(-1)
    return table.to(torch.int32).contiguous(), seqused.to(torch.int32).contiguous()


def run_case(name: str, q_heads: int, kv_heads: int, d: int, kv_len: int, q_len: int,
             rows_list: list[int]) -> list[dict]:
    dev, dt = "cuda", torch.bfloat16
    ctx = kv_len - q_len
    n_pages = kv_len // PAGE
    torch.manual_seed(0)
    q = torch.randn(q_len, q_heads, d, device=dev, dtype=dt)
    cache = torch.randn(n_pages, kv_heads, PAGE, 2 * d, device=dev, dtype=dt)  # HND, K|V
    scale = d ** -0.5

    # dense baselines: contiguous K/V, and vLLM's paged view of the same HND cache
    kc = cache.permute(0, 2, 1, 3).reshape(kv_len, kv_heads, 2 * d)
    k_cont, v_cont = kc[..., :d].contiguous(), kc[..., d:].contiguous()
    cu_q = torch.tensor([0, q_len], device=dev, dtype=torch.int32)
    cu_k = torch.tensor([0, kv_len], device=dev, dtype=torch.int32)
    out_ref = torch.empty_like(q)

    def dense_cont():
        flash_attn_varlen_func(q, k_cont, v_cont, q_len, cu_q, kv_len, cu_seqlens_k=cu_k,
                               softmax_scale=scale, causal=True, out=out_ref, fa_version=3)

    k_pg = cache.permute(0, 2, 1, 3)[..., :d]
    v_pg = cache.permute(0, 2, 1, 3)[..., d:]
    bt = torch.arange(n_pages, device=dev, dtype=torch.int32)[None]
    su = torch.tensor([kv_len], device=dev, dtype=torch.int32)
    out_pg = torch.empty_like(q)

    def dense_paged():
        flash_attn_varlen_func(q, k_pg, v_pg, q_len, cu_q, kv_len, seqused_k=su, block_table=bt,
                               softmax_scale=scale, causal=True, out=out_pg, fa_version=3)

    rows_out = []
    dense_ms = bench_ms(dense_cont)
    paged_ms = bench_ms(dense_paged)
    dense_cont()
    dense_paged()
    base = dict(case=name, q_heads=q_heads, kv_heads=kv_heads, head_dim=d, kv_len=kv_len,
                q_len=q_len, dense_ms=round(dense_ms, 3))
    rows_out.append(dict(base, variant="dense_paged64_hnd", ms=round(paged_ms, 3),
                         speed=round(dense_ms / paged_ms, 3),
                         max_err=float((out_pg - out_ref).abs().max())))
    print(rows_out[-1], flush=True)

    for rows in rows_list:
        nb = q_len // rows
        qh = q.view(nb, rows, q_heads, d).permute(2, 0, 1, 3).reshape(-1, 1, d).contiguous()
        cu = torch.arange(q_heads * nb + 1, device=dev, dtype=torch.int32) * rows
        for shuffled in (False, True):
            g = torch.Generator(device="cpu").manual_seed(1)
            perm = (torch.randperm(n_pages, generator=g) if shuffled
                    else torch.arange(n_pages)).to(dev)
            cache_use = cache
            if shuffled:  # move the pages so that the lists point at the same keys
                cache_use = torch.empty_like(cache)
                cache_use[perm] = cache
            ks = cache_use.view(n_pages * kv_heads * (PAGE // SUB), SUB, 2 * d)[:, :, None, :d]
            vs = cache_use.view(n_pages * kv_heads * (PAGE // SUB), SUB, 2 * d)[:, :, None, d:]
            table, seqused = page_tables(nb, rows, ctx, q_heads, kv_heads, perm)
            out = torch.empty_like(qh)
            for splits in (1, 0):
                def lists():
                    flash_attn_varlen_func(qh, ks, vs, rows, cu, kv_len, seqused_k=seqused,
                                           block_table=table, softmax_scale=scale, causal=True,
                                           out=out, fa_version=3, num_splits=splits)
                try:
                    ms = bench_ms(lists)
                    lists()
                    o = out.view(q_heads, nb, rows, d).permute(1, 2, 0, 3).reshape(q_len,
                                                                                   q_heads, d)
                    err = float((o - out_ref).abs().max())
                except Exception as e:  # noqa: BLE001 - a probe reports what failed
                    ms, err = float("nan"), repr(e)[:200]
                rows_out.append(dict(base, variant=f"lists_r{rows}_sub{SUB}"
                                     f"{'_shuffled' if shuffled else ''}_splits{splits}",
                                     ms=round(ms, 3), speed=round(dense_ms / ms, 3),
                                     max_err=err, table_mb=round(table.numel() * 4 / 2**20)))
                print(rows_out[-1], flush=True)
            del table, seqused
    return rows_out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    rows = []
    rows += run_case("qwen-0.5b", 14, 2, 64, 131072, 24576, [64, 128, 192])
    rows += run_case("llama-3-8b", 32, 8, 128, 32768, 32768, [64, 128])
    rows += run_case("llama-3-8b", 32, 8, 128, 131072, 16384, [64, 128])
    with open(args.out, "w") as f:
        json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
