"""Vertical-Slash: estimate, selection, index building and attention against references."""

import pytest
import torch

from conftest import kernel_dtypes
from kernel_inputs import make_batch, tolerance
from vllm_minference.kernels import (build_vertical_slash_worklist, dense_worklist,
                                     estimate_vertical_slash, select_vertical_slash,
                                     sparse_attention)
from vllm_minference.kernels.attention.reference import (masked_attention_reference,
                                                          worklist_mask, worklist_overlaps)
from vllm_minference.kernels.vertical_slash.reference import (estimate_reference,
                                                               select_vertical_slash_reference,
                                                               vertical_slash_mask)

CASES = [
    ([100], [100]),             # plain prefill, not a multiple of 64
    ([40], [40]),               # fewer than 64 queries
    ([70, 130], [300, 130]),    # chunk at the end of a longer sequence + a full prefill
]


@pytest.mark.parametrize("q_lens,kv_lens", CASES)
@pytest.mark.parametrize("head_dim", [64, 128])
def test_estimate_matches_reference(device, q_lens, kv_lens, head_dim):
    batch = make_batch(q_lens, kv_lens, 4, 2, head_dim, torch.float32, device, structured=True)
    heads = [0, 3, 1]
    vert, slash = estimate_vertical_slash(batch.q, batch.paged, batch.layout,
                                          torch.tensor(heads, device=device))
    ref_v, ref_s = estimate_reference(batch.q, batch.kv, batch.layout, heads)
    torch.testing.assert_close(vert.double().cpu(), ref_v, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(slash.double().cpu(), ref_s, atol=1e-5, rtol=1e-4)
    # every estimate row is a probability distribution: mass = number of estimate rows
    for b, ql in enumerate(q_lens):
        assert torch.allclose(vert[b].sum(-1).cpu(), torch.full((3,), float(min(64, ql))),
                              rtol=1e-4)


def test_estimate_across_key_splits(device, monkeypatch):
    """Diagonal sums carried within a key split and added atomically across splits."""
    from vllm_minference.kernels.vertical_slash import estimate
    monkeypatch.setattr(estimate, "KEYS_PER_SPLIT", 128)  # 700 keys: 6 splits, 1-2 tiles each
    # unstructured scores: every diagonal holds real mass, so a lost partial sum shows
    batch = make_batch([100, 300, 64], [700, 300, 200], 4, 2, 64, torch.float32, device)
    heads = [2, 0]
    vert, slash = estimate_vertical_slash(batch.q, batch.paged, batch.layout,
                                          torch.tensor(heads, device=device))
    ref_v, ref_s = estimate_reference(batch.q, batch.kv, batch.layout, heads)
    torch.testing.assert_close(vert.double().cpu(), ref_v, atol=1e-7, rtol=1e-4)
    torch.testing.assert_close(slash.double().cpu(), ref_s, atol=1e-7, rtol=1e-4)


def test_keys_per_split_fills_the_grid_with_few_heads():
    """Few estimated heads split the keys finer (down to the minimum), many keep the cap."""
    from vllm_minference.kernels.vertical_slash.estimate import (
        KEYS_PER_SPLIT, MIN_KEYS_PER_SPLIT, TARGET_PROGRAMS, keys_per_split)
    assert keys_per_split(131072, 32) == KEYS_PER_SPLIT == 4096
    assert keys_per_split(131072, 14) == 2048
    assert keys_per_split(131072, 2) == 1024 and keys_per_split(131072, 1) == 1024
    assert keys_per_split(1 << 20, 1) == 2048 and keys_per_split(1 << 20, 2) == 4096
    assert keys_per_split(2048, 1) == MIN_KEYS_PER_SPLIT  # never below the minimum
    for kv, rows in ((131072, 3), (1 << 20, 1), (40000, 5)):
        split = keys_per_split(kv, rows)
        assert split % 64 == 0 and MIN_KEYS_PER_SPLIT <= split <= KEYS_PER_SPLIT
        # the largest split whose grid reaches the target, or the minimum
        assert split == MIN_KEYS_PER_SPLIT or rows * -(-kv // split) >= TARGET_PROGRAMS
        assert split == KEYS_PER_SPLIT or rows * -(-kv // (2 * split)) < TARGET_PROGRAMS


def test_selection_keeps_forced_and_top_entries(device):
    batch = make_batch([50, 64], [500, 64], 2, 1, 64, torch.float32, device)
    g = torch.Generator().manual_seed(1)
    vert = torch.rand(2, 2, 500, generator=g).to(device)
    slash = torch.rand(2, 2, 500, generator=g).to(device)
    v_budget = torch.tensor([40, 100], device=device)
    s_budget = torch.tensor([120, 60], device=device)
    cols, n_cols, diags, n_diags = select_vertical_slash(
        vert, slash, batch.layout, v_budget, s_budget, 100, 120, keep_first=30, keep_diag=100)
    for b, kv_len in enumerate([500, 64]):
        for h in range(2):
            for sel, n, score, budget, forced in (
                (cols, n_cols, vert, v_budget, 30), (diags, n_diags, slash, s_budget, 100)):
                got = sel[b, h, : int(n[b, h])].tolist()
                assert got == sorted(got, reverse=True) and len(set(got)) == len(got)
                assert (sel[b, h, int(n[b, h]):] == -1).all()
                sc = score[b, h, :kv_len].clone()
                n_forced = min(forced, kv_len)
                sc[:n_forced] = 1e6 + forced - torch.arange(n_forced, device=device)
                expect = set(torch.topk(sc, min(int(budget[h]), kv_len)).indices.tolist())
                assert set(got) == expect


SELECT_CASES = [  # kv_lens, v_budget, s_budget, keep_first, keep_diag
    ([500], [40], [120], 30, 100),
    ([100, 37], [10, 200, 3], [7, 64, 500], 30, 100),  # budgets beyond kv_len, k_max > kv_max
    ([1100, 1000, 63], [40, 1500, 30, 9, 700], [2000, 65, 300, 1, 999], 30, 100),
    ([20, 3000], [25, 5], [90, 150], 30, 100),  # a sequence shorter than both floors
    ([1500, 129], [1200, 64, 2], [3, 1300, 77], 0, 1),
]


@pytest.mark.parametrize("kv_lens,v_budget,s_budget,keep_first,keep_diag", SELECT_CASES)
def test_selection_equals_previous_implementation(device, kv_lens, v_budget, s_budget,
                                                  keep_first, keep_diag):
    """The fused selection (score kernel, one top-k, one sort, compaction kernel) returns
    exactly what the ~35-op version did: same indices, order, counts, padding, dtypes."""
    from vllm_minference.kernels import SeqLayout
    B, H, kv_max = len(kv_lens), len(v_budget), max(kv_lens)
    layout = SeqLayout.from_lengths([1] * B, kv_lens, device)
    g = torch.Generator().manual_seed(kv_max + H)
    # distinct scores (ties may break either way), zero past each sequence like the estimate's
    vert, slash = (torch.randperm(B * H * kv_max, generator=g).float().view(B, H, kv_max)
                   .div(B * H * kv_max).to(device) for _ in range(2))
    for b, kl in enumerate(kv_lens):
        vert[b, :, kl:] = slash[b, :, kl:] = 0.0
    vb = torch.tensor(v_budget, device=device)
    sb = torch.tensor(s_budget, device=device)
    # widths as the budgets' maxima, wider (padding), and narrower (they cap the budgets)
    for v_max, s_max in ((max(v_budget), max(s_budget)), (max(v_budget) + 5, 7000),
                         (max(v_budget) // 2 + 1, max(s_budget) + 3)):
        got = select_vertical_slash(vert, slash, layout, vb, sb, v_max, s_max,
                                    keep_first=keep_first, keep_diag=keep_diag)
        ref = select_vertical_slash_reference(vert, slash, layout, vb, sb, v_max, s_max,
                                    keep_first=keep_first, keep_diag=keep_diag)
        for x, y in zip(got, ref):
            assert x.dtype == y.dtype and x.shape == y.shape and x.is_contiguous()
            assert torch.equal(x, y)


def test_selection_with_tied_scores_keeps_the_same_scores(device):
    """Tied scores (e.g. masses that underflowed to 0) may be broken either way, but the
    counts, the kept scores and the output format stay those of the previous version."""
    from vllm_minference.kernels import SeqLayout
    kv_lens, v_budget, s_budget = [700, 90], [50, 400, 8], [120, 30, 900]
    layout = SeqLayout.from_lengths([1, 1], kv_lens, device)
    g = torch.Generator().manual_seed(5)
    vert, slash = (torch.randint(0, 4, (2, 3, 700), generator=g).float().to(device)
                   for _ in range(2))
    vb, sb = torch.tensor(v_budget, device=device), torch.tensor(s_budget, device=device)
    got = select_vertical_slash(vert, slash, layout, vb, sb, 400, 900, keep_first=5,
                                keep_diag=20)
    ref = select_vertical_slash_reference(vert, slash, layout, vb, sb, 400, 900, keep_first=5,
                                keep_diag=20)
    for sel, n, ref_sel, ref_n, score in ((got[0], got[1], ref[0], ref[1], vert),
                                          (got[2], got[3], ref[2], ref[3], slash)):
        assert torch.equal(n, ref_n)
        for b in range(2):
            for h in range(3):
                kept = sel[b, h, : int(n[b, h])]
                assert torch.all(kept[:-1] > kept[1:]) and (sel[b, h, int(n[b, h]):] == -1).all()
                ref_kept = ref_sel[b, h, : int(n[b, h])]
                assert torch.equal(score[b, h, kept.long()].sort().values,
                                   score[b, h, ref_kept.long()].sort().values)


def _vs_inputs(layout, heads, seed, v_sizes, s_sizes, device):
    """Random selections in select_vertical_slash's format (descending, -1 padded)."""
    g = torch.Generator().manual_seed(seed)
    B, v_max, s_max = layout.num_seqs, max(v_sizes), max(s_sizes)
    cols = torch.full((B, heads, v_max), -1, dtype=torch.int32)
    diags = torch.full((B, heads, s_max), -1, dtype=torch.int32)
    n_cols = torch.zeros(B, heads, dtype=torch.int32)
    n_diags = torch.zeros_like(n_cols)
    for b, kl in enumerate(layout.kv_lens_host):
        for h in range(heads):
            c = torch.randperm(kl, generator=g)[: v_sizes[h]].sort(descending=True).values
            # diagonals: the main one, a local band, clumps and isolated far ones
            pool = torch.cat([torch.arange(0, min(kl, 8)), torch.randperm(kl, generator=g)])
            d = torch.unique(pool[: s_sizes[h] + 8])[: s_sizes[h]].sort(descending=True).values
            cols[b, h, : len(c)], n_cols[b, h] = c, len(c)
            diags[b, h, : len(d)], n_diags[b, h] = d, len(d)
    return [x.to(device) for x in (cols, n_cols, diags, n_diags)]


@pytest.mark.parametrize("q_lens,kv_lens", CASES + [([200, 1, 64], [700, 1, 129])])
def test_index_builder_matches_pattern_mask(device, q_lens, kv_lens):
    batch = make_batch(q_lens, kv_lens, 3, 1, 64, torch.float16, device)
    sel = _vs_inputs(batch.layout, 3, 7, [5, 40, 300], [3, 30, 100], device)
    wl = build_vertical_slash_worklist(*sel, batch.layout)
    cols, n_cols, diags, n_diags = (x.cpu() for x in sel)
    for b, (ql, kl) in enumerate(zip(q_lens, kv_lens)):
        for h in range(3):
            expect = vertical_slash_mask(cols[b, h, : n_cols[b, h]].tolist(),
                                         diags[b, h, : n_diags[b, h]].tolist(), ql, kl)
            got = worklist_mask(wl, batch.layout, b, h)
            from vllm_minference.kernels.attention.reference import causal_mask
            assert torch.equal(got & causal_mask(ql, kl), expect)
            assert worklist_overlaps(wl, batch.layout, b, h) == 0
    # no gathered column lies past its block's last row: those would be wasted work
    last = batch.layout.block_last_pos().cpu()
    for h in range(3):
        for i in range(batch.layout.num_blocks):
            _, _, _, cp, cc = wl.desc[h, i].tolist()
            assert all(c <= last[i] for c in wl.cols[cp:cp + cc].tolist())


@pytest.mark.parametrize("dtype", kernel_dtypes())
@pytest.mark.parametrize("q_lens,kv_lens", CASES)
def test_sparse_attention_matches_masked_reference(device, dtype, q_lens, kv_lens):
    batch = make_batch(q_lens, kv_lens, 4, 2, 64, dtype, device, structured=True)
    heads = torch.arange(4, device=device)
    vert, slash = estimate_vertical_slash(batch.q, batch.paged, batch.layout, heads)
    v_budget = torch.tensor([30, 40, 35, 60], device=device)
    s_budget = torch.tensor([50, 60, 80, 50], device=device)
    sel = select_vertical_slash(vert, slash, batch.layout, v_budget, s_budget, 60, 80,
                                keep_first=4, keep_diag=3)
    wl = build_vertical_slash_worklist(*sel, batch.layout)
    cols, n_cols, diags, n_diags = (x.cpu() for x in sel)

    def mask_fn(b, h, ql, kl):
        return vertical_slash_mask(cols[b, h, : n_cols[b, h]].tolist(),
                                   diags[b, h, : n_diags[b, h]].tolist(), ql, kl)

    ref = masked_attention_reference(batch.q, batch.kv, batch.layout, mask_fn)
    out = sparse_attention(batch.q, batch.paged, batch.layout, wl)
    err = float((out.double() - ref).norm() / ref.norm())
    assert err < tolerance(dtype)


@pytest.mark.parametrize("dtype", kernel_dtypes())
def test_covering_budgets_equal_dense(device, dtype):
    batch = make_batch([150, 60], [150, 260], 4, 2, 128, dtype, device)
    heads = torch.arange(4, device=device)
    vert, slash = estimate_vertical_slash(batch.q, batch.kv, batch.layout, heads)
    big = torch.full((4,), 1000, device=device)
    sel = select_vertical_slash(vert, slash, batch.layout, big, big, 1000, 1000)
    wl = build_vertical_slash_worklist(*sel, batch.layout)
    out = sparse_attention(batch.q, batch.kv, batch.layout, wl)
    ref = sparse_attention(batch.q, batch.kv, batch.layout, dense_worklist(batch.layout, 4))
    torch.testing.assert_close(out, ref, atol=tolerance(dtype), rtol=tolerance(dtype))


def _varlen_fns(device):
    from vllm_minference.kernels.page_lists.reference import emulate_fa3_varlen
    fns = [emulate_fa3_varlen]
    if device == "cuda":  # the real FA3 too (vLLM's build, Hopper)
        try:
            from vllm.vllm_flash_attn import flash_attn_varlen_func
            fns.append(flash_attn_varlen_func)
        except ImportError:
            pass
    return fns


@pytest.mark.parametrize("q_lens,kv_lens", CASES + [([64, 200], [5000, 4200])])
def test_estimate_from_fa3_row_statistics(device, q_lens, kv_lens):
    """One FA3 call's log-sum-exp in place of the first pass gives the same estimate as the
    two Triton passes (FA3 emulated on the CPU, real on a GPU; chunks shorter than 64 rows
    and several key splits included)."""
    from vllm_minference.kernels.page_lists.reference import emulate_fa3_varlen
    from vllm_minference.kernels.vertical_slash.row_stats import estimate_row_lse
    batch = make_batch(q_lens, kv_lens, 4, 2, 64, torch.float16, device, structured=True)
    heads = torch.tensor([0, 3, 1], device=device)
    two_pass = estimate_vertical_slash(batch.q, batch.paged, batch.layout, heads)
    for varlen_fn in _varlen_fns(device):
        lse = estimate_row_lse(batch.q, batch.paged, batch.layout, heads, varlen_fn=varlen_fn)
        assert lse.shape == (len(q_lens), 3, 64)
        got = estimate_vertical_slash(batch.q, batch.paged, batch.layout, heads, row_lse=lse)
        for g, t in zip(got, two_pass):
            torch.testing.assert_close(g, t, atol=1e-4, rtol=2e-3)
    with pytest.raises(ValueError, match="paged"):
        estimate_row_lse(batch.q, batch.kv, batch.layout, heads, varlen_fn=emulate_fa3_varlen)

