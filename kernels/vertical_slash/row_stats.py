"""Softmax statistics of the estimate rows from one FlashAttention-3 call.

The Vertical-Slash estimate normalises the last 64 queries' attention over every key, so
its first Triton pass only finds each row's max and normaliser, computing every score once
just for that.  FlashAttention returns exactly that statistic, the log-sum-exp, and runs it
at tensor-core speed with split keys (H100, one 64K chunk of a 1M prompt: the estimate is a
third of an adaptive layer's sparse time, 5 ms at 1M keys, two passes over all keys).  The
second pass (column and diagonal sums) then starts from the log-sum-exp.

FA3 reads the keys from vLLM's paged cache through the block table, so this needs a paged
:class:`KVSource`.  ``varlen_fn`` defaults to vLLM's FA3 entry point (tests pass an
emulation).
"""

from __future__ import annotations

import math
from typing import Callable

import torch

from ..layout import KVSource, SeqLayout
from ..page_lists.attention import fa3_varlen
from .estimate import LAST_Q


def estimate_rows(layout: SeqLayout, device) -> torch.Tensor:
    """``[B, 64]`` query-token index of each sequence's last 64 rows; rows before the chunk
    (chunks shorter than 64) repeat its first row: the estimate masks them, FA3 computes
    them at key positions before the chunk, and their statistics are never read."""
    i = torch.arange(LAST_Q, device=device)
    start = layout.q_start.to(device).long()[:, None]
    idx = start + layout.q_len.to(device).long()[:, None] - LAST_Q + i[None, :]
    return torch.maximum(idx, start)


def estimate_row_lse(q: torch.Tensor, kv: KVSource, layout: SeqLayout, heads: torch.Tensor,
                     sm_scale: float | None = None, varlen_fn: Callable | None = None
                     ) -> torch.Tensor:
    """Log-sum-exp (natural log) of the estimate rows' causal attention over all keys.

    Returns ``[B, len(heads), 64]`` float32 for query ``heads``; row ``i`` of a sequence is
    query position ``kv_len - 64 + i``, as in the estimate.  Fixed shapes, no host sync.
    """
    if not kv.is_paged:
        raise ValueError("FA3 row statistics read the paged cache: pass a paged KVSource")
    num_heads, head_dim = q.shape[1], q.shape[2]
    if sm_scale is None:
        sm_scale = 1.0 / math.sqrt(head_dim)
    varlen_fn = varlen_fn or fa3_varlen()
    B = layout.num_seqs
    rows = estimate_rows(layout, q.device)
    q_last = q[rows.reshape(-1)]  # [B * 64, heads, D]
    cu = torch.arange(0, (B + 1) * LAST_Q, LAST_Q, dtype=torch.int32, device=q.device)
    block_table = kv.block_table
    if block_table.dtype != torch.int32:
        block_table = block_table.to(torch.int32)
    _, lse = varlen_fn(
        q_last, kv.key, kv.value, max_seqlen_q=LAST_Q, cu_seqlens_q=cu,
        max_seqlen_k=layout.max_kv_len, seqused_k=layout.kv_len.to(torch.int32),
        block_table=block_table, softmax_scale=sm_scale, causal=True,
        return_softmax_lse=True, fa_version=3)
    lse = lse.reshape(num_heads, B, LAST_Q).transpose(0, 1)  # [B, heads, 64]
    return lse[:, heads.to(device=q.device, dtype=torch.long)].float()
