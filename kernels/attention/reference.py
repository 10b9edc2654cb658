"""Plain PyTorch references: masked attention, and the mask a work list stands for."""

from __future__ import annotations

import math
from typing import Callable

import torch

from ..layout import BLOCK_M, BLOCK_N, KVSource, SeqLayout
from ..worklist import WorkList

# mask_fn(b, h, q_len, kv_len) -> bool [q_len, kv_len]: which keys each query row may see
MaskFn = Callable[[int, int, int, int], torch.Tensor]


def causal_mask(q_len: int, kv_len: int, device=None) -> torch.Tensor:
    """Bottom-right aligned causal mask: row i (position kv_len - q_len + i) sees keys <= it."""
    pos = torch.arange(kv_len - q_len, kv_len, device=device)[:, None]
    return torch.arange(kv_len, device=device)[None, :] <= pos


def masked_attention_reference(q: torch.Tensor, kv: KVSource, layout: SeqLayout,
                               mask_fn: MaskFn | None = None,
                               sm_scale: float | None = None) -> torch.Tensor:
    """Attention in float64 where each row sees ``mask_fn(...) & causal``; 0 for empty rows."""
    num_heads, head_dim = q.shape[1], q.shape[2]
    group = num_heads // kv.num_kv_heads
    scale = sm_scale if sm_scale is not None else 1.0 / math.sqrt(head_dim)
    out = torch.zeros_like(q, dtype=torch.float64)
    for b in range(layout.num_seqs):
        q_len, kv_len = layout.q_lens_host[b], layout.kv_lens_host[b]
        q0 = layout.q_starts_host[b]
        k, v = kv.gather(b, kv_len)
        causal = causal_mask(q_len, kv_len, q.device)
        for h in range(num_heads):
            mask = causal if mask_fn is None else causal & mask_fn(b, h, q_len, kv_len).to(q.device)
            qh = q[q0:q0 + q_len, h].double()
            kh, vh = k[:, h // group].double(), v[:, h // group].double()
            s = (qh @ kh.T) * scale
            s = s.masked_fill(~mask, float("-inf"))
            p = torch.softmax(s, dim=-1).nan_to_num(0.0)
            out[q0:q0 + q_len, h] = p @ vh
    return out


def worklist_mask(wl: WorkList, layout: SeqLayout, b: int, h: int) -> torch.Tensor:
    """The key set the work list names for sequence ``b``, head ``h`` (before causality).

    Read straight off the descriptors, element by element: the naive reading of the format
    that the index-builder tests compare against their own pattern definitions.
    """
    q_len, kv_len = layout.q_lens_host[b], layout.kv_lens_host[b]
    ctx = kv_len - q_len
    mask = torch.zeros(q_len, kv_len, dtype=torch.bool)
    desc = wl.desc[h].cpu()
    chunks, cols = wl.chunks.cpu(), wl.cols.cpu()
    first_blk = sum((ql + BLOCK_M - 1) // BLOCK_M for ql in layout.q_lens_host[:b])
    for m in range((q_len + BLOCK_M - 1) // BLOCK_M):
        cp, cc, base, colp, colc = (int(x) for x in desc[first_blk + m])
        r0, r1 = m * BLOCK_M, min(q_len, (m + 1) * BLOCK_M)
        for j in range(cc):
            start, lo = int(chunks[cp + j, 0]), int(chunks[cp + j, 1])
            k0, k1 = max(0, base + max(start, lo)), min(kv_len, base + start + BLOCK_N)
            if k0 < k1:
                mask[r0:r1, k0:k1] = True
        for c in cols[colp:colp + colc].tolist():
            if 0 <= c < kv_len:
                mask[r0:r1, c] = True
    assert ctx >= 0
    return mask


def worklist_overlaps(wl: WorkList, layout: SeqLayout, b: int, h: int) -> int:
    """How many (row-block, key) pairs the work list names more than once (must be 0)."""
    q_len, kv_len = layout.q_lens_host[b], layout.kv_lens_host[b]
    desc = wl.desc[h].cpu()
    chunks, cols = wl.chunks.cpu(), wl.cols.cpu()
    first_blk = sum((ql + BLOCK_M - 1) // BLOCK_M for ql in layout.q_lens_host[:b])
    dup = 0
    for m in range((q_len + BLOCK_M - 1) // BLOCK_M):
        cp, cc, base, colp, colc = (int(x) for x in desc[first_blk + m])
        count = torch.zeros(kv_len, dtype=torch.int32)
        for j in range(cc):
            start, lo = int(chunks[cp + j, 0]), int(chunks[cp + j, 1])
            k0, k1 = max(0, base + max(start, lo)), min(kv_len, base + start + BLOCK_N)
            if k0 < k1:
                count[k0:k1] += 1
        for c in cols[colp:colp + colc].tolist():
            if 0 <= c < kv_len:
                count[c] += 1
        dup += int((count > 1).sum())
    return dup


def block_keys(wl: WorkList, layout: SeqLayout, h: int, blk: int) -> torch.Tensor:
    """Key indices (before causality) the list names for flat block ``blk`` of head ``h``.

    Vectorised, for spot checks of large work lists (benchmarks): ``worklist_mask`` is the
    element-by-element reading used by the unit tests.
    """
    cp, cc, base, colp, colc = (int(x) for x in wl.desc[h, blk].cpu())
    chunks = wl.chunks[cp:cp + cc].long().cpu()
    offs = torch.arange(BLOCK_N)
    keys = base + chunks[:, :1] + offs[None, :]
    keep = offs[None, :] >= (chunks[:, 1:] - chunks[:, :1])
    cols = wl.cols[colp:colp + colc].long().cpu()
    return torch.cat([keys[keep], cols])


def block_attention_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                              wl: WorkList, layout: SeqLayout, h: int, blk: int,
                              sm_scale: float) -> torch.Tensor:
    """float32 attention of one 64-row block of head ``h`` over the keys its list names.

    ``q`` is the batch's query tensor, ``k``/``v`` the block's sequence as contiguous
    ``[kv_len, kv_heads, D]``.  Returns ``[valid rows, D]``.
    """
    b, m = int(layout.blk_seq[blk]), int(layout.blk_m[blk])
    q_len, kv_len = layout.q_lens_host[b], layout.kv_lens_host[b]
    r0, r1 = m * BLOCK_M, min(q_len, (m + 1) * BLOCK_M)
    rows = q[layout.q_starts_host[b] + r0:layout.q_starts_host[b] + r1, h].float()
    group = q.shape[1] // k.shape[1]
    keys = block_keys(wl, layout, h, blk)
    keys = keys[(keys >= 0) & (keys < kv_len)].to(k.device)
    kh, vh = k[keys, h // group].float(), v[keys, h // group].float()
    pos = torch.arange(kv_len - q_len + r0, kv_len - q_len + r1, device=k.device)
    s = (rows @ kh.T) * sm_scale
    s = s.masked_fill(keys[None, :] > pos[:, None], float("-inf"))
    return torch.softmax(s, dim=-1).nan_to_num(0.0) @ vh
