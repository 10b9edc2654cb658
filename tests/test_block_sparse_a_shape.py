"""Block-Sparse and A-shape work lists and attention against their references."""

import pytest
import torch

from conftest import kernel_dtypes
from kernel_inputs import make_batch, tolerance
from vllm_minference.kernels import (block_sparse_scores, build_a_shape_worklist,
                                     build_block_sparse_worklist, dense_worklist,
                                     sparse_attention)
from vllm_minference.kernels.a_shape.reference import a_shape_mask
from vllm_minference.kernels.attention.reference import (causal_mask, masked_attention_reference,
                                                          worklist_mask, worklist_overlaps)
from vllm_minference.kernels.block_sparse import extra_block_tiles
from vllm_minference.kernels.block_sparse import index as bs_index
from vllm_minference.kernels.block_sparse.reference import (block_scores_reference,
                                                             block_sparse_mask,
                                                             extra_tiles_reference)

CASES = [([100], [100]), ([40], [40]), ([70, 130, 3], [300, 130, 90])]


@pytest.mark.parametrize("q_lens,kv_lens", CASES)
def test_block_scores_match_reference(device, q_lens, kv_lens):
    batch = make_batch(q_lens, kv_lens, 4, 2, 64, torch.float32, device, structured=True)
    heads = [2, 0]
    got = block_sparse_scores(batch.q, batch.paged, batch.layout, torch.tensor(heads)).cpu()
    ref = block_scores_reference(batch.q, batch.kv, batch.layout, heads)
    finite = torch.isfinite(ref)
    assert torch.equal(torch.isinf(got) & (got > 0), torch.isinf(ref) & (ref > 0))
    assert torch.equal(torch.isinf(got) & (got < 0), torch.isinf(ref) & (ref < 0))
    torch.testing.assert_close(got.double()[finite], ref[finite], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("q_lens,kv_lens,per_block,local", [
    ([70, 130], [700, 400], 3, 16),   # chunks at the end of longer sequences
    ([200], [200], 8, 100),           # more wanted than far tiles exist: -1 padding
    ([30], [30], 2, 0),               # one block, no far tile at all
    ([130, 64], [5000, 4200], 3, 64),  # 60+ far tiles: several merges and key splits
    ([64], [4200], 20, 0),            # more wanted than buckets: every bucket's tiles
    ([100], [20000], 4, 64),          # 20 buckets, the best 4 hold the best 4 tiles
])
def test_extra_tiles_are_the_best_far_tiles(device, monkeypatch, q_lens, kv_lens, per_block,
                                            local):
    batch = make_batch(q_lens, kv_lens, 4, 2, 64, torch.float32, device, structured=True)
    heads = [3, 1]
    got = extra_block_tiles(batch.q, batch.paged, batch.layout, torch.tensor(heads),
                            per_block, local).cpu()
    sliced = extra_block_tiles(batch.q, batch.paged, batch.layout, torch.tensor(heads),
                               per_block, local, split_tiles=1).cpu()  # a split per 64 tiles
    assert torch.equal(got.sort(-1).values, sliced.sort(-1).values)
    monkeypatch.setattr(bs_index, "RANK_BYTES", 1)  # blocks ranked one at a time
    one_by_one = extra_block_tiles(batch.q, batch.paged, batch.layout, torch.tensor(heads),
                                   per_block, local).cpu()
    assert torch.equal(got.sort(-1).values, one_by_one.sort(-1).values)
    monkeypatch.setattr(bs_index, "RANK_BYTES", 64 << 20)
    monkeypatch.setattr(bs_index, "RANK_LAUNCH", dict(BB=4, num_warps=2))
    four_blocks = extra_block_tiles(batch.q, batch.paged, batch.layout, torch.tensor(heads),
                                    per_block, local).cpu()  # 4 blocks per ranking program
    assert torch.equal(got, four_blocks)  # the same scores, ranked alike
    assert got.shape == (2, batch.layout.num_blocks, per_block) and got.dtype == torch.int32
    ref = extra_tiles_reference(batch.q, batch.kv, batch.layout, heads, per_block, local)
    for i in range(len(heads)):
        for blk in range(batch.layout.num_blocks):
            row = got[i, blk].tolist()
            kept = [t for t in row if t >= 0]
            assert len(kept) == len(set(kept))
            assert set(kept) == ref[i][blk], (i, blk)


@pytest.mark.parametrize("q_lens,kv_lens,topk,k_max", [
    ([100], [100], [3, 4, 2, 5], 5),
    ([70, 130, 3], [300, 130, 90], [3, 4, 2, 5], 5),
    ([130, 64], [5000, 4200], [8, 3, 40, 20], 40),  # more buckets than ranked, chunk at the end
    ([64], [20000], [100, 9, 3, 1], 100),            # Block-Sparse's default budget: 100 tiles
])
def test_block_sparse_worklist_keeps_what_the_score_array_keeps(device, q_lens, kv_lens, topk,
                                                                k_max):
    """The ranked Block-Sparse lists (no [blocks, tiles] score array) keep the tiles that the
    full scores and torch.topk keep: the sink, the block's own tiles, its best others."""
    from vllm_minference.kernels.block_sparse import block_sparse_worklist
    batch = make_batch(q_lens, kv_lens, 4, 2, 64, torch.float32, device, structured=True)
    heads = torch.tensor([0, 3, 1, 2], device=device)
    want = build_block_sparse_worklist(
        block_sparse_scores(batch.q, batch.paged, batch.layout, heads),
        torch.tensor(topk, device=device), k_max)
    got = block_sparse_worklist(batch.q, batch.paged, batch.layout, heads,
                                torch.tensor(topk, device=device), k_max, ranked=True)
    for h in range(4):
        for b in range(len(q_lens)):
            assert _tiles_per_block(got, batch.layout, b, h) == [
                sorted(t) for t in _tiles_per_block(want, batch.layout, b, h)], (h, b)


def test_block_sparse_ranks_where_the_scores_would_be_large_or_mostly_skipped():
    from vllm_minference.kernels.block_sparse.index import ranks_block_sparse
    assert not ranks_block_sparse(7, 256, 2048, 100)      # 128K keys, 16K chunk: scores held
    assert not ranks_block_sparse(16, 1024, 2048, 100)    # 134 MB, buckets hold most tiles
    assert ranks_block_sparse(7, 256, 16384, 100)         # 1M keys: 99 buckets of 1024
    assert ranks_block_sparse(64, 1024, 2048, 100)        # 512 MiB of scores
    assert ranks_block_sparse(2, 4, 300, 4)               # 3 buckets of 19: a sixth


def _tiles_per_block(wl, layout, b, h):
    first = sum((ql + 63) // 64 for ql in layout.q_lens_host[:b])
    out = []
    for m in range((layout.q_lens_host[b] + 63) // 64):
        cp, cc, base, _, colc = wl.desc[h, first + m].tolist()
        assert base == 0 and colc == 0
        out.append([int(s) // 64 for s in wl.chunks[cp:cp + cc, 0].tolist()])
    return out


@pytest.mark.parametrize("dtype", kernel_dtypes())
@pytest.mark.parametrize("q_lens,kv_lens", CASES)
def test_block_sparse_attention(device, dtype, q_lens, kv_lens):
    batch = make_batch(q_lens, kv_lens, 4, 2, 64, dtype, device, structured=True)
    heads = torch.arange(4, device=device)
    scores = block_sparse_scores(batch.q, batch.paged, batch.layout, heads)
    topk = torch.tensor([3, 4, 2, 5], device=device)
    wl = build_block_sparse_worklist(scores, topk, k_max=5)
    sc = scores.cpu()
    for b, (ql, kl) in enumerate(zip(q_lens, kv_lens)):
        first = sum((x + 63) // 64 for x in q_lens[:b])
        for h in range(4):
            tiles = _tiles_per_block(wl, batch.layout, b, h)
            for m, t in enumerate(tiles):
                row = sc[h, first + m]
                k = min(max(3, int(topk[h])), int((row > float("-inf")).sum()))
                expect = torch.topk(row, k).indices.sort().values.tolist()
                assert t == expect
            assert worklist_overlaps(wl, batch.layout, b, h) == 0
    ref = masked_attention_reference(
        batch.q, batch.kv, batch.layout,
        lambda b, h, ql, kl: block_sparse_mask(_tiles_per_block(wl, batch.layout, b, h), ql, kl))
    out = sparse_attention(batch.q, batch.paged, batch.layout, wl)
    assert float((out.double() - ref).norm() / ref.norm()) < tolerance(dtype)
    # enough blocks to cover everything: dense
    wl_all = build_block_sparse_worklist(scores, torch.full((4,), 100, device=device), 100)
    dense = sparse_attention(batch.q, batch.kv, batch.layout, dense_worklist(batch.layout, 4))
    torch.testing.assert_close(sparse_attention(batch.q, batch.kv, batch.layout, wl_all), dense,
                               atol=tolerance(dtype), rtol=tolerance(dtype))


@pytest.mark.parametrize("dtype", kernel_dtypes())
@pytest.mark.parametrize("q_lens,kv_lens", CASES + [([64], [700])])
def test_a_shape(device, dtype, q_lens, kv_lens):
    batch = make_batch(q_lens, kv_lens, 4, 1, 128, dtype, device)
    sink = [10, 64, 0, 200]
    local = [64, 100, 130, 1]
    wl = build_a_shape_worklist(batch.layout, torch.tensor(sink), torch.tensor(local))
    for b, (ql, kl) in enumerate(zip(q_lens, kv_lens)):
        for h in range(4):
            got = worklist_mask(wl, batch.layout, b, h) & causal_mask(ql, kl)
            assert torch.equal(got, a_shape_mask(sink[h], local[h], ql, kl))
            assert worklist_overlaps(wl, batch.layout, b, h) == 0
    ref = masked_attention_reference(
        batch.q, batch.kv, batch.layout,
        lambda b, h, ql, kl: a_shape_mask(sink[h], local[h], ql, kl))
    out = sparse_attention(batch.q, batch.paged, batch.layout, wl)
    assert float((out.double() - ref).norm() / ref.norm()) < tolerance(dtype)


def test_a_shape_lists_from_host_maxima_read_nothing_back(device, monkeypatch):
    """Serving passes the budgets' maxima from the profile: the same lists, and no value is
    read back from the device (which would stall the host every layer)."""
    batch = make_batch([130, 64], [400, 700], 4, 1, 64, torch.float16, device)
    sink = torch.tensor([10, 64, 0, 200], device=device)
    local = torch.tensor([64, 100, 130, 1], device=device)
    expect = build_a_shape_worklist(batch.layout, sink, local)
    batch.layout.block_first_pos()  # (the layout's own helpers are not under test)

    def no_readback(*a, **k):
        raise AssertionError("read back from the device")
    monkeypatch.setattr(torch.Tensor, "max", no_readback)
    monkeypatch.setattr(torch.Tensor, "item", no_readback)
    got = build_a_shape_worklist(batch.layout, sink, local, sink_max=200, local_max=130)
    monkeypatch.undo()
    for a, b in ((got.desc, expect.desc), (got.chunks, expect.chunks), (got.cols, expect.cols)):
        assert torch.equal(a, b)
