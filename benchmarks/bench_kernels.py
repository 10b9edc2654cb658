"""Kernel benchmark: sparse prefill kernels vs FlashAttention-3, on real and random attention.

Realistic inputs: post-RoPE Q/K/V of the real Qwen2.5-Coder-0.5B (gpu-kit) on source code,
with YaRN rope scaling past its 32K context, captured for a few layers by running the
model's own modules (HF weights) with FA3 attention.  From them:

* ``real`` rows at the model's shape (14 query / 2 KV heads, head_dim 64): estimate, index
  and attention of each pattern on the captured tensors;
* ``real`` rows at Llama-3-8B shape (32 / 8 heads, head_dim 128): the work lists of the
  captured heads (three layers, first 32 heads) replayed on random tensors of that shape,
  whose cost depends on the lists, not the values; vLLM's bundled Vertical-Slash kernel
  (``sparse_attn_func``, CUTLASS FA2) runs the same lists as a baseline.

Worst case: ``random`` rows, random Q/K at Llama-3-8B shape (what dummy weights give), with
the density guard of the vLLM backend (dense FA3 when the lists cover too much).

K/V are read from a paged cache by our kernels: 64-token pages in HND order, what the plugin
asks vLLM for (``--page`` 16 measures vLLM's generic default).  ``--kernels`` picks what
computes the key tiles: ``triton`` (this package's kernel), ``fa3`` (FlashAttention-3 over
per-(head, row group) page lists, :mod:`vllm_minference.kernels.page_lists`), or both (rows
with ``kernel`` = each; ``page_density`` = keys FA3 computes over the causal area).  Writes JSON rows
(tables: ``summarize_results.py``, benchmarks/results/HISTORY.md) and prints a table.

    python benchmarks/bench_kernels.py --seq-lens 32768 131072 --out kernels.json
"""

from __future__ import annotations

import argparse
import dataclasses
import glob
import json
import math
import os
import signal
import sys
import time

import torch

from vllm_minference.kernels import (KVSource, SeqLayout, block_sparse_scores,
                                     build_a_shape_worklist, build_block_sparse_worklist,
                                     build_vertical_slash_worklist, estimate_vertical_slash,
                                     select_vertical_slash, sparse_attention)
from vllm_minference.kernels.attention.reference import block_attention_reference
from vllm_minference.kernels.page_lists import PageGeometry, group_rows, page_list_attention
from vllm_minference.kernels.vertical_slash.adaptive import select_adaptive
from vllm_minference.kernels.vertical_slash.row_stats import estimate_row_lse
from vllm_minference.kernels.worklist import WorkList

VS_BUDGET = (1000, 6096)
BS_TOPK = 100
A_SHAPE = (128, 3968)
ANTIDIAGONAL = dict(tau=0.9, stride=8, max_tiles=2048)  # pattern "antidiagonal" (--tau, --stride)
PAGE = 64  # the backend's preferred KV block size (see --page)
LLAMA = dict(q_heads=32, kv_heads=8, head_dim=128)
QWEN = dict(q_heads=14, kv_heads=2, head_dim=64)
DEVICE = "cuda"
ESTIMATE_STATS = "triton"  # where the estimate's row statistics come from (--estimate-stats)


# ---------------------------------------------------------------------------- timing
def time_ms(fn, reps: int | None = None) -> float:
    """Median CUDA-event time of ``fn`` after one warm-up; fewer repeats for slow calls.
    (On a CPU, for smoke tests under the Triton interpreter: one wall-clock run.)"""
    if DEVICE == "cpu":
        t0 = time.perf_counter()
        fn()
        return (time.perf_counter() - t0) * 1e3
    fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    fn()
    end.record()
    torch.cuda.synchronize()
    first = start.elapsed_time(end)
    if reps is None:
        reps = 1 if first > 2000 else 3 if first > 200 else 10
    times = [first]
    for _ in range(reps - 1):
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    times.sort()
    return times[len(times) // 2]


# ---------------------------------------------------------------------------- inputs
def code_tokens(tokenizer, n_tokens: int) -> torch.Tensor:
    """``n_tokens`` tokens of Python source found on this machine (deterministic order)."""
    roots = [p for p in sys.path if p.endswith("site-packages") or "gpukit" in p]
    files = sorted({f for r in roots for f in glob.glob(os.path.join(r, "**", "*.py"),
                                                          recursive=True)})
    ids: list[int] = []
    for f in files:
        try:
            with open(f, encoding="utf-8") as fh:
                ids.extend(tokenizer.encode(fh.read(), add_special_tokens=False))
        except (UnicodeDecodeError, OSError):
            continue
        if len(ids) >= n_tokens:
            break
    if len(ids) < n_tokens:
        raise RuntimeError(f"only {len(ids)} tokens of source code found")
    return torch.tensor(ids[:n_tokens])


@torch.no_grad()
def capture_qkv(model_path: str, tokens: torch.Tensor, layers: list[int]) -> dict:
    """Post-RoPE q/k/v ``[L, heads, D]`` of ``layers`` for one prompt, YaRN past 32K."""
    from transformers import AutoConfig, AutoModelForCausalLM
    from transformers.models.qwen2.modeling_qwen2 import apply_rotary_pos_emb

    n = tokens.numel()
    config = AutoConfig.from_pretrained(model_path)
    factor = max(1.0, n / 32768)
    if factor > 1:
        config.rope_parameters = {"rope_type": "yarn", "factor": float(2 ** math.ceil(math.log2(factor))),
                                  "original_max_position_embeddings": 32768,
                                  "rope_theta": 1000000.0}
        config.max_position_embeddings = max(n, 32768)
    config.num_hidden_layers = max(layers) + 1
    model = AutoModelForCausalLM.from_pretrained(
        model_path, config=config, dtype=torch.bfloat16 if DEVICE == "cuda" else torch.float32
    ).to(DEVICE).eval()
    inner = model.model
    x = inner.embed_tokens(tokens.to(DEVICE)[None])
    pos = torch.arange(n, device=DEVICE)[None]
    cos, sin = inner.rotary_emb(x, pos)
    out = {}
    for i, layer in enumerate(inner.layers[: max(layers) + 1]):
        attn = layer.self_attn
        h = layer.input_layernorm(x)
        q = attn.q_proj(h).view(1, n, -1, attn.head_dim).transpose(1, 2)
        k = attn.k_proj(h).view(1, n, -1, attn.head_dim).transpose(1, 2)
        v = attn.v_proj(h).view(1, n, -1, attn.head_dim)
        q, k = apply_rotary_pos_emb(q, k, cos, sin)
        q, k = q[0].transpose(0, 1).contiguous(), k[0].transpose(0, 1).contiguous()
        v = v[0].contiguous()
        if i in layers:
            out[i] = (q, k, v)
        o = fa3(q, k, v)()
        x = x + attn.o_proj(o.reshape(1, n, -1).to(x.dtype))
        del q, k, v, o, h
        h = layer.post_attention_layernorm(x)
        step = 65536  # the MLP of a 1M-token prompt in one go needs ~40 GB
        x = x + torch.cat([layer.mlp(h[:, s:s + step]) for s in range(0, n, step)], dim=1)
    del model, x, cos, sin
    torch.cuda.empty_cache()
    return out


def paged(k: torch.Tensor, v: torch.Tensor) -> tuple[KVSource, torch.Tensor]:
    """The same keys/values in the backend's paged cache (``PAGE`` tokens, shuffled pages,
    HND order ``[pages, kv_heads, PAGE, 2 * D]``): its KVSource view, and the cache."""
    L, hk, d = k.shape
    n_pages = math.ceil(L / PAGE)
    pad = n_pages * PAGE - L
    if pad:
        k = torch.cat([k, k.new_zeros(pad, hk, d)])
        v = torch.cat([v, v.new_zeros(pad, hk, d)])
    perm = torch.randperm(n_pages, device=k.device) + 1
    cache = torch.empty(n_pages + 1, hk, PAGE, 2 * d, dtype=k.dtype, device=k.device)
    cache[perm, :, :, :d] = k.view(n_pages, PAGE, hk, d).transpose(1, 2)
    cache[perm, :, :, d:] = v.view(n_pages, PAGE, hk, d).transpose(1, 2)
    nhd = cache.transpose(1, 2)
    return KVSource.paged(nhd[..., :d], nhd[..., d:], perm[None].int()), cache


# ---------------------------------------------------------------------------- baselines
def fa3(q, k, v):
    """Dense causal FA3 of one sequence; ``q`` may be the last rows of ``k``'s sequence (a
    prefill chunk: causal is bottom-right aligned)."""
    nq, nk = q.shape[0], k.shape[0]
    if DEVICE == "cpu":  # smoke test: no FlashAttention on a CPU, time our dense list
        from vllm_minference.kernels import dense_worklist
        layout = SeqLayout.from_lengths([nq], [nk], DEVICE)
        kv, wl = KVSource.contiguous(k, v, [nk]), dense_worklist(layout, q.shape[1])
        return lambda: sparse_attention(q, kv, layout, wl)
    from vllm.vllm_flash_attn import flash_attn_varlen_func
    cu_q = torch.tensor([0, nq], dtype=torch.int32, device=q.device)
    cu_k = torch.tensor([0, nk], dtype=torch.int32, device=q.device)
    return lambda: flash_attn_varlen_func(q, k, v, max_seqlen_q=nq, cu_seqlens_q=cu_q,
                                          max_seqlen_k=nk, cu_seqlens_k=cu_k, causal=True,
                                          fa_version=3)


def fa2_sparse_inputs(wl: WorkList, layout: SeqLayout) -> tuple:
    """Our lists in vLLM's sparse_attn_func format (MInference's: per 64-row block, 64-key
    block starts + column indices), for a single full-prefill sequence."""
    d = wl.desc.long()
    H, NB = d.shape[:2]
    nnz_s = max(1, int(d[..., 1].max()))
    nnz_v = max(1, int(d[..., 4].max()))
    ar_s = torch.arange(nnz_s, device=d.device)
    ar_v = torch.arange(nnz_v, device=d.device)
    offs, cols = [], []
    for h in range(H):
        idx = (d[h, :, 0:1] + ar_s).clamp_max(wl.chunks.shape[0] - 1)
        starts = (wl.chunks[idx, 0].long() + d[h, :, 2:3]).clamp_min(0)
        offs.append(torch.where(ar_s < d[h, :, 1:2], starts, 0).int())
        cidx = (d[h, :, 3:4] + ar_v).clamp_max(wl.cols.shape[0] - 1)
        cols.append(torch.where(ar_v < d[h, :, 4:5], wl.cols[cidx].long(), 0).int())
    return (d[None, ..., 1].int().contiguous(), torch.stack(offs)[None].contiguous(),
            d[None, ..., 4].int().contiguous(), torch.stack(cols)[None].contiguous())


def fa2_sparse(q, k, v, lists):
    from vllm.vllm_flash_attn.flash_attn_interface import sparse_attn_func
    bc, bo, cc, ci = lists
    return lambda: sparse_attn_func(q[None], k[None], v[None], bc, bo, cc, ci, causal=True)


# ---------------------------------------------------------------------------- pipeline
def add_estimate_stats_arg(ap: argparse.ArgumentParser) -> None:
    """``--estimate-stats`` (this script and bench_chunked.py), read into ESTIMATE_STATS."""
    ap.add_argument("--estimate-stats", choices=["triton", "fa3"], default="triton",
                    help="the estimate rows' softmax statistics: first Triton pass, or one "
                         "FA3 call (paged K/V)")


def vs_estimate(q, kv, layout, heads):
    """The Vertical-Slash estimate, its row statistics from ``ESTIMATE_STATS``: ``triton``
    (the first pass) or ``fa3`` (one FlashAttention-3 call, ``--estimate-stats fa3``)."""
    row_lse = estimate_row_lse(q, kv, layout, heads) if ESTIMATE_STATS == "fa3" else None
    return estimate_vertical_slash(q, kv, layout, heads, row_lse=row_lse)


def vs_select(q, kv, layout, n_heads, gamma=None):
    """Estimate + selection; ``gamma`` set: adaptive tile-aware selection, budgets as ceilings."""
    heads = torch.arange(n_heads, device=q.device)
    vert, slash = vs_estimate(q, kv, layout, heads)
    b = torch.full((n_heads,), VS_BUDGET[0], device=q.device), torch.full(
        (n_heads,), VS_BUDGET[1], device=q.device)
    if gamma is not None:
        return select_adaptive(vert, slash, layout, b[0], b[1], *VS_BUDGET, gamma=gamma)
    return select_vertical_slash(vert, slash, layout, b[0], b[1], *VS_BUDGET)


VS_PATTERNS = ("vertical_slash", "vertical_slash_adaptive")


def plan_pattern(pattern: str, q, kv, layout, n_heads, gamma=0.95):
    """(estimate_fn, index_fn(est) -> WorkList) of one pattern for all heads."""
    if pattern in VS_PATTERNS:
        g = gamma if pattern == "vertical_slash_adaptive" else None
        return (lambda: vs_select(q, kv, layout, n_heads, g),
                lambda sel: build_vertical_slash_worklist(*sel, layout))
    if pattern == "block_sparse":
        heads = torch.arange(n_heads, device=q.device)
        topk = torch.full((n_heads,), BS_TOPK, device=q.device)
        return (lambda: block_sparse_scores(q, kv, layout, heads),
                lambda sc: build_block_sparse_worklist(sc, topk, BS_TOPK))
    if pattern == "antidiagonal":  # --tau, --stride: per-block lists (mode "antidiagonal")
        from vllm_minference.kernels.antidiagonal import antidiagonal_worklist
        heads = torch.arange(n_heads, device=q.device)
        # estimate and lists in one step: the selection kernel writes the lists itself
        return (lambda: antidiagonal_worklist(q, kv, layout, heads, ANTIDIAGONAL["tau"],
                                              ANTIDIAGONAL["max_tiles"],
                                              ANTIDIAGONAL["stride"]),
                lambda wl: wl)
    if pattern == "a_shape":
        sink = torch.full((n_heads,), A_SHAPE[0], device=q.device)
        local = torch.full((n_heads,), A_SHAPE[1], device=q.device)
        return (lambda: None, lambda _: build_a_shape_worklist(layout, sink, local))
    raise ValueError(pattern)


def with_extra_tiles(index_fn, pattern: str, extra_blocks: int, q, kv, layout):
    """``index_fn`` whose fixed Vertical-Slash lists also carry fixed mode's ``extra_blocks``
    far tiles per query block, as the plugin plans them (so their ranking is timed as index
    building and their keys as attention); other patterns, or 0, unchanged."""
    if pattern != "vertical_slash" or extra_blocks <= 0:
        return index_fn
    from vllm_minference.kernels.block_sparse import extra_block_tiles
    from vllm_minference.kernels.plan import KEEP_NEAR_DIAGS
    heads = torch.arange(q.shape[1], device=q.device)

    def index_with_extra(est):
        wl = index_fn(est)
        wl.extra = extra_block_tiles(q, kv, layout, heads, extra_blocks, KEEP_NEAR_DIAGS)
        return wl
    return index_with_extra


def density(wl: WorkList, layout: SeqLayout) -> float:
    return float(wl.tiles().sum()) / (float(layout.dense_tiles().sum()) * wl.num_heads)


def spot_error(q, k, v, wl, layout, out, scale, samples=6, seed=0) -> float:
    """Max abs error of ``out`` against a float32 reference on sampled (head, block)s."""
    g = torch.Generator().manual_seed(seed)
    err = 0.0
    for _ in range(samples):
        h = int(torch.randint(wl.num_heads, (1,), generator=g))
        blk = int(torch.randint(layout.num_blocks, (1,), generator=g))
        ref = block_attention_reference(q, k, v, wl, layout, h, blk, scale)
        m = int(layout.blk_m[blk])
        got = out[m * 64:m * 64 + ref.shape[0], h].float()
        err = max(err, float((got - ref).abs().max()))
    return err


def fa3_options(kernel: str) -> dict:
    """``page_list_attention``'s options named in a kernel label: ``fa3/runN``: chunks of
    diagonal runs shorter than N stay on the Triton pass (``min_run``); ``fa3/blocksN``:
    sub-pages fewer than N blocks of a row group list do (``min_blocks``); both may follow
    ``fa3``, e.g. ``fa3/run2/blocks2``."""
    options = {"min_run": 1, "min_blocks": 1}
    for part in kernel.split("/")[1:]:
        name = part.rstrip("0123456789")
        key = {"run": "min_run", "blocks": "min_blocks"}.get(name)
        if key is None or name == part:
            raise ValueError(f"kernel {kernel!r}: expected fa3/runN or fa3/blocksN parts")
        options[key] = int(part[len(name):])
    return options


def measure(rows, *, input_kind, pattern, q, k, v, kv, layout, dense_ms, est_fn, index_fn,
            wl_override=None, fa2=False, guard=None, extra=None, cache=None,
            kernels=("triton",)):
    for kernel in kernels:
        measure_kernel(rows, kernel, input_kind=input_kind, pattern=pattern, q=q, k=k, v=v,
                       kv=kv, layout=layout, dense_ms=dense_ms, est_fn=est_fn,
                       index_fn=index_fn, wl_override=wl_override,
                       fa2=fa2 and kernel == kernels[0], guard=guard, extra=extra, cache=cache)


def measure_kernel(rows, kernel, *, input_kind, pattern, q, k, v, kv, layout, dense_ms, est_fn,
                   index_fn, wl_override=None, fa2=False, guard=None, extra=None, cache=None):
    n_heads, d = q.shape[1], q.shape[2]
    scale = d ** -0.5
    est_ms = time_ms(est_fn) if est_fn is not None else 0.0
    est = est_fn() if est_fn is not None else None
    index_ms = time_ms(lambda: index_fn(est)) if wl_override is None else 0.0
    wl = wl_override if wl_override is not None else index_fn(est)
    # the extra tiles are computed by the FA3 page lists only: other kernels' density and
    # efficiency leave them out (thirteenth session's L6 rows still counted them)
    dens = density(wl if kernel.startswith("fa3") or wl.extra is None
                   else dataclasses.replace(wl, extra=None), layout)
    out = torch.empty_like(q)
    page_density, stages = None, None
    if kernel.startswith("fa3"):
        options = fa3_options(kernel)
        geo = PageGeometry.build(layout, n_heads, group_rows(d))  # once per step, as in vLLM
        attn_ms = time_ms(lambda: page_list_attention(q, cache, kv.block_table, layout, wl,
                                                      scale, out=out, geometry=geo,
                                                      **options))
        stats: dict = {}  # after the timing: compiled and warm, so the stages time the GPU
        page_list_attention(q, cache, kv.block_table, layout, wl, scale, out=out, stats=stats,
                            geometry=geo, **options)
        page_density = round(float(stats["key_rows"]) / (n_heads * layout.causal_keys()), 4)
        stages = {k: round(v, 3) for k, v in stats.get("stage_ms", {}).items() if k != "stats"}
        err = None  # a superset of the list's keys: checked in tests/test_page_lists.py
    else:
        attn_ms = time_ms(lambda: sparse_attention(q, kv, layout, wl, scale, out=out))
        err = spot_error(q, k, v, wl, layout, out, scale)
    row = dict(input=input_kind, pattern=pattern, seq_len=q.shape[0], q_heads=n_heads,
               kv_heads=k.shape[1], head_dim=d, density=round(dens, 4), dense_ms=dense_ms,
               estimate_ms=est_ms, index_ms=index_ms, attn_ms=attn_ms,
               total_ms=est_ms + index_ms + attn_ms, max_abs_err=err, kv=f"paged{PAGE}",
               kernel=kernel, page_density=page_density,
               extra_excluded=wl.extra is not None and not kernel.startswith("fa3"))
    if stages:
        row["fa3_stages_ms"] = stages  # gather, tables, fa3, columns: one untimed call
    if guard is not None and dens > guard:  # the backend's density guard: FA3 instead
        row["pattern"] = pattern + "+guard"
        row["attn_ms"] = dense_ms
        row["total_ms"] = est_ms + index_ms + dense_ms
        row["guard"] = f"density {dens:.3f} > {guard}: dense FA3"
    row["speedup"] = dense_ms / row["total_ms"]
    row["efficiency"] = row["speedup"] * dens
    if fa2:
        try:
            lists = fa2_sparse_inputs(wl, layout)
            row["fa2_sparse_ms"] = time_ms(fa2_sparse(q, k, v, lists))
            del lists
        except Exception as e:  # noqa: BLE001 - report, keep going
            row["fa2_sparse_ms"] = None
            row["fa2_sparse_error"] = f"{type(e).__name__}: {e}"[:300]
    if extra:
        row.update(extra)
    rows.append(row)
    print(f"{row['input']:6s} {row['pattern']:22s} {kernel:6s} L={row['seq_len']:8d} "
          f"h={n_heads}/{k.shape[1]} d={d} dens={dens:.3f} dense={dense_ms:9.2f} "
          f"est={est_ms:7.2f} idx={row['index_ms']:7.2f} attn={row['attn_ms']:9.2f} "
          f"x{row['speedup']:.2f} eff={row['efficiency']:.2f} err={err}"
          + (f" fa2_sparse={row.get('fa2_sparse_ms')}" if fa2 else "")
          + (f" stages={stages}" if stages else ""), flush=True)
    del wl, est
    torch.cuda.empty_cache()


def bench_length(L: int, args, tokens_all, rows):
    layout = SeqLayout.from_lengths([L], [L], DEVICE)
    patterns = args.patterns.split(",")
    # ---------------- real attention (Qwen2.5-Coder-0.5B)
    if args.model:
        t0 = time.time()
        cap = capture_qkv(args.model, tokens_all[:L], args.layers)
        print(f"captured layers {args.layers} at {L} tokens in {time.time() - t0:.1f}s",
              flush=True)
        replay = {}
        for li, (q, k, v) in cap.items():
            kv, cache = paged(k, v)
            dense_ms = time_ms(fa3(q, k, v))
            for pattern in patterns:
                if pattern == "block_sparse" and L > args.max_bs_len:
                    continue
                if pattern == "profile":
                    est_fn, index_fn = plan_profile(args, li, q, kv, layout)
                else:
                    est_fn, index_fn = plan_pattern(pattern, q, kv, layout, q.shape[1],
                                                    args.gamma)
                    index_fn = with_extra_tiles(index_fn, pattern, args.extra_blocks, q, kv,
                                                layout)
                measure(rows, input_kind="real", pattern=pattern, q=q, k=k, v=v, kv=kv,
                        layout=layout, dense_ms=dense_ms, est_fn=est_fn, index_fn=index_fn,
                        cache=cache, kernels=args.kernels,
                        extra=dict(layer=li, model="Qwen2.5-Coder-0.5B", **mode_of(pattern, args)))
                if pattern in VS_PATTERNS:
                    replay.setdefault(pattern, []).append(est_fn())
            del kv, cache
        del cap
        torch.cuda.empty_cache()
        # ---------------- the same Vertical-Slash lists at Llama-3-8B shape
        for pattern, sels in replay.items():
            pooled = [torch.cat([s[i] for s in sels], dim=1) for i in range(4)]
            heads = torch.arange(LLAMA["q_heads"], device=pooled[0].device) % pooled[0].shape[1]
            sel = [x[:, heads].contiguous() for x in pooled]
            q, k, v = rand_qkv(L)
            kv, cache = paged(k, v)
            dense_ms = time_ms(fa3(q, k, v))
            g = args.gamma if pattern == "vertical_slash_adaptive" else None
            est_fn = lambda: vs_select(q, kv, layout, LLAMA["q_heads"], g)  # noqa: E731 (cost only)
            measure(rows, input_kind="real", pattern=pattern, q=q, k=k, v=v, kv=kv,
                    layout=layout, dense_ms=dense_ms, est_fn=est_fn,
                    index_fn=with_extra_tiles(lambda _: build_vertical_slash_worklist(*sel, layout),
                                              pattern, args.extra_blocks, q, kv, layout),
                    fa2=L <= args.max_fa2_len, cache=cache, kernels=args.kernels,
                    extra=dict(model="Llama-3-8B shape, Qwen lists replayed",
                               layers=args.layers, **mode_of(pattern, args)))
            del q, k, v, kv, cache, sel, pooled
            torch.cuda.empty_cache()
    # ---------------- random attention at Llama-3-8B shape (dummy weights)
    if args.random:
        q, k, v = rand_qkv(L)
        kv, cache = paged(k, v)
        dense_ms = time_ms(fa3(q, k, v))
        for pattern in VS_PATTERNS:
            est_fn, index_fn = plan_pattern(pattern, q, kv, layout, LLAMA["q_heads"], args.gamma)
            index_fn = with_extra_tiles(index_fn, pattern, args.extra_blocks, q, kv, layout)
            measure(rows, input_kind="random", pattern=pattern, q=q, k=k, v=v, kv=kv,
                    layout=layout, dense_ms=dense_ms, est_fn=est_fn, index_fn=index_fn,
                    guard=args.guard, cache=cache, kernels=args.kernels,
                    extra=dict(model="Llama-3-8B shape, random", **mode_of(pattern, args)))
        del q, k, v, kv, cache
        torch.cuda.empty_cache()


def plan_profile(args, layer: int, q, kv, layout):
    """(plan_fn, identity) for one layer of ``--profile`` at ``--budget-scale``: the plugin's
    own planning (every pattern of the profile, per-head budgets), timed as the estimate."""
    from vllm_minference.kernels import LayerPatterns, plan_layer
    from vllm_minference.profiles import default_profile, load_profile, locate_profile
    if args.profile == "default":  # MInference's budgets on every head
        profile = default_profile(layer + 1, q.shape[1])
    else:
        profile = load_profile(locate_profile(args.profile))
    heads = profile.layer_patterns(layer, list(range(q.shape[1])), args.budget_scale)
    patterns = LayerPatterns.from_heads(heads, q.device)
    return (lambda: plan_layer(q, kv, layout, patterns)), (lambda wl: wl)


def mode_of(pattern: str, args) -> dict:
    if pattern == "profile":
        return dict(mode="fixed", profile=os.path.basename(str(args.profile)),
                    budget_scale=args.budget_scale)
    if pattern == "vertical_slash_adaptive":
        return dict(mode="adaptive", gamma=args.gamma)
    if pattern == "antidiagonal":
        return dict(mode="antidiagonal", **ANTIDIAGONAL)
    if pattern == "vertical_slash":
        extra = getattr(args, "extra_blocks", 0)
        return dict(mode="fixed", extra_blocks=extra) if extra else dict(mode="fixed")
    return {}


def rand_qkv(L):
    g = torch.Generator(device=DEVICE).manual_seed(L)
    dtype = torch.bfloat16 if DEVICE == "cuda" else torch.float16  # interpreter: no bf16 dot
    shape = dict(device=DEVICE, dtype=dtype, generator=g)
    return (torch.randn(L, LLAMA["q_heads"], LLAMA["head_dim"], **shape),
            torch.randn(L, LLAMA["kv_heads"], LLAMA["head_dim"], **shape),
            torch.randn(L, LLAMA["kv_heads"], LLAMA["head_dim"], **shape))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seq-lens", type=int, nargs="+", default=[32768, 131072, 262144])
    ap.add_argument("--model", default=os.environ.get("GPU_KIT_MODEL"),
                    help="HF folder of Qwen2.5-Coder-0.5B-Instruct (real attention)")
    ap.add_argument("--layers", type=int, nargs="+", default=[3, 9, 15])
    ap.add_argument("--patterns",
                    default="vertical_slash,vertical_slash_adaptive,block_sparse,a_shape")
    ap.add_argument("--gamma", type=float, default=0.95, help="adaptive Vertical-Slash target")
    ap.add_argument("--tau", type=float, default=ANTIDIAGONAL["tau"],
                    help="pattern antidiagonal: attention share each block keeps")
    ap.add_argument("--stride", type=int, default=ANTIDIAGONAL["stride"],
                    help="pattern antidiagonal: antidiagonal stride")
    ap.add_argument("--extra-blocks", type=int, default=0,
                    help="fixed Vertical-Slash lists also carry this many far tiles per query "
                         "block (the plugin's fixed-mode default is 32; 0 keeps the rows "
                         "comparable with sessions before the extra tiles)")
    ap.add_argument("--profile", default=None,
                    help="profile file, bundled name or 'default' for the 'profile' pattern (real rows)")
    ap.add_argument("--budget-scale", type=float, default=1.0,
                    help="budget scale of the 'profile' pattern")
    ap.add_argument("--max-bs-len", type=int, default=262144,
                    help="longest prompt for block-sparse (its score matrix grows as L^2)")
    ap.add_argument("--max-fa2-len", type=int, default=262144,
                    help="longest prompt for the sparse_attn_func baseline (its lists grow)")
    ap.add_argument("--no-random", dest="random", action="store_false")
    ap.add_argument("--guard", type=float, default=0.45,
                    help="density above which the backend runs dense FA3 instead")
    ap.add_argument("--page", type=int, default=64, help="KV page size (tokens)")
    ap.add_argument("--kernels", default=None,
                    help="comma list: triton (this package's kernel), fa3 (page lists), "
                         "fa3/runN (runs of < N chunks on Triton), fa3/blocksN (sub-pages "
                         "fewer than N blocks of a row group list on Triton); default "
                         "triton,fa3 on a GPU, triton on a CPU")
    add_estimate_stats_arg(ap)
    ap.add_argument("--out", required=True)
    ap.add_argument("--device", default="cuda",
                    help="cpu: smoke test of the script under TRITON_INTERPRET=1 (random only)")
    ap.add_argument("--random-tokens", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    args.kernels = tuple((args.kernels or ("triton,fa3" if args.device == "cuda" else "triton")
                          ).split(","))
    global DEVICE, PAGE, ESTIMATE_STATS
    DEVICE, PAGE, ESTIMATE_STATS = args.device, args.page, args.estimate_stats
    ANTIDIAGONAL.update(tau=args.tau, stride=args.stride)
    tokens = None
    if args.model and args.random_tokens:  # smoke tests with a tiny random model
        tokens = torch.randint(0, 1000, (max(args.seq_lens),))
    elif args.model:
        from transformers import AutoTokenizer
        tok = AutoTokenizer.from_pretrained(args.model)
        t0 = time.time()
        tokens = code_tokens(tok, max(args.seq_lens))
        print(f"{tokens.numel()} tokens of source code in {time.time() - t0:.1f}s", flush=True)
    rows: list[dict] = []
    # a `timeout` kill still writes the rows measured so far
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(124))
    try:
        for L in args.seq_lens:
            try:
                bench_length(L, args, tokens, rows)
            except torch.OutOfMemoryError as e:  # report the lengths that fit, skip the rest
                print(f"L={L}: out of memory ({e}); skipped", flush=True)
                torch.cuda.empty_cache()
    finally:
        with open(args.out, "w") as f:
            name = torch.cuda.get_device_name() if DEVICE == "cuda" else "cpu (smoke test)"
            json.dump(dict(device=name, torch=torch.__version__, page=PAGE,
                           estimate_stats=ESTIMATE_STATS, rows=rows), f, indent=1)


if __name__ == "__main__":
    main()
