"""Work lists: what the sparse attention kernel computes for each (head, 64-row query block).

One format serves every pattern, so one attention kernel runs a layer whose heads mix
Vertical-Slash, Block-Sparse, A-shape and dense (the plan/run split of FlashInfer: the
builders in ``vertical_slash``, ``block_sparse`` and ``a_shape`` plan, :mod:`.attention` runs).

For head ``h`` and flat block ``i`` the descriptor ``desc[h, i] = (chunk_ptr, chunk_cnt,
base, col_ptr, col_cnt)`` says:

* **chunks**: ``chunks[chunk_ptr : chunk_ptr + chunk_cnt]`` are ``(start, lo)`` pairs; each
  chunk computes the 64 keys ``base + start + [0, 64)`` but masks keys below ``base + lo``.
  Vertical-Slash and A-shape lists are *relative* (``base`` = position of the block's first
  query row), so one list per head serves every block; Block-Sparse and dense lists are
  absolute (``base`` = 0).  Chunks of one block never overlap after masking.
* **columns**: ``cols[col_ptr : col_ptr + col_cnt]`` are absolute key indices gathered in
  groups of 64, none of them inside the block's chunks.
* **extra tiles** (optional, ``extra[h, i]``): absolute starts of aligned 64-key tiles the
  block also reads, ``-1`` for none, chosen per query block by a pooled estimate (see
  :func:`.block_sparse.index.extra_block_tiles`).  They may overlap the chunks and columns:
  only the FA3 page lists read them, whose per-group sub-page bitmap counts a key once.

Keys beyond the causal diagonal, below 0 or past the sequence are always masked in-kernel.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .layout import BLOCK_N, SeqLayout

DESC_FIELDS = 5  # chunk_ptr, chunk_cnt, base, col_ptr, col_cnt


@dataclass
class WorkList:
    """Per-(head, block) descriptors plus the chunk and column pools they point into."""

    desc: torch.Tensor  # [H, NB, 5] int32
    chunks: torch.Tensor  # [Nc, 2] int32 (start, lo)
    cols: torch.Tensor  # [Ncol] int32
    extra: torch.Tensor | None = None  # [H, NB, R] int32 tile starts or -1 (page lists only)

    @property
    def num_heads(self) -> int:
        return self.desc.shape[0]

    def check_shape(self, num_heads: int, layout: SeqLayout) -> None:
        """Raise unless the list has one descriptor per (query head, block of the layout)."""
        if self.desc.shape[:2] != (num_heads, layout.num_blocks):
            raise ValueError(f"work list is {tuple(self.desc.shape[:2])}, expected "
                             f"({num_heads}, {layout.num_blocks})")

    def tiles(self) -> torch.Tensor:
        """64-key tiles computed per (head, block), ``[H, NB]`` int64: the cost of the list."""
        d = self.desc.long()
        tiles = d[..., 1] + (d[..., 4] + BLOCK_N - 1) // BLOCK_N
        if self.extra is not None:  # an upper bound: they may repeat listed keys
            tiles = tiles + (self.extra >= 0).sum(dim=-1)
        return tiles

    def density(self, layout: SeqLayout) -> torch.Tensor:
        """Computed tiles over dense causal tiles, per head (``[H]`` float32, on device)."""
        dense = layout.total_dense_tiles().clamp_min(1)
        return self.tiles().sum(dim=1).float() / dense.float()


def empty_pools(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """One-entry placeholder pools: kernels get a valid pointer even for an unused pool."""
    return (torch.zeros(1, 2, dtype=torch.int32, device=device),
            torch.zeros(1, dtype=torch.int32, device=device))


def dense_worklist(layout: SeqLayout, num_heads: int) -> WorkList:
    """Every causal key of every block, as absolute aligned chunks: the dense fallback."""
    device = layout.q_len.device
    n_tiles = max(1, (layout.max_kv_len + BLOCK_N - 1) // BLOCK_N)
    starts = torch.arange(n_tiles, dtype=torch.int32, device=device) * BLOCK_N
    chunks = torch.stack([starts, starts], dim=1)
    desc = torch.zeros(num_heads, layout.num_blocks, DESC_FIELDS, dtype=torch.int32,
                       device=device)
    desc[..., 1] = layout.dense_tiles().to(torch.int32)
    _, cols = empty_pools(device)
    return WorkList(desc, chunks, cols)


def tile_worklist(tiles: torch.Tensor) -> WorkList:
    """Absolute chunk lists of every (head, block) from its key tiles ``[H, NB, W]`` (tile
    indices, ``-1`` for none), in ascending key order."""
    H, NB, width = tiles.shape
    big = 1 << 30
    tiles = torch.sort(torch.where(tiles >= 0, tiles, big), dim=-1).values
    start = torch.where(tiles < big, tiles * BLOCK_N, 0)
    chunks = torch.stack([start, start], dim=-1).to(torch.int32).reshape(-1, 2)
    desc = torch.zeros(H, NB, DESC_FIELDS, dtype=torch.long, device=tiles.device)
    desc[..., 0] = (torch.arange(H * NB, device=tiles.device) * width).reshape(H, NB)
    desc[..., 1] = (tiles < big).sum(-1)
    _, cols = empty_pools(tiles.device)
    return WorkList(desc.to(torch.int32), chunks, cols)


def merge_worklists(parts: list[tuple[torch.Tensor, WorkList]], num_heads: int,
                    num_blocks: int) -> WorkList:
    """Combine lists built for disjoint head subsets into one list over all heads.

    ``parts`` holds ``(head_ids, worklist)`` pairs; ``head_ids`` (int64, on device) are the
    query heads, in order, that the part's rows describe.  Every head must be covered.
    """
    if not parts:
        raise ValueError("no work lists to merge")
    device = parts[0][1].desc.device
    desc = torch.zeros(num_heads, num_blocks, DESC_FIELDS, dtype=torch.int32, device=device)
    chunk_pools, col_pools = [], []
    n_chunks = n_cols = 0
    widths = [wl.extra.shape[-1] for _, wl in parts if wl.extra is not None]
    extra = None
    if widths:
        extra = torch.full((num_heads, num_blocks, max(widths)), -1, dtype=torch.int32,
                           device=device)
    for heads, wl in parts:
        if wl.extra is not None:
            extra[heads, :, :wl.extra.shape[-1]] = wl.extra
        part = wl.desc.clone()
        part[..., 0] += n_chunks
        part[..., 3] += n_cols
        desc[heads] = part
        chunk_pools.append(wl.chunks)
        col_pools.append(wl.cols)
        n_chunks += wl.chunks.shape[0]
        n_cols += wl.cols.shape[0]
    return WorkList(desc, torch.cat(chunk_pools), torch.cat(col_pools), extra)


def apply_density_guard(wl: WorkList, layout: SeqLayout, max_density: float) -> WorkList:
    """Send heads whose lists cover more than ``max_density`` of the causal area to dense.

    Random-like attention makes Vertical-Slash lists scatter over nearly every tile, and a
    scattered list costs more per tile than a contiguous one; such a head is cheaper as
    plain dense attention.  The decision is made on the device (no host sync) and the
    result has the same shapes as the input.
    """
    dense = dense_worklist(layout, wl.num_heads)
    heavy = wl.density(layout) > max_density  # [H]
    desc_dense = dense.desc.clone()
    desc_dense[..., 0] += wl.chunks.shape[0]
    desc = torch.where(heavy[:, None, None], desc_dense, wl.desc)
    return WorkList(desc, torch.cat([wl.chunks, dense.chunks]), wl.cols, wl.extra)
