"""Where a batch's queries and keys live: the shared input description of every kernel.

Every kernel in this package works on a *varlen* batch of sequences.  Sequence ``b`` has
``q_len[b]`` new query tokens (rows ``q_start[b] ... q_start[b] + q_len[b] - 1`` of the
``[tokens, heads, head_dim]`` query tensor) that sit at the *end* of its ``kv_len[b]`` keys,
so its first query row has position ``kv_len[b] - q_len[b]`` (chunked prefill and prefix
caching both look like this; a plain prefill has ``q_len == kv_len``).  Query rows are cut
into 64-row blocks per sequence; ``blk_seq``/``blk_m`` map a flat block id to (sequence,
block within the sequence), so one launch covers the whole batch.

Keys and values are read either straight from vLLM's paged cache through the block table or
from contiguous ``[tokens, kv_heads, head_dim]`` tensors (tests, benchmarks).  Both go through
:func:`kv_row_offsets`, so every kernel supports both without a gather copy.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
import triton
import triton.language as tl

BLOCK_M = 64  # query rows per work-list block (MInference's granularity)
BLOCK_N = 64  # keys per computed tile / diagonal chunk


@dataclass(frozen=True)
class SeqLayout:
    """Per-sequence query/key geometry of a batch, on the device, plus host-side sizes.

    Build it with :meth:`from_lengths` from host lists: the host sizes (number of blocks,
    longest key sequence) fix every output shape, so no kernel needs a device->host sync.
    """

    q_start: torch.Tensor  # [B] int32, first query row of each sequence in the Q tensor
    q_len: torch.Tensor  # [B] int32
    kv_len: torch.Tensor  # [B] int32
    blk_seq: torch.Tensor  # [NB] int32, sequence of each flat 64-row block
    blk_m: torch.Tensor  # [NB] int32, block index inside its sequence
    num_seqs: int
    num_blocks: int
    max_q_len: int
    max_kv_len: int
    q_lens_host: tuple[int, ...]
    kv_lens_host: tuple[int, ...]
    q_starts_host: tuple[int, ...]

    @staticmethod
    def from_lengths(
        q_lens: Sequence[int],
        kv_lens: Sequence[int],
        device: torch.device | str,
        q_starts: Sequence[int] | None = None,
    ) -> "SeqLayout":
        q_lens = tuple(int(x) for x in q_lens)
        kv_lens = tuple(int(x) for x in kv_lens)
        if len(q_lens) != len(kv_lens) or not q_lens:
            raise ValueError("q_lens and kv_lens must be non-empty and of equal length")
        for ql, kl in zip(q_lens, kv_lens):
            if ql < 1 or ql > kl:
                raise ValueError(f"need 1 <= q_len <= kv_len, got q_len={ql}, kv_len={kl}")
        if q_starts is None:
            starts, acc = [], 0
            for ql in q_lens:
                starts.append(acc)
                acc += ql
            q_starts = starts
        q_starts = tuple(int(x) for x in q_starts)
        blocks_per_seq = [triton.cdiv(ql, BLOCK_M) for ql in q_lens]
        blk_seq = [b for b, n in enumerate(blocks_per_seq) for _ in range(n)]
        blk_m = [m for n in blocks_per_seq for m in range(n)]
        host = _aligned_rows([q_starts, q_lens, kv_lens], device)
        blocks = _aligned_rows([blk_seq, blk_m], device)
        B, NB = len(q_lens), len(blk_seq)
        return SeqLayout(
            q_start=host[0, :B],
            q_len=host[1, :B],
            kv_len=host[2, :B],
            blk_seq=blocks[0, :NB],
            blk_m=blocks[1, :NB],
            num_seqs=len(q_lens),
            num_blocks=len(blk_seq),
            max_q_len=max(q_lens),
            max_kv_len=max(kv_lens),
            q_lens_host=q_lens,
            kv_lens_host=kv_lens,
            q_starts_host=q_starts,
        )

    def block_ranges(self, step: int) -> list[tuple[int, int, int]]:
        """``(sequence, first flat block, blocks)`` ranges of at most ``step`` blocks, each
        inside one sequence: the slices in which index builders launch per sequence."""
        out, blk0 = [], 0
        for seq, q_len in enumerate(self.q_lens_host):
            n = triton.cdiv(q_len, BLOCK_M)
            out += [(seq, blk0 + j, min(step, n - j)) for j in range(0, n, step)]
            blk0 += n
        return out

    def block_first_pos(self) -> torch.Tensor:
        """Key position of the first query row of every flat block, ``[NB]`` int64."""
        ctx = (self.kv_len - self.q_len).long()
        return ctx[self.blk_seq.long()] + self.blk_m.long() * BLOCK_M

    def block_last_pos(self) -> torch.Tensor:
        """Key position of the last *valid* query row of every flat block, ``[NB]`` int64."""
        seq = self.blk_seq.long()
        end = self.kv_len.long()[seq] - 1
        return torch.minimum(self.block_first_pos() + BLOCK_M - 1, end)

    def dense_tiles(self) -> torch.Tensor:
        """64-wide key tiles dense causal attention computes for each block, ``[NB]``.

        Computed once per layout (every layer of a step asks; treat it as read-only).
        """
        cached = self.__dict__.get("_dense_tiles")
        if cached is None:  # frozen dataclass: cache outside the fields
            cached = (self.block_last_pos() + BLOCK_N) // BLOCK_N
            self.__dict__["_dense_tiles"] = cached
        return cached

    def causal_keys(self) -> int:
        """Keys dense causal attention computes over all query rows (one head), from the
        host sizes: row ``i`` of a chunk at the end of ``kv_len`` keys sees ``ctx + i + 1``.
        Computed once per layout (each layer's density guard asks)."""
        cached = self.__dict__.get("_causal_keys")
        if cached is None:
            cached = sum(q * (k - q) + q * (q + 1) // 2
                         for q, k in zip(self.q_lens_host, self.kv_lens_host))
            self.__dict__["_causal_keys"] = cached
        return cached

    def total_dense_tiles(self) -> torch.Tensor:
        """Sum of :meth:`dense_tiles` (0-d, on the device), also computed once."""
        cached = self.__dict__.get("_total_dense_tiles")
        if cached is None:
            cached = self.dense_tiles().sum()
            self.__dict__["_total_dense_tiles"] = cached
        return cached


def _aligned_rows(rows: list[Sequence[int]], device: torch.device | str) -> torch.Tensor:
    """int32 rows on the device, each starting 16-byte aligned.

    Triton compiles a kernel variant per pointer alignment (16 bytes or not): rows packed
    back to back would change alignment with the batch size and the number of query blocks,
    and recompile the kernels (seconds) in the middle of serving.
    """
    width = max(4, -(-max(len(r) for r in rows) // 4) * 4)
    t = torch.zeros(len(rows), width, dtype=torch.int32)
    for i, r in enumerate(rows):
        t[i, :len(r)] = torch.tensor(r, dtype=torch.int32)
    return host_to_device(t, device)


def host_to_device(t: torch.Tensor, device: torch.device | str) -> torch.Tensor:
    """A host tensor on ``device`` without stopping the host for the GPU.

    A copy from pageable memory makes CUDA wait for everything queued on the stream first,
    so the GPU then idles while the host prepares the next launches; from pinned memory the
    copy is queued like a kernel.
    """
    if torch.device(device).type == "cuda":
        t = t.pin_memory()
    return t.to(device, non_blocking=True)


@dataclass(frozen=True)
class KVSource:
    """Keys and values of a batch: vLLM's paged cache, or contiguous varlen tensors.

    Paged: ``key``/``value`` are ``[num_pages, page_size, kv_heads, head_dim]`` views (vLLM's
    ``kv_cache.unbind`` / ``split`` views, any strides) and ``block_table`` is
    ``[B, max_pages]`` with the rows in the same order as the :class:`SeqLayout`.
    Contiguous: ``key``/``value`` are ``[total_kv_tokens, kv_heads, head_dim]`` and
    ``kv_start[b]`` is the first row of sequence ``b``.
    """

    key: torch.Tensor
    value: torch.Tensor
    block_table: torch.Tensor | None = None
    kv_start: torch.Tensor | None = None

    @staticmethod
    def paged(key_cache: torch.Tensor, value_cache: torch.Tensor,
              block_table: torch.Tensor) -> "KVSource":
        if key_cache.dim() != 4 or value_cache.shape != key_cache.shape:
            raise ValueError("paged key/value caches must both be [pages, page_size, kv_heads, D]")
        if block_table.dtype != torch.int32:
            block_table = block_table.to(torch.int32)
        return KVSource(key_cache, value_cache, block_table=block_table)

    @staticmethod
    def packed(kv_cache: torch.Tensor, block_table: torch.Tensor) -> "KVSource":
        """Views of the backend's packed cache ``[pages, kv_heads, page_size, 2 * D]`` (HND,
        keys then values in the last dim) as paged key/value caches."""
        key_cache, value_cache = kv_cache.transpose(1, 2).split(kv_cache.shape[-1] // 2, dim=-1)
        return KVSource.paged(key_cache, value_cache, block_table)

    @staticmethod
    def contiguous(key: torch.Tensor, value: torch.Tensor,
                   kv_lens: Sequence[int]) -> "KVSource":
        if key.dim() != 3 or value.shape != key.shape:
            raise ValueError("contiguous key/value must both be [tokens, kv_heads, D]")
        starts, acc = [], 0
        for kl in kv_lens:
            starts.append(acc)
            acc += int(kl)
        if acc > key.shape[0]:
            raise ValueError(f"kv_lens sum to {acc} tokens but key has {key.shape[0]}")
        kv_start = torch.tensor(starts, dtype=torch.int32, device=key.device)
        return KVSource(key, value, kv_start=kv_start)

    @property
    def is_paged(self) -> bool:
        return self.block_table is not None

    @property
    def num_kv_heads(self) -> int:
        return self.key.shape[-2]

    @property
    def head_dim(self) -> int:
        return self.key.shape[-1]

    def kernel_args(self) -> dict:
        """Strides and tables in the argument names of the Triton kernels."""
        k, v = self.key, self.value
        if self.is_paged:
            return dict(
                K=k, V=v, stride_kp=k.stride(0), stride_kt=k.stride(1), stride_kh=k.stride(2),
                stride_vp=v.stride(0), stride_vt=v.stride(1), stride_vh=v.stride(2),
                BT=self.block_table, stride_bt=self.block_table.stride(0),
                KV_START=self.block_table,  # unused when PAGED
                PAGE=k.shape[1], PAGED=True,
            )
        return dict(
            K=k, V=v, stride_kp=0, stride_kt=k.stride(0), stride_kh=k.stride(1),
            stride_vp=0, stride_vt=v.stride(0), stride_vh=v.stride(1),
            BT=self.kv_start, stride_bt=0,  # unused when not PAGED
            KV_START=self.kv_start, PAGE=1, PAGED=False,
        )

    def gather(self, b: int, kv_len: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values of sequence ``b`` as contiguous ``[kv_len, kv_heads, D]`` copies.

        For references and tests only: the kernels never copy.
        """
        if self.is_paged:
            page = self.key.shape[1]
            n_pages = triton.cdiv(kv_len, page)
            pages = self.block_table[b, :n_pages].long()
            k = self.key[pages].flatten(0, 1)[:kv_len]
            v = self.value[pages].flatten(0, 1)[:kv_len]
            return k, v
        start = int(self.kv_start[b])
        return self.key[start:start + kv_len], self.value[start:start + kv_len]


@triton.jit
def query_block(blk, BLK_SEQ, BLK_M, Q_START, Q_LEN, KV_LEN, BLOCK_M: tl.constexpr):
    """Geometry of flat query block ``blk``: its sequence, lengths and rows inside the chunk."""
    b = tl.load(BLK_SEQ + blk)
    m = tl.load(BLK_M + blk)
    q_start = tl.load(Q_START + b)
    q_len = tl.load(Q_LEN + b)
    kv_len = tl.load(KV_LEN + b)
    rows = m * BLOCK_M + tl.arange(0, BLOCK_M)
    return b, m, q_start, q_len, kv_len, rows, rows < q_len


@triton.jit
def append_kept(out, kept, c, keep):
    """Store the ``keep`` entries of ``c`` after the ``kept`` already at ``out``, in order;
    returns the new count (the stream compaction of every list builder)."""
    pos = kept + tl.cumsum(keep.to(tl.int32), axis=0) - 1
    tl.store(out + pos, c, mask=keep)
    return kept + tl.sum(keep.to(tl.int32), axis=0)


@triton.jit
def kv_row_offsets(b, k_idx, valid, BT, stride_bt, KV_START, stride_p, stride_t,
                   PAGE: tl.constexpr, PAGED: tl.constexpr):
    """Element offsets (int64) of key/value rows ``k_idx`` of sequence ``b``.

    Paged: the row's page comes from the block table, so a tile may span pages of any size.
    Invalid rows point at row 0 of the sequence; callers mask their loads with ``valid``.
    """
    k_safe = tl.where(valid, k_idx, 0)
    if PAGED:
        page = tl.load(BT + b.to(tl.int64) * stride_bt + k_safe // PAGE, mask=valid, other=0)
        return page.to(tl.int64) * stride_p + (k_safe % PAGE).to(tl.int64) * stride_t
    else:
        start = tl.load(KV_START + b)
        return (start + k_safe).to(tl.int64) * stride_t
