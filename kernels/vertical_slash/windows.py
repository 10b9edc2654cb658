"""Several estimate windows per chunk: the Vertical-Slash estimate from more than the last rows.

MInference estimates a head's columns and diagonals from the last 64 queries of the prompt.
In a chunked prefill those rows are the end of each chunk, and at a prompt's end they are
its question, whose attention says little about what the haystack rows before it need.
With ``W`` windows the estimate also reads 64-row windows spread over the chunk: window
``w`` ends ``w * stride`` rows before the chunk's end (``stride`` = the chunk's rows / ``W``,
rounded down to whole 64-row blocks).  A window is the same sequence cut short at its last
row, so each becomes a pseudo-sequence (same first query row, fewer query rows and keys,
the same pages) and the estimate kernels run unchanged on ``B * W`` of them; the caller
sums each sequence's windows.  A chunk too short for window ``w`` repeats its last window.
"""

from __future__ import annotations

import torch

from ..layout import BLOCK_M, KVSource, SeqLayout


def window_ends(q_len: int, windows: int) -> list[int]:
    """Query rows each window keeps (the window is the last 64 of them), last window first."""
    stride = (q_len // windows) // BLOCK_M * BLOCK_M
    ends = [q_len - w * stride for w in range(windows)]
    return [e if e >= BLOCK_M and stride > 0 else q_len for e in ends]


def window_layout(layout: SeqLayout, windows: int) -> SeqLayout:
    """The ``B * windows`` pseudo-sequences, sequence-major (computed once per layout)."""
    key = f"_windows_{windows}"
    cached = layout.__dict__.get(key)
    if cached is None:
        q_lens, kv_lens, starts = [], [], []
        for ql, kl, qs in zip(layout.q_lens_host, layout.kv_lens_host, layout.q_starts_host):
            for end in window_ends(ql, windows):
                q_lens.append(end)
                kv_lens.append(kl - (ql - end))
                starts.append(qs)
        cached = SeqLayout.from_lengths(q_lens, kv_lens, layout.q_start.device, q_starts=starts)
        layout.__dict__[key] = cached  # frozen dataclass: cache outside the fields
    return cached


def window_kv(kv: KVSource, windows: int) -> KVSource:
    """``kv`` with each sequence's page row (or key offset) repeated for its windows."""
    if kv.is_paged:
        return KVSource(kv.key, kv.value,
                        block_table=kv.block_table.repeat_interleave(windows, dim=0))
    return KVSource(kv.key, kv.value, kv_start=kv.kv_start.repeat_interleave(windows, dim=0))


def sum_windows(scores: torch.Tensor, windows: int) -> torch.Tensor:
    """``[B * windows, H, N]`` per-window masses to ``[B, H, N]`` (each row of each window
    sums to one, so every window weighs the same)."""
    return scores.view(-1, windows, *scores.shape[1:]).sum(dim=1)
