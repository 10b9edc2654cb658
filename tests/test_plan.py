"""A layer whose heads mix patterns, planned and run in one launch; the density guard."""

from dataclasses import replace

import pytest
import torch

from kernel_inputs import make_batch, tolerance
from vllm_minference.kernels import (A_SHAPE, BLOCK_SPARSE, DENSE, VERTICAL_SLASH,
                                     AntidiagonalRule, HeadPattern, LayerPatterns,
                                     apply_density_guard, dense_worklist, plan_layer,
                                     sparse_attention)
from vllm_minference.kernels.antidiagonal import antidiagonal_worklist
from vllm_minference.kernels.attention.reference import masked_attention_reference, worklist_mask
from vllm_minference.kernels.worklist import merge_worklists


def test_mixed_layer_matches_per_head_reference(device):
    dtype = torch.float16
    batch = make_batch([150, 64], [400, 64], 6, 2, 64, dtype, device, structured=True)
    patterns = LayerPatterns.from_heads([
        HeadPattern(VERTICAL_SLASH, 30, 50), HeadPattern(A_SHAPE, 16, 64),
        HeadPattern(BLOCK_SPARSE, 3), HeadPattern(DENSE),
        HeadPattern(VERTICAL_SLASH, 60, 70), HeadPattern(A_SHAPE, 0, 128)], device)
    wl = plan_layer(batch.q, batch.paged, batch.layout, patterns)
    assert wl.desc.shape == (6, batch.layout.num_blocks, 5)
    ref = masked_attention_reference(batch.q, batch.kv, batch.layout,
                                     lambda b, h, ql, kl: worklist_mask(wl, batch.layout, b, h))
    out = sparse_attention(batch.q, batch.paged, batch.layout, wl)
    assert float((out.double() - ref).norm() / ref.norm()) < tolerance(dtype)
    dense_head = sparse_attention(batch.q, batch.kv, batch.layout,
                                  dense_worklist(batch.layout, 6))[:, 3]
    torch.testing.assert_close(out[:, 3], dense_head, atol=0, rtol=0)
    density = wl.density(batch.layout).cpu()
    assert density[3] == 1.0 and (density[[0, 1, 2, 4, 5]] < 1.0).all()


def test_density_guard_sends_heavy_heads_to_dense(device):
    batch = make_batch([300], [300], 2, 1, 64, torch.float16, device)
    layout = batch.layout
    full = dense_worklist(layout, 1)
    light = plan_layer(batch.q, batch.kv, layout,
                       LayerPatterns.from_heads([HeadPattern(A_SHAPE, 0, 64)], device))
    wl = merge_worklists([(torch.tensor([0], device=device), light),
                          (torch.tensor([1], device=device), full)], 2, layout.num_blocks)
    before = wl.density(layout).cpu()
    guarded = apply_density_guard(wl, layout, max_density=0.9)
    after = guarded.density(layout).cpu()
    assert after[0] == before[0] and after[1] == 1.0
    torch.testing.assert_close(
        sparse_attention(batch.q, batch.kv, layout, guarded),
        sparse_attention(batch.q, batch.kv, layout, wl), atol=0, rtol=0)
    # a head just above the threshold is replaced by exactly the dense list
    guarded = apply_density_guard(wl, layout, max_density=0.1)
    assert torch.equal(guarded.tiles().cpu(), dense_worklist(layout, 2).tiles().cpu())


def test_extra_tiles_go_to_vertical_slash_heads_only(device, monkeypatch):
    """``extra_blocks``: the Vertical-Slash heads' own far tiles (the pooled estimate's, as
    :func:`extra_block_tiles` gives them); other heads none; their cost is counted.  The
    keys are pooled once for the extra tiles and the Block-Sparse heads."""
    from vllm_minference.kernels import plan as plan_module
    from vllm_minference.kernels.block_sparse import extra_block_tiles
    batch = make_batch([150, 64], [900, 64], 4, 2, 64, torch.float16, device, structured=True)
    heads = [HeadPattern(VERTICAL_SLASH, 30, 50), HeadPattern(A_SHAPE, 16, 64),
             HeadPattern(VERTICAL_SLASH, 60, 70), HeadPattern(BLOCK_SPARSE, 3)]
    plain = plan_layer(batch.q, batch.paged, batch.layout, LayerPatterns.from_heads(heads, device))
    real_pool_keys, pooled = plan_module.pool_keys, []

    def counted_pool_keys(*args):
        pooled.append(args)
        return real_pool_keys(*args)
    monkeypatch.setattr(plan_module, "pool_keys", counted_pool_keys)
    wl = plan_layer(batch.q, batch.paged, batch.layout,
                    LayerPatterns.from_heads(heads, device, extra_blocks=2, keep_diag=100))
    assert len(pooled) == 1
    assert plain.extra is None and wl.extra.shape == (4, batch.layout.num_blocks, 2)
    want = extra_block_tiles(batch.q, batch.paged, batch.layout,
                             torch.tensor([0, 2], device=device), 2, 100)
    assert torch.equal(wl.extra[[0, 2]].cpu(), want.cpu())
    assert (wl.extra[[1, 3]] == -1).all() and (wl.extra[[0, 2]] >= 0).any()
    assert torch.equal(wl.desc, plain.desc)  # the lists themselves are unchanged
    assert torch.equal(wl.tiles().cpu(),
                       plain.tiles().cpu() + (wl.extra >= 0).sum(-1).cpu())


def test_antidiagonal_rule_replaces_vertical_slash_heads_only(device):
    batch = make_batch([150, 64], [900, 64], 4, 2, 64, torch.float16, device, structured=True)
    rule = AntidiagonalRule(tau=0.8, stride=8, local_tiles=0, max_tiles=6)
    heads = [HeadPattern(VERTICAL_SLASH, 30, 50), HeadPattern(A_SHAPE, 16, 64),
             HeadPattern(VERTICAL_SLASH, 30, 50), HeadPattern(BLOCK_SPARSE, 3)]
    wl = plan_layer(batch.q, batch.paged, batch.layout,
                    LayerPatterns.from_heads(heads, device, antidiagonal=rule))
    plain = plan_layer(batch.q, batch.paged, batch.layout, LayerPatterns.from_heads(heads, device))
    per_block = antidiagonal_worklist(batch.q, batch.paged, batch.layout,
                                      torch.tensor([0, 2], device=device), 0.8, 6, 8, 1, 0)
    for b in range(batch.layout.num_seqs):
        for h, (src, row) in enumerate([(per_block, 0), (plain, 1), (per_block, 1), (plain, 3)]):
            assert torch.equal(worklist_mask(wl, batch.layout, b, h),
                               worklist_mask(src, batch.layout, b, row))
    with_extra = plan_layer(batch.q, batch.paged, batch.layout, LayerPatterns.from_heads(
        heads, device, antidiagonal=rule, extra_blocks=2))
    assert torch.equal(with_extra.desc, wl.desc)  # the same lists, plus far tiles
    assert with_extra.extra.shape == (4, batch.layout.num_blocks, 2)
    assert (with_extra.extra[[1, 3]] == -1).all()  # A-shape and Block-Sparse heads: none
    assert (with_extra.extra[[0, 2]] >= 0).any()
    shared = plan_layer(batch.q, batch.paged, batch.layout, LayerPatterns.from_heads(
        heads, device, antidiagonal=replace(rule, fa3_groups=True)))
    groups = antidiagonal_worklist(batch.q, batch.paged, batch.layout,
                                   torch.tensor([0, 2], device=device), 0.8, 6, 8, 1, 0,
                                   group_blocks=3)  # FA3's 192-row groups at head size 64
    for b in range(batch.layout.num_seqs):
        for h, row in ((0, 0), (2, 1)):
            assert torch.equal(worklist_mask(shared, batch.layout, b, h),
                               worklist_mask(groups, batch.layout, b, row))
    for bad in (dict(tau=0.0), dict(stride=5), dict(max_tiles=0), dict(columns=-1)):
        with pytest.raises(ValueError):
            AntidiagonalRule(**bad)


def test_antidiagonal_columns_add_the_estimates_top_columns(device):
    """``columns``: each Vertical-Slash block keeps its tiles and gains the top columns of
    the last-64-row estimate (PyTorch reference) up to its last row, outside its tiles;
    other heads are untouched."""
    from vllm_minference.kernels.vertical_slash.reference import (
        estimate_reference, select_vertical_slash_reference)
    batch = make_batch([150, 64], [900, 64], 4, 2, 64, torch.float32, device, structured=True)
    heads = [HeadPattern(VERTICAL_SLASH, 30, 50), HeadPattern(A_SHAPE, 16, 64),
             HeadPattern(VERTICAL_SLASH, 30, 50), HeadPattern(BLOCK_SPARSE, 3)]
    rule = dict(tau=0.8, stride=8, local_tiles=0, max_tiles=6)
    base = plan_layer(batch.q, batch.paged, batch.layout, LayerPatterns.from_heads(
        heads, device, antidiagonal=AntidiagonalRule(**rule)))
    wl = plan_layer(batch.q, batch.paged, batch.layout, LayerPatterns.from_heads(
        heads, device, antidiagonal=AntidiagonalRule(**rule, columns=40)))
    layout = batch.layout
    v, s = estimate_reference(batch.q, batch.kv, layout, [0, 2])
    cols, n_cols, _, _ = select_vertical_slash_reference(
        v.float(), s.float(), layout, torch.full((2,), 40), torch.ones(2, dtype=torch.long),
        40, 1, keep_first=30, keep_diag=1)
    cols, n_cols = cols.cpu(), n_cols.cpu()
    added = 0
    for b, (q_len, kv_len) in enumerate(zip(layout.q_lens_host, layout.kv_lens_host)):
        for h in range(4):
            got = worklist_mask(wl, layout, b, h)
            old = worklist_mask(base, layout, b, h)
            if h in (1, 3):
                assert torch.equal(got, old)
                continue
            assert not (old & ~got).any()
            top = {int(c) for c in cols[b, h // 2, :int(n_cols[b, h // 2])]}
            for r0 in range(0, q_len, 64):
                last = kv_len - q_len + min(q_len, r0 + 64) - 1
                extra = set(torch.nonzero(got[r0] & ~old[r0]).flatten().tolist())
                assert extra == {c for c in top if c <= last and not old[r0, c]}
                added += len(extra)
    assert added > 0


@pytest.mark.parametrize("mode", ["antidiagonal", "adaptive"])
def test_pinned_heads_keep_fixed_top_k_in_other_modes(device, mode):
    """``HeadPattern(fixed=True)``: a Vertical-Slash head pinned to MInference's fixed top-k
    gets exactly the fixed mode's lists while the layer's other Vertical-Slash heads use the
    mode's selection; in fixed mode the pin changes nothing."""
    batch = make_batch([150, 64], [900, 64], 4, 2, 64, torch.float16, device, structured=True)
    options = (dict(antidiagonal=AntidiagonalRule(tau=0.8, stride=8, local_tiles=0,
                                                  max_tiles=6))
               if mode == "antidiagonal" else dict(gamma=0.5))
    heads = [HeadPattern(VERTICAL_SLASH, 30, 50), HeadPattern(VERTICAL_SLASH, 40, 60),
             HeadPattern(A_SHAPE, 16, 64), HeadPattern(VERTICAL_SLASH, 30, 50, fixed=True)]
    unpinned = [HeadPattern(p.kind, p.a, p.b) for p in heads]
    layout = batch.layout

    def plan(patterns, **kw):
        return plan_layer(batch.q, batch.paged, layout,
                          LayerPatterns.from_heads(patterns, device, **kw))
    wl, in_mode, fixed = plan(heads, **options), plan(unpinned, **options), plan(unpinned)
    assert torch.equal(plan(heads).desc, fixed.desc)
    for b in range(layout.num_seqs):
        masks = [(worklist_mask(wl, layout, b, h), worklist_mask(in_mode, layout, b, h),
                  worklist_mask(fixed, layout, b, h)) for h in range(4)]
        for h in (0, 1, 2):
            assert torch.equal(masks[h][0], masks[h][1])
        assert torch.equal(masks[3][0], masks[3][2])
    # the modes do select differently for that head, so the pin is what kept its lists
    assert not all(torch.equal(worklist_mask(in_mode, layout, b, 3),
                               worklist_mask(fixed, layout, b, 3))
                   for b in range(layout.num_seqs))
    out = sparse_attention(batch.q, batch.paged, layout, wl)
    ref = masked_attention_reference(batch.q, batch.kv, layout,
                                     lambda b, h, ql, kl: worklist_mask(wl, layout, b, h))
    assert float((out.double() - ref).norm() / ref.norm()) < tolerance(torch.float16)
    with pytest.raises(ValueError, match="pinned"):
        HeadPattern(BLOCK_SPARSE, 3, fixed=True)
