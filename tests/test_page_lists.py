"""Page lists for FA3: block tables against a naive reading of the work lists, and the
attention (FA3 emulated on CPU; the real FA3 too when a GPU and vLLM are there) against
plain masked attention over the same key sets."""

import pytest
import torch

from conftest import kernel_dtypes
from kernel_inputs import hnd_cache, make_batch, random_worklist, tolerance
from vllm_minference.kernels import dense_worklist
from vllm_minference.kernels.attention.reference import masked_attention_reference
from vllm_minference.kernels.page_lists import PageGeometry, group_rows, page_list_attention
from vllm_minference.kernels.page_lists.index import (SUB, compact_pages, long_run_flags,
                                                     mark_pages, short_chunk_index)
from vllm_minference.kernels.page_lists.reference import (emulate_fa3_varlen, group_split,
                                                         group_sub_pages, page_list_mask,
                                                         run_lengths)

SHAPES = [
    # q_lens, kv_lens, heads, kv_heads, head_dim
    ([100], [100], 4, 2, 64),          # one sequence, not a multiple of 64
    ([37], [37], 2, 2, 128),           # shorter than a block, head_dim 128
    ([64, 130, 5], [64, 200, 77], 4, 1, 64),  # varlen batch, q_len < kv_len, MQA
    ([200], [333], 4, 2, 128),         # chunk at the end of a longer sequence, two groups
]


def _varlen_fns(device):
    fns = [("emulated", emulate_fa3_varlen)]
    if device == "cuda":
        try:
            from vllm.vllm_flash_attn import flash_attn_varlen_func
            fns.append(("fa3", flash_attn_varlen_func))
        except ImportError:
            pass
    return fns


def with_extra_tiles(wl, layout, width, seed):
    """``wl`` plus random aligned extra tiles per (head, block), some before the block,
    some repeating listed keys, some -1 (as :func:`extra_block_tiles` may give)."""
    g = torch.Generator().manual_seed(seed)
    last = layout.block_last_pos().cpu()
    H, NB = wl.desc.shape[:2]
    extra = torch.full((H, NB, width), -1, dtype=torch.int32)
    for h in range(H):
        for i in range(NB):
            n_tiles = int(last[i]) // 64 + 1
            n = int(torch.randint(0, width + 1, (1,), generator=g))
            extra[h, i, :n] = torch.randint(0, n_tiles, (n,), generator=g) * 64
    wl.extra = extra.to(wl.desc.device)
    return wl


def _rel_err(out, ref):
    return float((out.double() - ref).norm() / ref.norm().clamp_min(1e-12))


@pytest.mark.parametrize("page_size", [16, 64])
@pytest.mark.parametrize("rows_per_group", [64, 128, 192])
@pytest.mark.parametrize("q_lens,kv_lens,h,hkv,d", SHAPES[2:])
@pytest.mark.parametrize("min_blocks", [1, 2])
def test_block_table_lists_the_naive_sub_pages(device, page_size, rows_per_group, q_lens,
                                               kv_lens, h, hkv, d, min_blocks):
    batch = make_batch(q_lens, kv_lens, h, hkv, d, torch.float16, device, page_size=page_size)
    layout, bt = batch.layout, batch.paged.block_table
    wl = random_worklist(layout, h, seed=7)
    if page_size == 64:  # and once with extra tiles
        wl = with_extra_tiles(wl, layout, 3, seed=rows_per_group)
    geo = PageGeometry.build(layout, h, rows_per_group)
    planes, bpg = geo.bitmap_planes(min_blocks), rows_per_group // 64
    assert planes == (bpg + 1 if min_blocks > 1 else 1)
    per_block = bpg if min_blocks > 1 else 0
    slices = geo.slices(table_bytes=(4 + 5 * per_block + planes) * geo.width * 3,
                        planes=planes, block_tables=per_block)  # three rows a slice
    assert len(slices) > 1 and all(r1 - r0 == 3 for r0, r1 in slices[:-1])
    spp = page_size // SUB
    bt_cpu = bt.cpu()
    g_seq, g_m, g_nblk = geo.g_seq.tolist(), geo.g_m.tolist(), geo.g_nblk.tolist()

    def logical(b, hh, sub_ids):
        out = []
        for sid in sub_ids:
            rest, s_in = divmod(sid, spp)
            phys, kvh = divmod(rest, hkv)
            assert kvh == hh // (h // hkv)
            lp = int((bt_cpu[b] == phys).nonzero()[0, 0])
            out.append(lp * spp + s_in)
        return out

    fewer = 0  # groups whose pages the rule made smaller than the union
    for r0, r1 in slices:
        n = r1 - r0
        bits = torch.empty(n, planes, geo.width, dtype=torch.int8, device=device)
        table = torch.full((n, geo.width), -1, dtype=torch.int32, device=device)
        used = torch.empty(n, dtype=torch.int32, device=device)
        table_b = torch.full((n * bpg, geo.width), -1, dtype=torch.int32, device=device)
        used_b = torch.full((n * bpg,), -1, dtype=torch.int32, device=device)
        cover = torch.full((n * bpg, geo.width), -1, dtype=torch.int8, device=device)
        mark_pages(bits, geo, layout, wl, r0, r1)
        compact_pages(bits, table, used, geo, layout, bt, page_size, hkv, r0, r1, min_blocks,
                      table_b, used_b, cover)
        for r in range(r0, r1):
            hh, g = divmod(r, geo.num_groups)
            b, gm = g_seq[g], g_m[g]
            want, own = group_split(wl, layout, rows_per_group, b, hh, gm,
                                    min_blocks=min_blocks)
            fewer += len(want) < len(group_sub_pages(wl, layout, rows_per_group, b, hh, gm))
            assert logical(b, hh, table[r - r0, :len(want)].cpu().tolist()) == want
            q_len, kv_len = layout.q_lens_host[b], layout.kv_lens_host[b]
            g_last = kv_len - q_len + min((gm + 1) * rows_per_group, q_len) - 1
            assert int(used[r - r0]) == (len(want) - 1) * SUB + g_last % SUB + 1
            if min_blocks == 1:
                assert all(o == [] for o in own)
                assert bits[r - r0, 0].nonzero().flatten().tolist() == want  # the Triton
                continue  # pass's bitmap
            for j in range(bpg):
                mine = own[j] if j < g_nblk[g] else []
                k = (r - r0) * bpg + j
                assert int(used_b[k]) == len(mine) * SUB
                assert logical(b, hh, table_b[k, :len(mine)].cpu().tolist()) == mine
                # block j's bitmap for the Triton pass: the group's pages and its own
                covered = cover[k, :want[-1] + 1].nonzero().flatten().tolist()  # written up to
                assert covered == sorted(set(want) | set(mine))  # the group's last row
    assert fewer == 0 or min_blocks > 1 and rows_per_group > 64  # where the rule may bite


@pytest.mark.parametrize("dtype", kernel_dtypes())
@pytest.mark.parametrize("q_lens,kv_lens,h,hkv,d", SHAPES)
def test_attention_equals_masked_reference(device, dtype, q_lens, kv_lens, h, hkv, d):
    batch = make_batch(q_lens, kv_lens, h, hkv, d, dtype, device, page_size=64, seed=3)
    wl = random_worklist(batch.layout, h, seed=5)
    if len(q_lens) > 1 or q_lens != kv_lens:  # extra tiles on the longer cases
        wl = with_extra_tiles(wl, batch.layout, 2, seed=9)
    cache = hnd_cache(batch.paged)
    for rows in sorted({64, group_rows(d)}):
        ref = masked_attention_reference(
            batch.q, batch.kv, batch.layout,
            lambda b, hh, ql, kl: page_list_mask(wl, batch.layout, rows, b, hh))
        geo = PageGeometry.build(batch.layout, h, rows)
        for name, fn in _varlen_fns(device):
            if name == "fa3" and dtype == torch.float32:
                continue  # FA3 takes fp16/bf16 only
            out = torch.full_like(batch.q, float("nan"))
            page_list_attention(batch.q, cache, batch.paged.block_table, batch.layout, wl,
                                out=out, geometry=geo, varlen_fn=fn,
                                table_bytes=5 * geo.width * 2)
            assert _rel_err(out, ref) < tolerance(dtype), (name, rows)


@pytest.mark.parametrize("dtype", kernel_dtypes())
def test_antidiagonal_tiles_with_columns_equal_masked_reference(device, dtype):
    """Antidiagonal lists with the estimate's columns (``antidiagonal_columns``), as the
    plugin plans them: the tiles go to the page lists, the columns to the Triton pass."""
    from vllm_minference.kernels import (VERTICAL_SLASH, AntidiagonalRule, HeadPattern,
                                         LayerPatterns, plan_layer)
    batch = make_batch([150, 64], [700, 64], 4, 2, 64, dtype, device, page_size=64, seed=2,
                       structured=True)
    rule = AntidiagonalRule(tau=0.8, stride=8, local_tiles=0, max_tiles=8, columns=48)
    wl = plan_layer(batch.q, batch.paged, batch.layout, LayerPatterns.from_heads(
        [HeadPattern(VERTICAL_SLASH, 30, 50)] * 4, device, antidiagonal=rule))
    assert int(wl.desc[..., 4].sum()) > 0  # some columns outside the tiles
    rows = group_rows(64)
    ref = masked_attention_reference(
        batch.q, batch.kv, batch.layout,
        lambda b, hh, ql, kl: page_list_mask(wl, batch.layout, rows, b, hh))
    for name, fn in _varlen_fns(device):
        if name == "fa3" and dtype == torch.float32:
            continue  # FA3 takes fp16/bf16 only
        out = page_list_attention(batch.q, hnd_cache(batch.paged), batch.paged.block_table,
                                  batch.layout, wl, varlen_fn=fn)
        assert _rel_err(out, ref) < tolerance(dtype), name


@pytest.mark.parametrize("dtype", kernel_dtypes())
def test_dense_list_equals_causal_attention(device, dtype):
    """A dense work list through page lists is plain causal attention (no columns at all)."""
    batch = make_batch([150, 64], [300, 64], 4, 2, 64, dtype, device, page_size=16, seed=1)
    ref = masked_attention_reference(batch.q, batch.kv, batch.layout)
    out = page_list_attention(batch.q, hnd_cache(batch.paged), batch.paged.block_table,
                              batch.layout, dense_worklist(batch.layout, 4),
                              varlen_fn=emulate_fa3_varlen)
    assert _rel_err(out, ref) < tolerance(dtype)


def test_stats_count_the_keys_fa3_computes_and_time_stages_on_a_gpu(device):
    """Benchmarks read ``stats``: FA3's query-row x key count (a dense list: at least the
    causal area, at most whole groups over whole sub-pages) and, on a GPU, the stage times."""
    h, rows = 4, 64
    batch = make_batch([150, 64], [300, 64], h, 2, 64, torch.float16, device, page_size=16,
                       seed=1)
    stats: dict = {}
    page_list_attention(batch.q, hnd_cache(batch.paged), batch.paged.block_table, batch.layout,
                        dense_worklist(batch.layout, h),
                        geometry=PageGeometry.build(batch.layout, h, rows),
                        varlen_fn=emulate_fa3_varlen, stats=stats)
    causal = h * batch.layout.causal_keys()
    whole = h * (150 * 304 + 64 * 64)  # every row over its sequence's sub-pages
    assert causal <= int(stats["key_rows"]) <= whole
    if device == "cuda":
        assert set(stats["stage_ms"]) == {"gather", "tables", "fa3", "columns", "stats"}
        assert all(v >= 0 for v in stats["stage_ms"].values())
    else:
        assert "stage_ms" not in stats
    counted: dict = {}  # the serving trace's form: the count, no stage times (no GPU wait)
    page_list_attention(batch.q, hnd_cache(batch.paged), batch.paged.block_table, batch.layout,
                        dense_worklist(batch.layout, h),
                        geometry=PageGeometry.build(batch.layout, h, rows),
                        varlen_fn=emulate_fa3_varlen, stats=counted, stage_times=False)
    assert set(counted) == {"key_rows"} and int(counted["key_rows"]) == int(stats["key_rows"])


def test_long_run_flags_match_the_naive_runs(device):
    g = torch.Generator().manual_seed(4)
    starts = torch.randint(-5, 5, (300,), generator=g).cumsum(0) * 64  # runs of +64 steps
    starts[::7] += 3  # and breaks
    chunks = torch.stack([starts, starts], 1).to(torch.int32).to(device)
    runs = run_lengths(chunks.cpu())
    assert max(runs) > 2
    for min_run in (1, 2, 3):
        want = [int(r >= min_run) for r in runs]
        assert long_run_flags(chunks, min_run).cpu().tolist() == want


def test_short_chunk_index_packs_each_segments_short_chunks(device):
    g = torch.Generator().manual_seed(5)
    flags = (torch.rand(200, generator=g) < 0.6).to(torch.int8).to(device)
    index, before = short_chunk_index(flags)
    short = [i for i, f in enumerate(flags.cpu().tolist()) if f == 0]
    assert before.cpu().tolist() == [sum(1 for i in short if i < c) for c in range(201)]
    assert index[:len(short)].cpu().tolist() == short
    for c, n in [(0, 200), (17, 40), (150, 50), (60, 0)]:  # any segment of the pool
        got = index[int(before[c]):int(before[c + n])].cpu().tolist()
        assert got == [i for i in short if c <= i < c + n]


@pytest.mark.parametrize("dtype", kernel_dtypes())
@pytest.mark.parametrize("q_lens,kv_lens,h,hkv,d", SHAPES[2:])
def test_min_blocks_equals_masked_reference(device, dtype, q_lens, kv_lens, h, hkv, d):
    """min_blocks > 1: sub-pages that fewer blocks of a row group list go to each block's own
    FA3 pages (with min_run too: short runs on the Triton pass); keys counted once, and FA3
    computes fewer keys than over the union."""
    batch = make_batch(q_lens, kv_lens, h, hkv, d, dtype, device, page_size=64, seed=10)
    layout = batch.layout
    wl = with_extra_tiles(random_worklist(layout, h, seed=11), layout, 2, seed=12)
    cache = hnd_cache(batch.paged)
    rows = group_rows(d)
    union = [page_list_mask(wl, layout, rows, b, hh) for b in range(layout.num_seqs)
             for hh in range(h)]
    key_rows = {}
    for min_run, min_blocks in ((1, 1), (1, 2), (1, 3), (2, 2)):
        masks = [page_list_mask(wl, layout, rows, b, hh, min_run, min_blocks)
                 for b in range(layout.num_seqs) for hh in range(h)]
        if min_blocks > 1:  # the rule leaves some rows fewer keys than the union
            assert any(not torch.equal(m, u) for m, u in zip(masks, union))
        ref = masked_attention_reference(batch.q, batch.kv, layout,
                                         lambda b, hh, ql, kl: masks[b * h + hh])
        for name, fn in _varlen_fns(device):
            if name == "fa3" and dtype == torch.float32:
                continue
            stats: dict = {}
            out = page_list_attention(batch.q, cache, batch.paged.block_table, layout, wl,
                                      varlen_fn=fn, min_run=min_run, min_blocks=min_blocks,
                                      stats=stats, stage_times=False)
            assert _rel_err(out, ref) < tolerance(dtype), (name, min_run, min_blocks)
            key_rows[min_run, min_blocks] = int(stats["key_rows"])
    assert key_rows[1, 3] <= key_rows[1, 2] < key_rows[1, 1]
    assert key_rows[2, 2] <= key_rows[1, 2]


@pytest.mark.parametrize("dtype", kernel_dtypes())
@pytest.mark.parametrize("q_lens,kv_lens,h,hkv,d", SHAPES[2:])
@pytest.mark.parametrize("page_size", [16, 64])
def test_short_runs_on_triton_equal_masked_reference(device, dtype, q_lens, kv_lens, h, hkv,
                                                     d, page_size):
    """min_run > 1: chunks of short runs go through the Triton pass, keys counted once
    (64-key pages: two block-table loads per chunk; 16-key pages: one per key)."""
    batch = make_batch(q_lens, kv_lens, h, hkv, d, dtype, device, page_size=page_size, seed=8)
    wl = random_worklist(batch.layout, h, seed=9)
    cache = hnd_cache(batch.paged)
    rows = group_rows(d)
    for min_run in (2, 1000):
        ref = masked_attention_reference(
            batch.q, batch.kv, batch.layout,
            lambda b, hh, ql, kl: page_list_mask(wl, batch.layout, rows, b, hh, min_run))
        for name, fn in _varlen_fns(device):
            if name == "fa3" and dtype == torch.float32:
                continue
            out = page_list_attention(batch.q, cache, batch.paged.block_table, batch.layout,
                                      wl, varlen_fn=fn, min_run=min_run)
            assert _rel_err(out, ref) < tolerance(dtype), (name, min_run)


def test_rejects_a_cache_not_in_hnd_order(device):
    batch = make_batch([64], [64], 4, 2, 64, torch.float16, device, page_size=16)
    nhd = torch.cat([batch.paged.key, batch.paged.value], dim=-1).transpose(1, 2)  # a view
    with pytest.raises(ValueError, match="HND"):
        page_list_attention(batch.q, nhd, batch.paged.block_table, batch.layout,
                            dense_worklist(batch.layout, 4), varlen_fn=emulate_fa3_varlen)
