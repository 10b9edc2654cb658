"""Compile the sparse kernels while the model loads, not on the first long prompt.

Triton compiles a kernel on its first call for each set of compile-time constants (head
size, GQA group, page size, dtype, ...).  Without a warm-up that happens inside the first
sparse prefill step (about 5 s on an H100, flagged by vLLM's JIT monitor as a latency
spike).  ``warm_up_kernels`` runs the whole sparse path once on a tiny batch laid out like
the backend's KV cache (HND: ``[pages, kv_heads, page_size, 2 * head_size]``, keys then
values in the last dim), with one head of each pattern, so every kernel is compiled for the
layer's shapes.  Integer sizes that vary per step are not specialised on (see the kernels'
``do_not_specialize``), so the compiled variants are the ones serving uses.
"""

from __future__ import annotations

import torch

from vllm_minference.kernels import (A_SHAPE, BLOCK_SPARSE, VERTICAL_SLASH, HeadPattern,
                                     KVSource, LayerPatterns, SeqLayout, plan_layer,
                                     sparse_attention)
from vllm_minference.kernels.block_sparse import block_sparse_worklist
from vllm_minference.kernels.page_lists import page_list_attention

_done: set[tuple] = set()

# a chunk at the end of a longer sequence (chunked prefill), several 64-row blocks
_Q_LEN, _KV_LEN = 192, 320
_TABLE_WIDTH = 64  # block-table row width (the kernels do not specialise on its stride)
SMALL_VS_BUDGET = (30, 50)  # (columns, diagonals) of a layer without Vertical-Slash heads
SMALL_BS_BUDGET = 2  # tiles of a layer without Block-Sparse heads


def warm_up_kernels(num_heads: int, num_kv_heads: int, head_size: int, dtype: torch.dtype,
                    page_size: int, scale: float, gamma: float | None = None,
                    device: torch.device | str = "cuda", kernel: str = "triton",
                    fa3_min_run: int = 1, fa3_min_blocks: int = 1, row_lse_fn=None,
                    vs_budget: tuple[int, int] = SMALL_VS_BUDGET,
                    bs_budget: int = SMALL_BS_BUDGET, **plan_options) -> bool:
    """Run plan + attention once for these shapes; False if already done in this process.

    ``vs_budget``: the largest (columns, diagonals) budget of the layer's Vertical-Slash
    heads.  The index builder's search depth and adaptive mode's sort widths follow it past
    the default profile's 1000/6096 (e.g. Qwen2.5-7B-1M's 22032/24528), so a warm-up with
    smaller budgets would leave those variants to compile inside the first long prefill.
    ``bs_budget``: the largest tile budget of the layer's Block-Sparse heads (their ranking
    kernel is compiled per power of two of it).

    ``kernel``: "triton" (the sparse kernel) or "fa3" (page lists on FlashAttention 3, and
    the sparse kernel, which layers with few keys per row keep using).  ``row_lse_fn``: as
    :func:`plan_layer` takes it.
    """
    key = (num_heads, num_kv_heads, head_size, dtype, page_size, gamma, str(device), kernel,
           fa3_min_run, fa3_min_blocks, row_lse_fn, tuple(vs_budget), bs_budget,
           tuple(sorted(plan_options.items())))
    if key in _done:
        return False
    _done.add(key)
    n_pages = -(-_KV_LEN // page_size)
    cache = 0.1 * torch.randn(n_pages + 1, num_kv_heads, page_size, 2 * head_size,
                              dtype=dtype, device=device)
    table = torch.zeros(1, max(_TABLE_WIDTH, n_pages), dtype=torch.int32, device=device)
    table[0, :n_pages] = torch.arange(1, n_pages + 1, dtype=torch.int32, device=device)
    kv = KVSource.packed(cache, table)
    layout = SeqLayout.from_lengths([_Q_LEN], [_KV_LEN], device)
    kinds = [HeadPattern(VERTICAL_SLASH, *vs_budget), HeadPattern(BLOCK_SPARSE, bs_budget),
             HeadPattern(A_SHAPE, 16, 64)]
    if gamma is not None or plan_options.get("antidiagonal") is not None:
        # heads a profile pins to fixed top-k run the fixed selection and index builder
        kinds.append(HeadPattern(VERTICAL_SLASH, *vs_budget, fixed=True))
    patterns = LayerPatterns.from_heads([kinds[h % len(kinds)] for h in range(num_heads)],
                                        device, gamma=gamma, **plan_options)
    query = torch.randn(_Q_LEN, num_heads, head_size, dtype=dtype, device=device)
    wl = plan_layer(query, kv, layout, patterns, scale,  # as LayerPlanner.run plans
                    row_lse_fn=row_lse_fn)
    # long prompts rank Block-Sparse tiles instead (this tiny one holds every score)
    block_sparse_worklist(query, kv, layout, torch.tensor([0], device=device),
                          torch.tensor([bs_budget], device=device), bs_budget, scale,
                          ranked=True)
    out = torch.empty_like(query)
    sparse_attention(query, kv, layout, wl, scale, out=out)  # fa3 layers use it too
    if kernel == "fa3":
        page_list_attention(query, cache, table, layout, wl, scale, out=out,
                            min_run=fa3_min_run, min_blocks=fa3_min_blocks)
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)
    return True
