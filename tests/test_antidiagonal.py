"""Antidiagonal per-block tile selection against its PyTorch reference."""

import pytest
import torch

from kernel_inputs import make_batch
from vllm_minference.kernels import sparse_attention
from vllm_minference.kernels.antidiagonal import antidiagonal_worklist, worklist_tiles
from vllm_minference.kernels.antidiagonal import index as ad_index
from vllm_minference.kernels.antidiagonal.columns import add_tile_columns
from vllm_minference.kernels.antidiagonal.reference import (kept_tiles_reference,
                                                             tile_shares_reference)
from vllm_minference.kernels.attention.reference import (masked_attention_reference,
                                                        worklist_mask, worklist_overlaps)
from vllm_minference.kernels.layout import BLOCK_N

CASES = [  # lengths, stride, query heads : KV heads, head size, heads planned
    ([100], [100], 8, (4, 2), 64, [3, 0]),          # one sequence, a partial last block
    ([70, 130], [700, 400], 8, (14, 2), 64, [0, 5, 6, 13]),  # 7 per KV head (Qwen2.5)
    ([64, 30], [1100, 30], 16, (4, 2), 128, [1, 2]),  # fewer rows than a group of 16
    ([200], [700], 4, (16, 1), 64, list(range(16))),  # 16 row groups; 2 programs per group
    ([130], [600], 8, (32, 8), 128, [31, 4, 9]),     # Llama-3-8B's heads
    ([90, 20], [1000, 20], 32, (14, 2), 64, [0, 6, 13]),  # 2 row groups; rows short of one
    ([100, 40], [900, 40], 64, (14, 2), 64, [1, 7, 12]),  # 1 row group a block (one tile)
]


def _kept(tiles: torch.Tensor) -> list[list[set[int]]]:
    return [[{int(t) for t in row if t >= 0} for row in head] for head in tiles.cpu()]


def _tiles(batch, kv, heads, tau, max_tiles, stride=8, sink=1, local=1, shares=None,
           launch=""):
    wl = antidiagonal_worklist(batch.q, kv, batch.layout, torch.tensor(heads), tau, max_tiles,
                               stride, sink, local, launch=launch, shares=shares)
    return worklist_tiles(wl)


def _dtype(device: str) -> torch.dtype:
    return torch.float32 if device == "cpu" else torch.float16  # the GPU's fp32 dot is TF32


@pytest.mark.parametrize("q_lens,kv_lens,stride,heads_kv,head_dim,heads,launch", [
    *[(*case, "") for case in CASES],
    (*CASES[1], "iw4n2"), (*CASES[3], "iw4n2"), (*CASES[4], "ir64k16w4n2"),  # inner loop
    (*CASES[5], "ir32k16w4n2"), (*CASES[6], "ir16k16w4n2"),
])
def test_shares_match_reference(device, q_lens, kv_lens, stride, heads_kv, head_dim, heads,
                                launch):
    batch = make_batch(q_lens, kv_lens, *heads_kv, head_dim, _dtype(device), device,
                       page_size=max(16, stride), structured=True)
    n_tiles = -(-max(kv_lens) // BLOCK_N)
    shares = torch.full((len(heads), batch.layout.num_blocks, n_tiles), -1.0, device=device)
    _tiles(batch, batch.paged, heads, 0.9, 10_000, stride, shares=shares, launch=launch)
    ref = tile_shares_reference(batch.q, batch.kv, batch.layout, heads, stride)
    causal = ref >= 0
    tol = 2e-5 if batch.q.dtype == torch.float32 else 1e-3
    torch.testing.assert_close(shares.cpu().double()[causal], ref[causal], atol=tol, rtol=1e-2)
    sums = torch.where(causal, ref, 0.0).sum(-1)
    torch.testing.assert_close(sums, torch.ones_like(sums))  # every block's shares sum to 1


@pytest.mark.parametrize("tau,max_tiles,sink,local", [
    (0.5, 10_000, 1, 1), (0.9, 10_000, 1, 0), (0.99, 10_000, 2, 2), (0.9, 6, 1, 1),
    (1.0, 3, 0, 0)])
def test_kept_tiles_are_the_fewest_reaching_tau(device, tau, max_tiles, sink, local):
    batch = make_batch([150, 64], [1500, 900], 4, 2, 64, _dtype(device), device,
                       structured=True, seed=3)
    n_tiles = -(-1500 // BLOCK_N)
    shares = torch.full((4, batch.layout.num_blocks, n_tiles), -1.0, device=device)
    tiles = _tiles(batch, batch.kv, [0, 1, 2, 3], tau, max_tiles, 8, sink, local, shares)
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


@pytest.mark.parametrize("tau,max_tiles,local,group_blocks", [
    (0.9, 10_000, 1, 3), (0.99, 10_000, 2, 2), (0.9, 8, 1, 3), (0.5, 10_000, 0, 4)])
def test_blocks_of_a_group_share_the_fewest_tiles_giving_each_tau(device, tau, max_tiles,
                                                                  local, group_blocks):
    """FA3 computes a row group's union of its blocks' tiles: with ``group_blocks`` the
    blocks run together list one selection, which still gives each block ``tau``."""
    batch = make_batch([400, 64, 130], [1500, 900, 130], 4, 2, 64, _dtype(device), device,
                       structured=True, seed=5)
    n_tiles = -(-1500 // BLOCK_N)
    shares = torch.full((4, batch.layout.num_blocks, n_tiles), -1.0, device=device)
    tiles = _tiles(batch, batch.paged, [0, 1, 2, 3], tau, max_tiles, 8, 1, local, shares)
    grouped = antidiagonal_worklist(batch.q, batch.paged, batch.layout, torch.arange(4), tau,
                                    max_tiles, 8, 1, local, group_blocks=group_blocks)
    got = _kept(worklist_tiles(grouped))
    edge = (batch.layout.block_last_pos().cpu() // BLOCK_N).tolist()  # last causal tile
    causal = torch.arange(n_tiles)[None, :] <= torch.tensor(edge)[:, None]
    w = torch.where(causal, shares.cpu().double(), 0.0)  # past the edge: not written
    ref = kept_tiles_reference(w, batch.layout, tau, max_tiles, 1, local, group_blocks)
    alone = _kept(tiles)
    for h in range(4):
        for _, b0, n in batch.layout.block_ranges(group_blocks):
            run = range(b0, b0 + n)
            union = set().union(*(got[h][i] for i in run))
            for i in run:
                diff = got[h][i] ^ ref[h][i]
                if diff:  # the bisected threshold differs from the exact one on near-ties only
                    score = lambda t: float(w[h, list(run), t].sum()) / len(run)  # noqa: E731
                    boundary = min(score(t) for t in ref[h][i])
                    for t in diff:
                        assert abs(score(t) - boundary) <= 2e-3 * max(boundary, 1e-6), (h, i, t)
                # one list per run, each block's up to its causal edge
                assert got[h][i] == {t for t in union if t <= edge[i]}
                if max_tiles >= n_tiles:  # each block keeps tau of its own attention, so
                    # at least as many tiles as its own selection
                    assert sum(float(w[h, i, t]) for t in got[h][i]) >= tau * float(
                        w[h, i].sum()) - 2e-3
                    assert len(got[h][i]) >= len(alone[h][i]) - 1


def test_tiles_contiguous_and_paged_agree_across_slabs(device, monkeypatch):
    batch = make_batch([300, 70], [1200, 70], 4, 2, 64, torch.float16, device, structured=True)
    whole = _tiles(batch, batch.paged, [1, 2], 0.9, 64)
    contiguous = _tiles(batch, batch.kv, [1, 2], 0.9, 64)
    assert torch.equal(whole, contiguous)
    monkeypatch.setattr(ad_index, "SLAB_BYTES", 1)  # one program's blocks per slab
    monkeypatch.setattr(ad_index, "SPLIT_TILES", 8)  # several key splits per program
    sliced = _tiles(batch, batch.paged, [1, 2], 0.9, 64)
    assert torch.equal(whole, sliced)
    wide = _tiles(batch, batch.paged, [1, 2], 0.9, 64, launch="r128k16w8n2")
    assert torch.equal(whole, wide)  # 8 blocks x 2 heads per program
    for launch in ("iw4n2", "ir64k32w4n2"):  # the GEMM-style inner loop over the stride
        assert torch.equal(whole, _tiles(batch, batch.paged, [1, 2], 0.9, 64, launch=launch))


def test_a_launch_that_does_not_fit_falls_back_and_is_remembered(device, monkeypatch):
    """Defaults sized on an H100 may not fit a GPU with less shared memory: the estimate
    falls back to smaller tiles (same tiles kept) instead of failing the prefill."""
    from triton.runtime.errors import OutOfResources
    batch = make_batch([300, 70], [900, 70], 4, 2, 64, torch.float16, device, structured=True)
    want = _tiles(batch, batch.paged, [1, 2], 0.9, 64)
    kernel, tried = ad_index._partials_kernel, []

    class SmallGpu:  # refuses programs of more than 32 row groups, as a small GPU would
        def __getitem__(self, grid):
            def launch(*args, **kw):
                tried.append(kw["ROWS"])
                if kw["ROWS"] > 32:
                    raise OutOfResources(300_000, 101_376, "shared memory")
                return kernel[grid](*args, **kw)
            return launch
    monkeypatch.setattr(ad_index, "_partials_kernel", SmallGpu())
    monkeypatch.setattr(ad_index, "_FITTING", {})
    warned = []
    monkeypatch.setattr(ad_index.logger, "warning", lambda *a: warned.append(a[0] % a[1:]))
    got = _tiles(batch, batch.paged, [1, 2], 0.9, 64, launch="r128k32w8n2")
    assert torch.equal(got, want)
    assert tried[:2] == [128, 64] and set(tried[2:]) == {32}  # chosen, defaults, fallback
    assert len(warned) == 2 and "'r128k32w8n2' does not fit" in warned[0]
    tried.clear()
    _tiles(batch, batch.paged, [1, 2], 0.9, 64, launch="r128k32w8n2")
    assert set(tried) == {32}  # remembered: no second failing launch
    assert ad_index.fitted_launch(batch.q, "r128k32w8n2", 8, 2) == ad_index.FALLBACK_LAUNCH
    assert ad_index.fitted_launch(batch.q, "w4n1", 8, 2) is None  # not run yet


def test_worklist_runs_exactly_the_kept_tiles(device):
    batch = make_batch([130, 64], [700, 64], 4, 2, 64, _dtype(device), device, structured=True)
    wl = antidiagonal_worklist(batch.q, batch.paged, batch.layout, torch.arange(4), 0.8, 16)
    kept = _kept(worklist_tiles(wl))
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
    tol = 2e-3 if batch.q.dtype == torch.float32 else 1e-2
    torch.testing.assert_close(out.float().cpu(), ref.float().cpu(), atol=tol, rtol=tol)


def test_columns_join_the_tiles_once_each(device):
    """Each block gains the columns up to its last row outside its own tiles; no key twice;
    the kernel runs exactly the joined lists."""
    batch = make_batch([130, 64], [700, 64], 4, 2, 64, _dtype(device), device, structured=True)
    wl = antidiagonal_worklist(batch.q, batch.paged, batch.layout, torch.arange(4), 0.8, 16)
    g = torch.Generator().manual_seed(1)
    counts = [[40, 25, 0, 7], [3, 0, 10, 40]]
    cols = torch.full((2, 4, 40), -1, dtype=torch.int32)
    n_cols = torch.zeros(2, 4, dtype=torch.int32)
    for b, kv_len in enumerate(batch.layout.kv_lens_host):
        for h in range(4):
            n = min(counts[b][h], kv_len)
            cols[b, h, :n] = torch.randperm(kv_len, generator=g)[:n].sort(descending=True).values
            n_cols[b, h] = n
    both = add_tile_columns(wl, cols.to(device), n_cols.to(device), batch.layout, 16)
    for b, (q_len, kv_len) in enumerate(zip(batch.layout.q_lens_host,
                                            batch.layout.kv_lens_host)):
        for h in range(4):
            want = worklist_mask(wl, batch.layout, b, h)
            for r0 in range(0, q_len, 64):
                r1 = min(q_len, r0 + 64)
                for c in cols[b, h, :int(n_cols[b, h])].tolist():
                    if c <= kv_len - q_len + r1 - 1:
                        want[r0:r1, c] = True
            assert torch.equal(worklist_mask(both, batch.layout, b, h), want)
            assert worklist_overlaps(both, batch.layout, b, h) == 0
    assert int(both.desc[..., 4].sum()) > 0
    out = sparse_attention(batch.q, batch.paged, batch.layout, both)
    ref = masked_attention_reference(batch.q, batch.kv, batch.layout,
                                     lambda b, h, *_: worklist_mask(both, batch.layout, b, h))
    tol = 2e-3 if batch.q.dtype == torch.float32 else 1e-2
    torch.testing.assert_close(out.float().cpu(), ref.float().cpu(), atol=tol, rtol=tol)
    with pytest.raises(ValueError, match="columns for 2 sequences x 3 heads"):
        add_tile_columns(wl, cols[:, :3].to(device), n_cols[:, :3].to(device), batch.layout, 16)


def test_launch_options_parse():
    parse = ad_index.parse_launch
    assert parse("w4n1") == (dict(num_warps=4, num_stages=1), dict(inner_loop=False))
    assert parse("r128k32w8") == (
        dict(num_warps=8, num_stages=2), dict(inner_loop=False, rows=128, key_groups=32))
    assert parse("ir128k64w8n3")[1] == dict(inner_loop=True, rows=128, key_groups=64)
    for bad in ("x8", "w3", "r100k16w4", "r8k8w4"):
        with pytest.raises(ValueError, match="launch option"):
            parse(bad)


@pytest.mark.parametrize("group_blocks", [1, 3])
def test_the_threshold_search_lists_what_bisection_lists(device, monkeypatch, group_blocks):
    """Testing 4 or 16 grid points per read of the shares reaches bisection's threshold
    exactly (the tiles taken only grow as the threshold falls), so the lists are equal."""
    batch = make_batch([300, 100], [2600, 700], 4, 2, 64, _dtype(device), device,
                       structured=True, seed=5, page_size=64)
    lists = {}
    for ways in (2, 4, 16):
        monkeypatch.setattr(ad_index, "SEARCH_WAYS", ways)
        wl = antidiagonal_worklist(batch.q, batch.paged, batch.layout, torch.arange(4), 0.98,
                                   10_000, 16, 1, 1, group_blocks=group_blocks)
        lists[ways] = _kept(worklist_tiles(wl))
    assert lists[4] == lists[2] and lists[16] == lists[2]
    assert sum(len(t) for row in lists[2] for t in row) > 0
    assert [ad_index.search_passes(w) for w in (2, 4, 16, 256)] == [16, 8, 4, 2]
    for bad in (1, 3, 8):
        with pytest.raises(ValueError, match="search ways"):
            ad_index.search_passes(bad)


def test_default_launch_is_chosen_by_vector_size_and_head_size():
    launch = ad_index.default_launch
    # stride 32 at head size 64 was timed on its own (4 warps); stride 16 at head size 128
    # has the same vector size but keeps the vector-size table's 8 warps
    assert launch(32, 64, 2) == "ir128k128w4n3"
    assert launch(16, 128, 2) == launch(32, 128, 2) == "ir128k128w8n3"
    assert launch(8, 64, 2) == "r128k32w8n2"
    assert launch(32, 64, 4) == ""  # fp32: the defaults, which fit its shared memory
    for option in (launch(s, d, 2) for s in ad_index.STRIDES for d in (64, 128)):
        assert option == "" or ad_index.parse_launch(option)


def test_bad_settings_are_refused(device):
    batch = make_batch([64], [64], 2, 1, 64, torch.float32, device)
    with pytest.raises(ValueError, match="stride"):
        _tiles(batch, batch.kv, [0], 0.9, 8, stride=5)
    with pytest.raises(ValueError, match="tau"):
        _tiles(batch, batch.kv, [0], 0.0, 8)
    odd_pages = make_batch([64], [64], 2, 1, 64, torch.float32, device, page_size=8)
    with pytest.raises(ValueError, match="multiple of its stride"):
        _tiles(odd_pages, odd_pages.paged, [0], 0.9, 8, stride=16)
    for launch in ("w3", "r100k16w4", "x8n2", "r8k8w4"):
        with pytest.raises(ValueError, match="launch option"):
            _tiles(batch, batch.kv, [0], 0.9, 8, launch=launch)
