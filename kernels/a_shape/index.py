"""A-shape (StreamingLLM) work lists: sink tokens + a local window, static per head.

The window is a *relative* chunk list (the ``ceil(local / 64)`` chunks ending with the
block's own rows), shared by every block of a head; the sinks are one shared column list
``0 .. sink-1`` of which each block takes the keys that lie before its window.  No estimate,
no per-block storage: the whole list is a few hundred bytes per head.
"""

from __future__ import annotations

import torch

from ..layout import BLOCK_M, BLOCK_N, SeqLayout
from ..worklist import DESC_FIELDS, WorkList


def build_a_shape_worklist(layout: SeqLayout, sink: torch.Tensor, local: torch.Tensor,
                           sink_max: int | None = None, local_max: int | None = None
                           ) -> WorkList:
    """Work lists for heads with ``sink[h]`` sink tokens and a ``local[h]``-token window.

    ``sink``/``local`` are int tensors on the layout's device, one entry per head (in the
    order of the heads the list is for).  Windows are rounded up to whole 64-key chunks.
    ``sink_max``/``local_max`` (their maxima, known on the host from the profile) size the
    lists; without them they are read from the tensors, which waits for the GPU (tests and
    benchmarks only: in serving that wait would stall the host every layer).
    """
    dev = layout.q_len.device
    sink = sink.to(device=dev, dtype=torch.long)
    local = local.to(device=dev, dtype=torch.long)
    H, NB = sink.numel(), layout.num_blocks
    n_loc = ((local + BLOCK_N - 1) // BLOCK_N).clamp_min(1)  # [H]
    if local_max is None:
        local_max = int(local.max()) if H else 1
    l_max = max(1, (max(1, local_max) + BLOCK_N - 1) // BLOCK_N)
    j = torch.arange(l_max, device=dev)
    start = -BLOCK_N * (n_loc[:, None] - 1 - j[None, :])
    start = torch.where(j[None, :] < n_loc[:, None], start, torch.zeros_like(start))
    chunks = torch.stack([start, start], dim=-1).to(torch.int32).reshape(-1, 2)
    if sink_max is None:
        sink_max = int(sink.max()) if H else 1
    sink_max = max(1, sink_max)
    cols = torch.arange(sink_max, dtype=torch.int32, device=dev).repeat(H)

    qs = layout.block_first_pos()  # [NB]
    chunk_lo = (n_loc[:, None] - 1 - (qs[None, :] + BLOCK_M - 1) // BLOCK_N).clamp_min(0)
    window_start = qs[None, :] - BLOCK_N * (n_loc[:, None] - 1)
    desc = torch.empty(H, NB, DESC_FIELDS, dtype=torch.long, device=dev)
    desc[..., 0] = torch.arange(H, device=dev)[:, None] * l_max + chunk_lo
    desc[..., 1] = n_loc[:, None] - chunk_lo
    desc[..., 2] = qs[None, :]
    desc[..., 3] = torch.arange(H, device=dev)[:, None] * sink_max
    desc[..., 4] = torch.minimum(window_start.clamp_min(0), sink[:, None])
    return WorkList(desc.to(torch.int32), chunks, cols)
