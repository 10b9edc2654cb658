"""Antidiagonal per-block tile selection against its PyTorch reference."""

import pytest
import torch

from kernel_inputs import make_batch
from vllm_minference.kernels import sparse_attention
from vllm_minference.kernels.antidiagonal import antidiagonal_tiles, antidiagonal_worklist
from vllm_minference.kernels.antidiagonal import index as ad_index
from vllm_minference.kernels.antidiagonal.reference import (kept_tiles_reference,
                                                             tile_shares_reference)
from vllm_minference.kernels.attention.reference import masked_attention_reference, worklist_mask
from vllm_minference.kernels.layout import BLOCK_N

CASES = [
    ([100], [100], 8),            # one sequence, a partial last block
    ([70, 130], [700, 400], 8),   # chunks at the end of longer sequences
    ([64, 30], [1100, 30], 16),   # a block of fewer rows than one row group of 16... and 30
    ([200], [1300], 4),           # 16 row groups per block
]


def _kept(tiles: torch.Tensor) -> list[list[set[int]]]:
    return [[{int(t) for t in row if t >= 0} for row in head] for head in tiles.cpu()]


@pytest.mark.parametrize("q_lens,kv_lens,stride", CASES)
def test_shares_match_reference(device, q_lens, kv_lens, stride):
    batch = make_batch(q_lens, kv_lens, 4, 2, 64, torch.float32, device, structured=True)
    heads = [3, 0]
    n_tiles = -(-max(kv_lens) // BLOCK_N)
    shares = torch.full((2, batch.layout.num_blocks, n_tiles), -1.0, device=device)
    antidiagonal_tiles(batch.q, batch.paged, batch.layout, torch.tensor(heads), 0.9, 10_000,
                       stride, shares=shares)
    ref = tile_shares_reference(batch.q, batch.kv, batch.layout, heads, stride)
    causal = ref >= 0
    torch.testing.assert_close(shares.cpu().double()[causal], ref[causal], atol=2e-5, rtol=1e-3)
    sums = torch.where(causal, ref, 0.0).sum(-1)
    torch.testing.assert_close(sums, torch.ones_like(sums))  # every block's shares sum to 1


@pytest.mark.parametrize("tau,max_tiles,sink,local", [
    (0.5, 10_000, 1, 1), (0.9, 10_000, 1, 0), (0.99, 10_000, 2, 2), (0.9, 6, 1, 1),
    (1.0, 3, 0, 0)])
def test_kept_tiles_are_the_fewest_reaching_tau(device, tau, max_tiles, sink, local):
    batch = make_batch([150, 64], [1500, 900], 4, 2, 64, torch.float32, device,
                       structured=True, seed=3)
    heads = torch.tensor([0, 1, 2, 3])
    n_tiles = -(-1500 // BLOCK_N)
    shares = torch.full((4, batch.layout.num_blocks, n_tiles), -1.0, device=device)
    tiles = antidiagonal_tiles(batch.q, batch.kv, batch.layout, heads, tau, max_tiles, 8,
                               sink, local, shares=shares)
    assert tiles.shape == (4, batch.layout.num_blocks, min(max_tiles, n_tiles))
    rows = tiles.cpu()
    for h in range(4):
        for i in range(batch.layout.num_blocks):
            used = rows[h, i][rows[h, i] >= 0]
            assert torch.all(used[1:] > used[:-1])  # ascending, -1 padding after the tiles
            assert torch.all(rows[h, i, len(used):] == -1)
    got = _kept(tiles)
    ref = kept_tiles_reference(shares.cpu().double(), batch.layout, tau, max_tiles, sink, local)
    w = shares.cpu().double()
    for h in range(4):
        for i in range(batch.layout.num_blocks):
            diff = got[h][i] ^ ref[h][i]
            # the kernel's bisected threshold may differ from the exact one on near-ties only
            if diff:
                kept_ref = sorted(float(w[h, i, t]) for t in ref[h][i])
                boundary = kept_ref[0]
                for t in diff:
                    assert abs(float(w[h, i, t]) - boundary) <= 2e-3 * max(boundary, 1e-6), (
                        h, i, t, float(w[h, i, t]), boundary)


def test_tiles_contiguous_and_paged_agree_across_slabs(device, monkeypatch):
    batch = make_batch([300, 70], [2000, 70], 4, 2, 64, torch.float16, device, structured=True)
    heads = torch.tensor([1, 2])
    whole = antidiagonal_tiles(batch.q, batch.paged, batch.layout, heads, 0.9, 64)
    contiguous = antidiagonal_tiles(batch.q, batch.kv, batch.layout, heads, 0.9, 64)
    assert torch.equal(whole, contiguous)
    monkeypatch.setattr(ad_index, "SLAB_BYTES", 1)  # one program's blocks per slab
    monkeypatch.setattr(ad_index, "SPLIT_TILES", 8)  # several key splits per program
    sliced = antidiagonal_tiles(batch.q, batch.paged, batch.layout, heads, 0.9, 64)
    assert torch.equal(whole, sliced)


def test_worklist_runs_exactly_the_kept_tiles(device):
    batch = make_batch([130, 64], [700, 64], 4, 2, 64, torch.float32, device, structured=True)
    heads = torch.arange(4)
    tiles = antidiagonal_tiles(batch.q, batch.paged, batch.layout, heads, 0.8, 16)
    wl = antidiagonal_worklist(batch.q, batch.paged, batch.layout, heads, 0.8, 16)
    kept = _kept(tiles)
    blk = 0
    for b, (q_len, kv_len) in enumerate(zip(batch.layout.q_lens_host,
                                            batch.layout.kv_lens_host)):
        for h in range(4):
            mask = worklist_mask(wl, batch.layout, b, h)  # [q_len, kv_len]
            for m in range(-(-q_len // 64)):
                row = mask[m * 64]
                keys = {int(k) // BLOCK_N for k in torch.nonzero(row).flatten()}
                assert keys == kept[h][blk + m]
        blk += -(-q_len // 64)
    out = sparse_attention(batch.q, batch.paged, batch.layout, wl)
    ref = masked_attention_reference(batch.q, batch.kv, batch.layout,
                                     lambda b, h, *_: worklist_mask(wl, batch.layout, b, h))
    torch.testing.assert_close(out.float().cpu(), ref.float(), atol=2e-3, rtol=2e-3)


def test_bad_settings_are_refused(device):
    batch = make_batch([64], [64], 2, 1, 64, torch.float32, device)
    with pytest.raises(ValueError, match="stride"):
        antidiagonal_tiles(batch.q, batch.kv, batch.layout, torch.tensor([0]), 0.9, 8, stride=5)
    with pytest.raises(ValueError, match="tau"):
        antidiagonal_tiles(batch.q, batch.kv, batch.layout, torch.tensor([0]), 0.0, 8)
