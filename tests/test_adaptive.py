"""Adaptive, tile-aware Vertical-Slash selection against naive references."""

import pytest
import torch

from kernel_inputs import make_batch, tolerance
from vllm_minference.kernels import (HeadPattern, LayerPatterns, VERTICAL_SLASH,
                                     estimate_vertical_slash, plan_layer, sparse_attention)
from vllm_minference.kernels.attention.reference import masked_attention_reference, worklist_mask
from vllm_minference.kernels.vertical_slash.adaptive import (chunk_masses, select_adaptive,
                                                           union_selections)


def test_chunk_masses_match_row_counting():
    g = torch.Generator().manual_seed(0)
    kv = 300
    slash = torch.rand(1, 2, kv, generator=g)
    got = chunk_masses(slash)
    expect = torch.zeros(1, 2, got.shape[-1], dtype=torch.float64)
    for d in range(kv):
        for i in range(64):  # row i of a 64-row block sees diagonal d at relative key i - d
            rel = i - d
            c = -(rel // 64)  # chunk c holds relative keys [-64c, -64c + 64)
            expect[..., c] += slash[..., d].double() / 64
    torch.testing.assert_close(got.double(), expect, atol=1e-5, rtol=1e-5)


def _greedy(vert, slash, kv_len, gamma, keep_first, keep_diag, v_ceil, s_ceil):
    """The selection rule written out item by item (one sequence, one head)."""
    near_from = kv_len - 64 - keep_diag
    cm = chunk_masses(slash[None, None])[0, 0]
    c_forced = (keep_diag - 1) // 64 + 1
    items = []  # (key, mass, kind, index); forced items rank first
    for k in range(kv_len):
        m = float(vert[k]) if (k < keep_first or k < near_from) else 0.0
        key = 1e6 + keep_first - k if k < keep_first else 32 * m  # COLUMN_DISCOUNT 0.5
        items.append((key, m, "v", k))
    for c in range(len(cm)):
        if c * 64 < kv_len + 64:
            key = 1e6 + c_forced - c if c <= c_forced else float(cm[c])
            items.append((key, float(cm[c]), "c", c))
    cols = sorted((it for it in items if it[2] == "v"), key=lambda t: -t[0])[:v_ceil]
    chunks = sorted((it for it in items if it[2] == "c"), key=lambda t: -t[0])[:s_ceil]
    ranked = sorted(cols + chunks, key=lambda t: -t[0])
    target, acc, tau = gamma * float(vert[:kv_len].sum()), 0.0, ranked[-1][0]
    for key, m, _, _ in ranked:
        acc += m
        if acc >= target:
            tau = min(key, 1e6)  # forced items always stay
            break
    return ({i for key, _, kind, i in cols if key >= tau},
            {64 * i for key, _, kind, i in chunks if key >= tau})


@pytest.mark.parametrize("gamma", [0.5, 0.9, 1.0])
def test_selection_matches_greedy_rule(device, gamma):
    batch = make_batch([50, 64], [700, 64], 2, 1, 64, torch.float32, device)
    g = torch.Generator().manual_seed(3)
    vert = torch.rand(2, 2, 700, generator=g) ** 8  # a few heavy columns
    slash = torch.rand(2, 2, 700, generator=g) ** 8
    for b, kl in enumerate([700, 64]):
        vert[b, :, kl:] = 0
        slash[b, :, kl:] = 0
    vert = vert / vert.sum(-1, keepdim=True) * 64  # 64 estimate rows of probability
    slash = slash / slash.sum(-1, keepdim=True) * 64
    v_ceil, s_ceil = torch.tensor([40, 500]), torch.tensor([6, 100])
    cols, n_cols, diags, n_diags = select_adaptive(
        vert.to(device), slash.to(device), batch.layout, v_ceil.to(device), s_ceil.to(device),
        500, 100, gamma, keep_first=4, keep_diag=100)
    for b, kl in enumerate([700, 64]):
        for h in range(2):
            want_c, want_d = _greedy(vert[b, h], slash[b, h], kl, gamma, 4, 100,
                                     int(v_ceil[h]), int(s_ceil[h]))
            got_c = cols[b, h, : int(n_cols[b, h])].tolist()
            got_d = diags[b, h, : int(n_diags[b, h])].tolist()
            assert got_c == sorted(got_c, reverse=True) and (cols[b, h, len(got_c):] == -1).all()
            assert got_d == sorted(got_d, reverse=True) and (diags[b, h, len(got_d):] == -1).all()
            assert set(got_c) == want_c and set(got_d) == want_d
            assert len(got_c) <= v_ceil[h] and len(got_d) <= s_ceil[h]


def test_peaked_attention_keeps_only_what_holds_the_mass(device):
    """Sinks + local band + one strong far diagonal: the far chunk is found, no columns."""
    kv = 1024
    rows = torch.arange(kv - 64, kv)
    p = torch.zeros(64, kv, dtype=torch.float64)
    p[:, :4] = 0.3 / 4  # sinks
    for d in range(40):  # local band
        p[torch.arange(64), rows - d] += 0.4 / 40
    p[torch.arange(64), rows - 500] += 0.3  # 500 = 64 * 7 + 52: mostly in chunk 8
    vert = p.sum(0)[None, None].float()
    slash = torch.zeros(1, 1, kv)
    for i in range(64):
        slash[0, 0, rows[i] - torch.arange(int(rows[i]) + 1)] += p[i, : int(rows[i]) + 1].float()
    batch = make_batch([kv], [kv], 1, 1, 64, torch.float32, device)
    cols, n_cols, diags, n_diags = select_adaptive(
        vert.to(device), slash.to(device), batch.layout, torch.tensor([1000], device=device),
        torch.tensor([6096], device=device), 1000, 6096, 0.9, keep_first=30, keep_diag=100)
    assert set(diags[0, 0, : int(n_diags[0, 0])].tolist()) == {0, 64, 128, 8 * 64}
    assert int(n_cols[0, 0]) == 30  # the forced sinks only, not the far diagonal's keys
    # a lower target needs only the floors
    _, n_cols, _, n_diags = select_adaptive(
        vert.to(device), slash.to(device), batch.layout, torch.tensor([1000], device=device),
        torch.tensor([6096], device=device), 1000, 6096, 0.6, keep_first=30, keep_diag=100)
    assert int(n_diags[0, 0]) == 3 and int(n_cols[0, 0]) == 30


@pytest.mark.parametrize("q_lens,kv_lens", [([100], [100]), ([70, 130], [900, 130])])
def test_adaptive_plan_runs_what_it_names(device, q_lens, kv_lens):
    dtype = torch.float16
    batch = make_batch(q_lens, kv_lens, 4, 2, 64, dtype, device, structured=True)
    patterns = LayerPatterns.from_heads([HeadPattern(VERTICAL_SLASH, 30, 50)] * 4, device,
                                        gamma=0.8)
    wl = plan_layer(batch.q, batch.paged, batch.layout, patterns)
    ref = masked_attention_reference(batch.q, batch.kv, batch.layout,
                                     lambda b, h, ql, kl: worklist_mask(wl, batch.layout, b, h))
    out = sparse_attention(batch.q, batch.paged, batch.layout, wl)
    assert float((out.double() - ref).norm() / ref.norm()) < tolerance(dtype)
    # gamma = 1 keeps at least as much as gamma = 0.8, for every head and block
    full = plan_layer(batch.q, batch.paged, batch.layout,
                      LayerPatterns.from_heads([HeadPattern(VERTICAL_SLASH, 30, 50)] * 4, device,
                                               gamma=1.0))
    assert (full.tiles() >= wl.tiles()).all()


def test_gamma_is_checked(device):
    with pytest.raises(ValueError, match="gamma"):
        LayerPatterns.from_heads([HeadPattern(VERTICAL_SLASH, 30, 50)], device, gamma=1.5)


def test_adaptive_floors_keep_a_local_window(device):
    batch = make_batch([700], [700], 2, 1, 64, torch.float16, device, structured=True)
    heads = [HeadPattern(VERTICAL_SLASH, 30, 50)] * 2
    small = plan_layer(batch.q, batch.kv, batch.layout,
                       LayerPatterns.from_heads(heads, device, gamma=0.5))
    wide = plan_layer(batch.q, batch.kv, batch.layout,
                      LayerPatterns.from_heads(heads, device, gamma=0.5, keep_first=128,
                                               keep_diag=512))
    assert (wide.tiles() >= small.tiles()).all()
    # every block sees its 512 nearest keys and the first 128 keys
    for h in range(2):
        keys = worklist_mask(wide, batch.layout, 0, h)
        for row in (63, 300, 699):
            assert keys[row, max(0, row - 511):row + 1].all() and keys[row, :min(128, row + 1)].all()
    with pytest.raises(ValueError, match="keep_diag"):
        LayerPatterns.from_heads(heads, device, gamma=0.5, keep_diag=0)


def test_union_of_selections_is_sorted_without_repeats(device):
    a = (torch.tensor([[[9, 5, 2, -1]]]), torch.tensor([[3]]),
         torch.tensor([[[128, 64, 0, -1]]]), torch.tensor([[3]]))
    b = (torch.tensor([[[7, 5, -1]]]), torch.tensor([[2]]),
         torch.tensor([[[100, 64, 3]]]), torch.tensor([[3]]))
    cols, n_cols, diags, n_diags = union_selections(
        tuple(x.to(device) for x in a), tuple(x.to(device) for x in b))
    assert cols.shape[-1] == 7 and diags.shape[-1] == 7  # fixed widths: the sum
    assert cols[0, 0].tolist() == [9, 7, 5, 2, -1, -1, -1] and int(n_cols[0, 0]) == 4
    assert diags[0, 0].tolist() == [128, 100, 64, 3, 0, -1, -1] and int(n_diags[0, 0]) == 5


def test_adaptive_floor_holds_the_fixed_selection(device):
    """With ``floor_scale``, every key the fixed rule at that scale computes is computed, and
    the work list runs exactly what it names."""
    dtype = torch.float16
    batch = make_batch([130, 70], [900, 130], 4, 2, 64, dtype, device, structured=True)
    heads = [HeadPattern(VERTICAL_SLASH, 400, 600)] * 4
    floor = plan_layer(batch.q, batch.paged, batch.layout,
                       LayerPatterns.from_heads(heads, device, gamma=0.3, floor_scale=0.25))
    fixed = plan_layer(batch.q, batch.paged, batch.layout,
                       LayerPatterns.from_heads([HeadPattern(VERTICAL_SLASH, 100, 150)] * 4,
                                                device))
    plain = plan_layer(batch.q, batch.paged, batch.layout,
                       LayerPatterns.from_heads(heads, device, gamma=0.3))
    for b in range(2):
        for h in range(4):
            want = worklist_mask(fixed, batch.layout, b, h) | worklist_mask(plain, batch.layout, b, h)
            got = worklist_mask(floor, batch.layout, b, h)
            assert bool((got | ~want).all()), (b, h)
    ref = masked_attention_reference(batch.q, batch.kv, batch.layout,
                                     lambda b, h, ql, kl: worklist_mask(floor, batch.layout, b, h))
    out = sparse_attention(batch.q, batch.paged, batch.layout, floor)
    assert float((out.double() - ref).norm() / ref.norm()) < tolerance(dtype)
    with pytest.raises(ValueError, match="floor_scale"):
        LayerPatterns.from_heads(heads, device, gamma=0.5, floor_scale=2.0)
    # fixed mode ignores it (the floor is the fixed rule already)
    assert LayerPatterns.from_heads(heads, device, floor_scale=0.5).floor_scale == 0.0
