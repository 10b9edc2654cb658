"""Random varlen batches for kernel tests, with the same K/V both contiguous and paged."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from vllm_minference.kernels import KVSource, SeqLayout, WorkList


@dataclass
class Batch:
    q: torch.Tensor
    layout: SeqLayout
    kv: KVSource  # contiguous
    paged: KVSource  # same keys/values through a shuffled block table


def make_batch(q_lens, kv_lens, num_heads=4, num_kv_heads=2, head_dim=64,
               dtype=torch.float16, device="cpu", page_size=16, seed=0,
               structured: bool = False) -> Batch:
    """Queries for the last ``q_lens[b]`` of ``kv_lens[b]`` positions, random K/V.

    ``structured`` adds a shared direction to queries and a few "attention sink" keys, so
    that attention is peaked like a real model's rather than flat.
    """
    g = torch.Generator().manual_seed(seed)
    total_q, total_kv = sum(q_lens), sum(kv_lens)
    q = torch.randn(total_q, num_heads, head_dim, generator=g)
    k = torch.randn(total_kv, num_kv_heads, head_dim, generator=g)
    v = torch.randn(total_kv, num_kv_heads, head_dim, generator=g)
    if structured:
        u = torch.randn(head_dim, generator=g)
        q += 1.5 * u
        start = 0
        for kl in kv_lens:
            k[start:start + 4] += 2.0 * u
            start += kl
    q, k, v = (x.to(dtype=dtype, device=device) for x in (q, k, v))
    layout = SeqLayout.from_lengths(q_lens, kv_lens, device)
    kv = KVSource.contiguous(k, v, kv_lens)

    # paged copy: pages of every sequence scattered over a shuffled pool (page 0 unused)
    pages_per_seq = [(kl + page_size - 1) // page_size for kl in kv_lens]
    n_pages = sum(pages_per_seq) + 1
    perm = torch.randperm(n_pages - 1, generator=g) + 1
    kc = torch.zeros(n_pages, page_size, num_kv_heads, head_dim, dtype=dtype, device=device)
    vc = torch.zeros_like(kc)
    table = torch.zeros(len(kv_lens), max(pages_per_seq), dtype=torch.int32)
    start, p = 0, 0
    for b, kl in enumerate(kv_lens):
        for j in range(pages_per_seq[b]):
            page = int(perm[p]); p += 1
            n = min(page_size, kl - j * page_size)
            kc[page, :n] = k[start + j * page_size:start + j * page_size + n]
            vc[page, :n] = v[start + j * page_size:start + j * page_size + n]
            table[b, j] = page
        start += kl
    paged = KVSource.paged(kc, vc, table.to(device))
    return Batch(q, layout, kv, paged)


def tolerance(dtype: torch.dtype) -> float:
    return {torch.float32: 2e-3, torch.float16: 1e-2, torch.bfloat16: 3e-2}[dtype]


def random_worklist(layout, num_heads, seed):
    """Arbitrary (but well-formed) lists: relative/absolute chunks and columns per block."""
    g = torch.Generator().manual_seed(seed)
    desc, chunks, cols = [], [], []
    qs_all = layout.block_first_pos().cpu()
    last_all = layout.block_last_pos().cpu()
    for h in range(num_heads):
        row = []
        for i in range(layout.num_blocks):
            qs, last = int(qs_all[i]), int(last_all[i])
            relative = bool(torch.randint(2, (1,), generator=g))
            base = qs if relative else 0
            # disjoint 64-key chunks at random non-overlapping offsets, with a masking floor
            starts, pos = [], -qs - 63 if relative else 0
            limit = 0 if relative else last
            while True:
                pos += int(torch.randint(0, 90, (1,), generator=g))
                if pos > limit:
                    break
                starts.append(pos)
                pos += 64
            chunk_ptr = len(chunks)
            covered = set()
            for s in starts:
                lo = s + int(torch.randint(0, 20, (1,), generator=g))
                chunks.append((s, lo))
                covered.update(range(base + lo, base + s + 64))
            free = [k for k in range(0, last + 1) if k not in covered]
            pick = torch.randperm(len(free), generator=g)[: int(torch.randint(0, 70, (1,), generator=g))]
            picked = sorted(free[int(p)] for p in pick)
            row.append((chunk_ptr, len(starts), base, len(cols), len(picked)))
            cols.extend(picked)
        desc.append(row)
    dev = layout.q_len.device
    return WorkList(torch.tensor(desc, dtype=torch.int32, device=dev),
                    torch.tensor(chunks + [(0, 0)], dtype=torch.int32, device=dev),
                    torch.tensor(cols + [0], dtype=torch.int32, device=dev))


def hnd_cache(paged: KVSource) -> torch.Tensor:
    """The paged K/V as vLLM's packed cache in HND order, ``[pages, kv_heads, page, 2 * D]``."""
    return torch.cat([paged.key, paged.value], dim=-1).transpose(1, 2).contiguous()
