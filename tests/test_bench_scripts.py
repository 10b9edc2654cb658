"""The GPU benchmark scripts' CPU-side logic: prompts, YaRN settings and result pairing."""

import json
import random
import re
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import bench_accuracy  # noqa: E402
import bench_ttft  # noqa: E402
import summarize_results  # noqa: E402


class WordTokenizer:
    """Digits one token each (as Qwen's tokenizer does), words and punctuation one each."""

    def encode(self, text, add_special_tokens=False):
        return re.findall(r"\d|\w+|[^\w\s]", text)


def test_accuracy_prompts_fit_their_length_and_hold_the_answer():
    tok = WordTokenizer()
    items = bench_accuracy.build_suite(tok, [2048, 4096], [0, 50, 100], [0, 1], [4096], 2)
    assert len(items) == 2 * 3 * 2 + 4 * 2
    for it in items:
        n = len(tok.encode(it["prompt"]))
        assert 0.9 * it["length"] <= n <= it["length"], (it["task"], n)
        for e in it["expect"]:
            assert e in it["prompt"]
    again = bench_accuracy.build_suite(tok, [2048, 4096], [0, 50, 100], [0, 1], [4096], 2)
    assert [a["prompt"] for a in again] == [a["prompt"] for a in items]  # fixed seeds
    assert {it["task"] for it in items} == set(bench_accuracy.TASKS)  # what --tasks offers


def test_later_ruler_samples_are_new_prompts_that_extend_a_run():
    """``--ruler-first-sample 2`` builds samples 2 and 3: the ones a 4-sample run would have
    built after the first two, none of which a 2-sample run already had."""
    tok = WordTokenizer()
    first = bench_accuracy.build_suite(tok, [], [], [], [4096], 2)
    later = bench_accuracy.build_suite(tok, [], [], [], [4096], 2, ruler_first=2)
    whole = bench_accuracy.build_suite(tok, [], [], [], [4096], 4)
    assert sorted({it["seed"] for it in later}) == [2, 3]
    assert {it["prompt"] for it in first}.isdisjoint(it["prompt"] for it in later)
    key = lambda it: (it["task"], it["seed"], it["prompt"])  # noqa: E731
    assert sorted(map(key, first + later)) == sorted(map(key, whole))


def test_accuracy_prompts_at_the_rope_limit_leave_room_for_the_answer():
    """A 131K prompt + its answer ran past YaRN x4's 131072 positions and killed vLLM's
    engine (device-side assert, H100): prompts at the limit are built shorter."""
    tok = WordTokenizer()
    limit = 8192
    items = bench_accuracy.build_suite(tok, [limit], [50], [0], [limit], 1, max_len=limit)
    for it in items:
        assert it["length"] == limit  # still labelled by the requested length
        assert len(tok.encode(it["prompt"])) + it["max_tokens"] <= limit, it["task"]


def test_passkey_depth_places_the_needle():
    pm = bench_accuracy.PromptMaker(WordTokenizer())
    early = bench_accuracy.passkey(pm, 4000, 0.1, random.Random(0))["prompt"]
    late = bench_accuracy.passkey(pm, 4000, 0.9, random.Random(0))["prompt"]
    assert early.index("The pass key is") < len(early) * 0.2
    assert late.index("The pass key is") > len(late) * 0.8


def test_score_counts_expected_items():
    assert bench_accuracy.score("keys 123 and 456", ["123", "456", "789"]) == pytest.approx(2 / 3)


@pytest.mark.parametrize("longest,factor", [(32768, None), (131072, 4.0), (1048576, 32.0)])
def test_yarn_factor_covers_the_prompt(longest, factor):
    got = bench_ttft.yarn_overrides(longest + 64, longest)
    if factor is None:
        assert got == {}
    else:
        assert got["rope_parameters"]["factor"] == factor
        assert got["max_position_embeddings"] == longest + 64


def _ttft(mode, tp, n, s, config=None):
    return dict(kind="ttft", mode=mode, tp=tp, model="real", layers=24, seq_len=n, seconds=s,
                runs=3, config=config or {})


def test_ttft_rows_pair_each_mode_with_dense_of_the_same_shape():
    raw = [_ttft("dense", 1, 1024, 2.0), _ttft("adaptive", 1, 1024, 0.5),
           _ttft("dense", 2, 1024, 1.0), _ttft("adaptive", 2, 1024, 2.0),
           _ttft("fixed", 1, 2048, 1.0)]  # no dense row at 2048: not paired
    rows = summarize_results.pair_ttft(raw)
    assert [(r["tp"], r["speedup"]) for r in rows] == [(1, 4.0), (2, 0.5)]


def test_ttft_rows_pair_with_dense_of_their_own_lease(tmp_path):
    """Two machine leases timed the same shape: each row pairs with its own lease's dense."""
    import json
    (tmp_path / "L1-ttft.json").write_text(json.dumps(
        [_ttft("dense", 1, 1024, 2.0), _ttft("adaptive", 1, 1024, 1.0)]))
    (tmp_path / "L2-ttft_more.json").write_text(json.dumps(
        [_ttft("fixed", 1, 1024, 1.5), _ttft("dense", 1, 1024, 3.0)]))
    (tmp_path / "ttft.json").write_text(json.dumps([_ttft("fixed", 1, 1024, 2.0)]))
    raw = [r for f in sorted(tmp_path.glob("*.json"))
           for r in summarize_results.load_tagged(str(f))]
    assert summarize_results.lease_of("L12-x.json") == "L12"
    assert summarize_results.lease_of("Lx-x.json") is None
    rows = summarize_results.pair_ttft(raw)
    # L1 pairs with 2.0, L2 with 3.0, the untagged file with the last dense row seen
    assert sorted((r["mode"], r["speedup"]) for r in rows) == [
        ("adaptive", 2.0), ("fixed", 1.5), ("fixed", 2.0)]
    # a lease without its own dense row pairs with another's, and the table says so
    (tmp_path / "L3-ttft.json").write_text(json.dumps([_ttft("fixed", 1, 1024, 1.2)]))
    rows = summarize_results.pair_ttft(
        raw + summarize_results.load_tagged(str(tmp_path / "L3-ttft.json")))
    flagged = [summarize_results.other_lease(r) for r in rows]
    assert sorted(flagged) == ["", "", " (dense of L2)", " (dense of L2)"]  # untagged, L3


def test_ttft_rows_pair_within_the_same_prefill_chunk():
    """The prefill chunk (vLLM's max_num_batched_tokens) is shared by both backends: a
    64K-chunk row pairs with the 64K-chunk dense row, not the default one."""
    raw = [_ttft("dense", 1, 1024, 2.0), dict(_ttft("dense", 1, 1024, 1.6),
                                              max_num_batched_tokens=65536),
           dict(_ttft("adaptive", 1, 1024, 0.4), max_num_batched_tokens=65536),
           _ttft("adaptive", 1, 1024, 1.0)]
    rows = summarize_results.pair_ttft(raw)
    assert sorted((r["max_num_batched_tokens"] or 0, r["speedup"]) for r in rows) == [
        (0, 2.0), (65536, 4.0)]


def test_output_agreement_reports_the_first_divergence():
    def out(mode, tp, ids):
        return dict(kind="outputs", mode=mode, tp=tp, seq_len=100, token_ids=ids)
    rows = summarize_results.output_agreement(
        [out("adaptive", 1, [1, 2, 3]), out("adaptive", 2, [1, 2, 3]), out("dense", 1, [1, 9, 3])])
    got = {(r["a"], r["b"]): (r["identical"], r["first_divergence"]) for r in rows}
    assert got[("adaptive tp1", "adaptive tp2")] == (True, None)
    assert got[("adaptive tp1", "dense tp1")] == (False, 1)
    assert ("adaptive tp2", "dense tp1") not in got  # neither the same mode nor the same tp


def test_accuracy_rows_average_seeds_against_dense():
    def r(mode, cfg, seed, score):
        return dict(task="passkey", length=8192, depth=50, seed=seed, score=score, mode=mode,
                    config=cfg)
    raw = [r("dense", {}, 0, 1.0), r("dense", {}, 1, 1.0),
           r("adaptive", {"mode": "adaptive", "gamma": 0.8}, 0, 1.0),
           r("adaptive", {"mode": "adaptive", "gamma": 0.8}, 1, 0.0)]
    (row,) = summarize_results.pair_accuracy(raw)
    assert row["dense"] == 100.0 and row["minference"] == 50.0 and row["gamma"] == 0.8
    # the same settings in 64K prefill chunks: a column of its own
    raw.append(dict(r("adaptive", {"mode": "adaptive", "gamma": 0.8}, 0, 1.0),
                    max_num_batched_tokens=65536))
    rows = summarize_results.pair_accuracy(raw)
    assert sorted((row["label"], row["minference"]) for row in rows) == [
        ("adaptive γ=0.8", 50.0), ("adaptive γ=0.8 max_num_batched_tokens=65536", 100.0)]


def test_paired_changes_count_prompts_against_the_same_dense_prompt():
    def r(mode, seed, score, task="multivalue"):
        return dict(task=task, length=131072, depth=None, seed=seed, score=score, mode=mode,
                    config={} if mode == "dense" else {"mode": mode})
    raw = [r("dense", 0, 0.5), r("dense", 1, 0.75), r("dense", 2, 1.0),
           r("fixed", 0, 0.75), r("fixed", 1, 0.5), r("fixed", 2, 0.5), r("fixed", 3, 1.0)]
    (c,) = summarize_results.paired_changes(raw)  # seed 3 has no dense prompt: not counted
    assert (c["label"], c["better"], c["worse"], c["prompts"]) == ("fixed", 1, 2, 3)
    # a second run of prompts 0 and 1 (another suite in the folder): each prompt counts once,
    # at its mean (prompt 0: 0.75 and 0.25 -> 0.5, a tie; prompt 1: 0.5 both times)
    raw += [r("fixed", 0, 0.25), r("fixed", 1, 0.5), r("dense", 1, 0.75)]
    (c,) = summarize_results.paired_changes(summarize_results.prompt_means(raw))
    assert (c["better"], c["worse"], c["prompts"]) == (0, 2, 3)
    (row,) = summarize_results.pair_accuracy(summarize_results.prompt_means(raw))
    assert row["dense"] == 75.0 and row["minference"] == 62.5 and row["n"] == 4  # 58.3 / 6


def test_a_second_dense_backend_is_compared_with_flash_attn(tmp_path):
    """TRITON_ATTN's dense rows are the noise floor: a configuration against FLASH_ATTN's,
    never mixed into the reference they are compared with."""
    def r(backend, seed, score):
        return dict(task="multivalue", length=131072, depth=None, seed=seed, score=score,
                    mode="dense", backend=backend, config={})
    (tmp_path / "L1-acc.json").write_text(json.dumps(
        [r("FLASH_ATTN", 0, 1.0), r("FLASH_ATTN", 1, 0.5),
         r("TRITON_ATTN", 0, 0.5), r("TRITON_ATTN", 1, 0.5)]))
    raw = summarize_results.load_tagged(str(tmp_path / "L1-acc.json"))
    (c,) = summarize_results.paired_changes(summarize_results.prompt_means(raw))
    assert (c["label"], c["better"], c["worse"], c["prompts"]) == ("dense:TRITON_ATTN", 0, 1, 2)
    (row,) = summarize_results.pair_accuracy(raw)
    assert row["dense"] == 75.0 and row["minference"] == 50.0


def test_stage_table_reads_fa3_speed_from_the_stages():
    row = dict(q_heads=32, kv_heads=8, head_dim=128, seq_len=131072, layers=[3, 9],
               density=0.365, page_density=0.4, dense_ms=200.0, attn_ms=110.0,
               fa3_stages_ms={"gather": 2.0, "tables": 1.0, "fa3": 100.0, "columns": 4.0})
    assert summarize_results.stage_table([dict(row, fa3_stages_ms=None)]) == ""
    last = summarize_results.stage_table([row]).splitlines()[-1]
    assert last == ("| triton | 32/8 d128 | 128K | 3,9 | 0.365 | 0.400 | 200.0 | 2.0 | 1.0 | "
                    "100.0 | 4.0 | 107.0 | 110.0 | 0.80 |")
    last = summarize_results.stage_table([dict(row, kernel="fa3", lease="L2")]).splitlines()[-1]
    assert last.startswith("| fa3 (L2) | 32/8 d128 |")


def test_kernel_tables_keep_each_lease_apart(tmp_path, monkeypatch):
    """Kernel files of several leases (each may hold another build of one kernel label) give
    a row per lease; one lease's files are averaged as before."""
    monkeypatch.setattr(summarize_results, "RESULTS", str(tmp_path / "out"))
    raw = tmp_path / "raw"
    raw.mkdir()

    def kernels(attn_ms):
        row = dict(input="real", pattern="vertical_slash", kernel="fa3", seq_len=131072,
                   q_heads=32, kv_heads=8, head_dim=128, density=0.365, dense_ms=200.0,
                   estimate_ms=1.0, index_ms=1.0, attn_ms=attn_ms, total_ms=attn_ms + 2.0,
                   speedup=200.0 / (attn_ms + 2.0), efficiency=0.365 * 200.0 / (attn_ms + 2.0))
        return json.dumps(dict(device="GPU", torch="2.11", rows=[row]))
    (raw / "L1-A-kernels.json").write_text(kernels(108.0))
    (raw / "L2-B-kernels.json").write_text(kernels(98.0))
    monkeypatch.setattr(sys, "argv", ["summarize_results.py", str(raw), "--device", "x"])
    summarize_results.main()
    md = (tmp_path / "out" / "RESULTS-x.md").read_text()
    assert "| fa3 (L1) | 32/8 d128 | 128K | 0.365 | 200.0 | 1.00 | 1.00 | 108.0 |" in md
    assert "| fa3 (L2) | 32/8 d128 | 128K | 0.365 | 200.0 | 1.00 | 1.00 | 98.0 |" in md
    (raw / "L2-B-kernels.json").rename(raw / "L1-B-kernels.json")  # one lease: averaged
    summarize_results.main()
    md = (tmp_path / "out" / "RESULTS-x.md").read_text()
    assert "| fa3 | 32/8 d128 | 128K | 0.365 | 200.0 | 1.00 | 1.00 | 103.0 |" in md


def test_recall_study_key_sets_match_the_index_builder(device):
    """The study's torch reading of a selection equals what the kernels' work list computes."""
    import torch
    import recall_study
    from kernel_inputs import make_batch
    from vllm_minference.kernels import (build_vertical_slash_worklist, estimate_vertical_slash,
                                         select_vertical_slash)
    from vllm_minference.search import worklist_block_keys
    N, H = 700, 2
    batch = make_batch([N], [N], H, 1, 64, torch.float32, device, structured=True)
    vert, slash = estimate_vertical_slash(batch.q, batch.kv, batch.layout,
                                          torch.arange(H, device=device))
    budget = torch.tensor([40, 90], device=device)
    sel = select_vertical_slash(vert, slash, batch.layout, budget, budget, 90, 90,
                                keep_first=4, keep_diag=3)
    blocks = [0, 3, 7, 10]
    ours = recall_study.block_keys([x.cpu() for x in sel], batch.layout, blocks, H, N)
    wl = build_vertical_slash_worklist(*sel, batch.layout)
    theirs = worklist_block_keys(wl, batch.layout, torch.tensor(blocks)).cpu()
    last = torch.tensor([min(N - 1, b * 64 + 63) for b in blocks])
    theirs &= torch.arange(N)[None, None, :] <= last[None, :, None]
    assert torch.equal(ours, theirs)


def test_recall_study_part_floors_add_only_their_half_of_the_fixed_budget():
    """``--part-floors``: the adaptive selection plus MInference's columns alone keeps the
    adaptive diagonals and at least the fixed columns; plus its diagonals alone, the reverse."""
    import torch
    import recall_study
    from vllm_minference.kernels import SeqLayout
    g = torch.Generator().manual_seed(0)
    N, H = 20000, 2
    layout = SeqLayout.from_lengths([64], [N], "cpu")
    v, s = (torch.rand(1, H, N, generator=g) ** 8 for _ in range(2))
    fns = recall_study.rules([0.9, 0.95, 0.99], part_floors=True)
    # one gamma is enough: its variants are those the middle of three gammas gets
    one = recall_study.rules([0.95], part_floors=True)
    assert {n for n in fns if "0.95" in n} <= set(one)
    base = fns["A-shape floor only (128 + 1024)"](v, s, layout, H)
    ad = recall_study.rules([0.9, 0.95, 0.99])["adaptive g=0.95 + A-shape floor"](v, s, layout, H)
    cols = fns["adaptive g=0.95 + A-shape floor + fixed columns part floor"](v, s, layout, H)
    diags = fns["adaptive g=0.95 + A-shape floor + fixed diagonals part floor"](v, s, layout, H)
    def lines(sel, kind, h):  # kind 0: columns, 2: diagonals
        return set(sel[kind][0, h, :int(sel[kind + 1][0, h])].tolist())
    for h in range(H):
        assert len(lines(cols, 0, h)) >= 1000 and lines(ad, 0, h) <= lines(cols, 0, h)
        extra = lines(cols, 2, h) - lines(ad, 2, h)  # only the always-kept nearest diagonals
        assert lines(ad, 2, h) <= lines(cols, 2, h) and all(d < 100 for d in extra)
        assert lines(diags, 0, h) - lines(ad, 0, h) <= set(range(30))  # the forced first keys
        assert len(lines(diags, 2, h) - lines(ad, 2, h)) > 1000
    assert torch.all(base[1] <= ad[1])


def test_recall_study_block_sparse_keys_match_the_block_sparse_lists(device):
    """The study's torch reading of Block-Sparse heads equals the kernels' work lists."""
    import torch
    import recall_study
    from kernel_inputs import make_batch
    from vllm_minference.kernels import block_sparse_scores, build_block_sparse_worklist
    from vllm_minference.search import worklist_block_keys
    N, H = 700, 4
    batch = make_batch([N], [N], H, 2, 64, torch.float32, device, structured=True)
    topk = [3, 4, 6, 9]
    scale = 64 ** -0.5
    scores = block_sparse_scores(batch.q, batch.kv, batch.layout, torch.arange(H, device=device),
                                 scale)
    wl = build_block_sparse_worklist(scores, torch.tensor(topk, device=device), max(topk))
    blocks = [0, 3, 7, 10]
    theirs = worklist_block_keys(wl, batch.layout, torch.tensor(blocks)).cpu()
    last = torch.tensor([min(N - 1, b * 64 + 63) for b in blocks])
    theirs &= torch.arange(N)[None, None, :] <= last[None, :, None]
    k = batch.kv.gather(0, N)[0].cpu()
    ours = recall_study.block_sparse_keys(batch.q.cpu(), k, scale, blocks, topk, N)
    assert torch.equal(ours, theirs)


def test_recall_study_a_shape_keys_match_the_a_shape_lists(device):
    import torch
    import recall_study
    from kernel_inputs import make_batch
    from vllm_minference.kernels import build_a_shape_worklist
    from vllm_minference.profiles import HeadSpec
    from vllm_minference.search import worklist_block_keys
    N = 900
    batch = make_batch([N], [N], 2, 1, 64, torch.float32, device)
    specs = [HeadSpec(pattern="stream_llm", a=16, b=200), HeadSpec(pattern="stream_llm", a=4, b=64)]
    blocks = [0, 2, 9, 14]
    v = torch.zeros(1, 2, N)
    ours = recall_study.profile_keys(specs, v, v, batch.layout, blocks, N)
    wl = build_a_shape_worklist(batch.layout, torch.tensor([16, 4], device=device),
                                torch.tensor([200, 64], device=device))
    theirs = worklist_block_keys(wl, batch.layout, torch.tensor(blocks)).cpu()
    last = torch.tensor([min(N - 1, b * 64 + 63) for b in blocks])
    theirs &= torch.arange(N)[None, None, :] <= last[None, :, None]
    assert torch.equal(ours, theirs)


def test_recall_study_antidiagonal_keys_find_a_far_column_and_stay_causal():
    """A block whose rows all attend to one far key keeps that key's tile, the sink and its
    own tile and little else, nothing past its last row; tau 1 keeps every causal tile."""
    import torch
    import recall_study
    g = torch.Generator().manual_seed(3)
    N, D = 640, 32
    k = 0.1 * torch.randn(N, 1, D, generator=g)
    q = 0.1 * torch.randn(N, 2, D, generator=g)
    k[300] = torch.randn(1, D, generator=g)
    q[448:512] = 10 * k[300].expand(64, 2, D)  # block 7 reads key 300 (tile 4)
    keys = recall_study.antidiagonal_keys(q, k, D ** -0.5, [7], N, tau=0.8,
                                          sink_tiles=1, local_tiles=1)
    tiles = keys[:, 0].view(2, 10, 64).any(-1)
    assert tiles[:, [0, 4, 7]].all()  # the sink, the column's tile, its own
    assert (tiles.sum(-1) <= 4).all()  # and little else of the 8 causal tiles
    assert not keys[:, 0, 512:].any()
    full = recall_study.antidiagonal_keys(q, k, D ** -0.5, [3, 7], N, tau=1.0)
    assert torch.equal(full[:, 1], (torch.arange(N) < 512).expand(2, N))


@pytest.mark.parametrize("shared", [False, True])
def test_recall_study_fa3_group_keys_match_the_plugins_lists(device, shared):
    """``--fa3-group``: the study's keys of a row group are the union of the plugin's
    per-block lists, or with ``shared`` its lists with ``group_blocks`` (one selection)."""
    import torch
    import recall_study
    from kernel_inputs import make_batch
    from vllm_minference.kernels.antidiagonal import antidiagonal_worklist, worklist_tiles
    N, H, tau = 700, 4, 0.9
    batch = make_batch([N], [N], H, 2, 64, torch.float32, device, structured=True, seed=4)
    lists = worklist_tiles(antidiagonal_worklist(
        batch.q, batch.kv, batch.layout, torch.arange(H, device=device), tau, 10_000, 8, 1, 1,
        group_blocks=3 if shared else 1)).cpu()
    kept = [[{int(t) for t in lists[h, b] if t >= 0} for b in range(11)] for h in range(H)]
    blocks = [0, 2, 4, 6, 9, 10]  # groups 0-2, 3-5, 6-8 and the last two blocks
    k = batch.kv.gather(0, N)[0].cpu()
    keys = recall_study.antidiagonal_keys(batch.q.cpu(), k, 64 ** -0.5, blocks, N, tau,
                                          stride=8, sink_tiles=1, local_tiles=2, group=3,
                                          shared=shared)
    tiles = torch.nn.functional.pad(keys, (0, 11 * 64 - N)).view(H, len(blocks), 11, 64).any(-1)
    for h in range(H):
        for si, b in enumerate(blocks):
            group = range(b // 3 * 3, min(11, b // 3 * 3 + 3))
            want = kept[h][b] if shared else {t for g in group for t in kept[h][g] if t <= b}
            assert {int(t) for t in torch.nonzero(tiles[h, si]).flatten()} == want, (h, b)


def test_recall_study_far_line_recall_is_the_kept_share_of_far_target_mass():
    """A row that reads one far target key: every key kept -> 1, that key dropped -> ~0;
    a target within ``gap`` of the row does not count."""
    import torch
    import recall_study
    g = torch.Generator().manual_seed(5)
    N, D = 640, 32
    k = 0.1 * torch.randn(N, 1, D, generator=g)
    q = 0.1 * torch.randn(N, 2, D, generator=g)
    k[100] = torch.randn(1, D, generator=g)
    q[600] = 8 * k[100].expand(2, D)
    targets = torch.zeros(N, dtype=torch.bool)
    targets[[100, 590]] = True  # 590 is inside the gap of row 600
    every = torch.ones(1, 2, 1, N, dtype=torch.bool)
    missing = every.clone()
    missing[..., 100] = False
    only_near = torch.zeros_like(every)
    only_near[..., 590] = True
    keys = torch.cat([every, missing, only_near])  # [C=3, H, S=1, N]
    far = recall_study.far_line_recall(q, k, D ** -0.5, [9], keys, [600], targets, gap=256)
    assert torch.allclose(far[0], torch.ones(2))
    assert (far[1] < 1e-6).all() and (far[2] < 1e-6).all()


def test_recall_study_retrieval_profile_runs_the_most_far_looking_heads_dense(tmp_path,
                                                                            monkeypatch):
    """``--retrieval-profile``: the heads with the most far-line mass are dense, the rest
    Vertical-Slash at the default budget, and the profile loads and fits the model."""
    import pytest
    import recall_study
    from vllm_minference.profiles import load_profile
    mass = {0: [0.01, 0.30, 0.02], 1: [0.25, 0.0, 0.05]}
    path = tmp_path / "p.json"
    recall_study.write_retrieval_profile(mass, 2, str(path), "variable_tracking seed 0")
    prof = load_profile(path)
    prof.check_fits(2, 3)
    kinds = [[h.pattern for h in layer] for layer in prof.layers]
    assert kinds == [["vertical_and_slash", "dense", "vertical_and_slash"],
                     ["dense", "vertical_and_slash", "vertical_and_slash"]]
    assert (prof.layers[0][0].a, prof.layers[0][0].b) == recall_study.BUDGET
    assert prof.layers[0][1].score == 0.3
    recall_study.write_retrieval_profile(mass, 2, str(path), "", control_seed=1)
    control = load_profile(path)
    assert sum(h.pattern == "dense" for layer in control.layers for h in layer) == 2
    assert "random" in control.metadata.source
    with pytest.raises(SystemExit):
        recall_study.write_retrieval_profile({1: [0.1]}, 1, str(path), "")
    # --retrieval-as fixed --mass-from: the same heads pinned to fixed top-k, from a saved study
    study = tmp_path / "study.json"
    study.write_text(json.dumps({"prompt": "variable_tracking", "length": 100,
                                 "far_line_mass": {str(k): v for k, v in mass.items()}}))
    monkeypatch.setattr(sys, "argv", [
        "recall_study.py", "model", "--out", "-", "--mass-from", str(study),
        "--retrieval-profile", str(path), "--dense-heads", "2", "--retrieval-as", "fixed"])
    recall_study.main()
    pinned = load_profile(path)
    assert [[h.fixed for h in layer] for layer in pinned.layers] == [[None, True, None],
                                                                     [True, None, None]]
    assert {h.pattern for layer in pinned.layers for h in layer} == {"vertical_and_slash"}
    assert pinned.layer_patterns(1, [0])[0].fixed and "fixed" in pinned.metadata.source


def test_recall_study_per_row_recalls_average_to_the_block_recalls():
    import torch
    from vllm_minference.kernels import SeqLayout
    from vllm_minference.search import block_recalls
    g = torch.Generator().manual_seed(6)
    N, D = 200, 16  # the last block has 8 rows: the rest of its row slots are NaN
    q, k = torch.randn(N, 2, D, generator=g), torch.randn(N, 1, D, generator=g)
    layout = SeqLayout.from_lengths([N], [N], "cpu")
    keys = torch.rand(2, 2, 2, N, generator=g) < 0.5
    mean = block_recalls(q, k, D ** -0.5, layout, [1, 3], keys)
    rows = block_recalls(q, k, D ** -0.5, layout, [1, 3], keys, per_row=True)
    assert rows.shape == (2, 2, 2, 64) and rows[:, :, 1, 8:].isnan().all()
    assert torch.allclose(rows.nanmean(-1), mean)


def test_recall_study_prompt_rows_are_the_tokens_inside_the_matches():
    import recall_study

    class WordTokenizer:  # one token per space-separated word, with character offsets
        def __call__(self, text, add_special_tokens=False, return_offsets_mapping=False):
            import re
            spans = [m.span() for m in re.finditer(r"\S+\s*", text)]
            return {"input_ids": list(range(len(spans))), "offset_mapping": spans}
    prompt = "noise noise VAR ABCDE = VAR FGHIJ. noise VAR KLMNO = 12345. noise"
    ids, rows = recall_study.prompt_rows(WordTokenizer(), prompt, recall_study.CHAIN_LINE)
    assert len(ids) == 13 and rows == [2, 3, 4, 5, 6]
    _, rows = recall_study.prompt_rows(WordTokenizer(), prompt, recall_study.ANY_LINE)
    assert rows == [2, 3, 4, 5, 6, 8, 9, 10, 11]


def test_recall_study_columns_rule_keeps_columns_only():
    """``--columns N``: the chunk's top-N columns (the first 30 forced), no diagonals."""
    import torch
    import recall_study
    from vllm_minference.kernels import SeqLayout
    g = torch.Generator().manual_seed(7)
    N, H = 3000, 2
    layout = SeqLayout.from_lengths([64], [N], "cpu")
    v, s = torch.rand(1, H, N, generator=g), torch.rand(1, H, N, generator=g)
    cols, n_cols, _, n_diags = recall_study.rules([0.9, 0.95, 0.99], columns=[200])[
        recall_study.columns_name(200)](v, s, layout, H)
    assert (n_cols == 200).all() and (n_diags == 0).all()
    for h in range(H):
        kept = set(cols[0, h, :200].tolist())
        assert set(range(30)) <= kept
        top = set(torch.topk(v[0, h, 30:], 170).indices.add(30).tolist())
        assert top <= kept


def test_set_pairs_become_plugin_settings_in_the_row_config():
    import argparse
    args = argparse.Namespace(set=["adaptive_local=1024", "profile=x.json"], min_sparse_len=4096,
                              mode="adaptive", gamma=None, backend="minference")
    cfg = bench_ttft.minference_config(args)
    assert cfg == {"adaptive_local": "1024", "profile": "x.json", "min_sparse_len": 4096,
                   "mode": "adaptive"}
    assert bench_ttft.plugin_mode("minference", cfg) == "adaptive"
    # rows name the mode the engine runs: without a mode, the model's profile's
    qwen = "/tmp/gpukit/qwen2.5-coder-0.5b-instruct"
    assert bench_ttft.plugin_mode("minference", {}, qwen) == "antidiagonal"
    assert bench_ttft.plugin_mode("minference", {"mode": "fixed"}, qwen) == "fixed"
    assert bench_ttft.plugin_mode("minference", {}, "/tmp/some-other-model") == "fixed"
    assert bench_ttft.plugin_mode("FLASH_ATTN", {}, qwen) == "dense"
    with pytest.raises(SystemExit):
        bench_ttft.parse_settings(["adaptive_local"])


def test_accuracy_columns_keep_configs_apart_by_every_setting():
    def r(cfg, score):
        return dict(task="passkey", length=8192, depth=50, seed=0, score=score,
                    mode=cfg.get("mode", "fixed"), config=cfg)
    raw = [r({}, 1.0) | dict(mode="dense"),
           r({"mode": "adaptive"}, 0.0),
           r({"mode": "adaptive", "adaptive_local": "1024", "adaptive_sinks": "128"}, 1.0),
           r({"budget_scale": 0.05}, 0.0),
           r({"budget_scale": 0.05, "profile": "/x/qwen-searched.json"}, 1.0),
           r({"budget_scale": 0.05}, 1.0) | dict(build="abc")]  # another plugin build
    rows = summarize_results.pair_accuracy(raw)
    labels = {r["label"]: r["minference"] for r in rows}
    assert labels == {"adaptive γ=0.95": 0.0, "adaptive γ=0.95 adaptive_local=1024 "
                      "adaptive_sinks=128": 100.0, "fixed ×0.05": 0.0,
                      "fixed ×0.05 profile=qwen-searched": 100.0,
                      "fixed ×0.05 build=abc": 100.0}
    table = summarize_results.accuracy_table(rows)
    assert table.count("|---") == 3 + len(labels) and "profile=qwen-searched" in table


def test_accuracy_table_when_a_config_lacks_cells():
    def r(mode, cfg, length, score):
        return dict(task="passkey", length=length, depth=50, seed=0, score=score, mode=mode,
                    config=cfg)
    raw = [r("dense", {}, 8192, 1.0), r("dense", {}, 131072, 1.0),
           r("adaptive", {"mode": "adaptive"}, 8192, 1.0),  # cut short: no 128K cell
           r("fixed", {"mode": "fixed"}, 8192, 0.0), r("fixed", {"mode": "fixed"}, 131072, 1.0)]
    table = summarize_results.accuracy_table(summarize_results.pair_accuracy(raw))
    assert "| passkey | 128K | 100.0 |  | 100.0 |" in table


@pytest.mark.parametrize("bm,bn", [(64, 64), (128, 64), (128, 128)])
def test_tile_shape_probe_equals_causal_attention(bm, bn):
    """The dense probe of benchmarks/tune_tile_shape.py computes causal GQA attention,
    contiguous and through a shuffled 16-token page table."""
    import torch
    import tune_tile_shape
    L, H, Hk, D, page = 256, 4, 2, 64, 16
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(L, h, D, generator=g).half() for h in (H, Hk, Hk))
    n = L // page
    perm = torch.randperm(n, generator=g)
    kc = torch.empty(n, page, Hk, D, dtype=torch.half)
    vc = torch.empty_like(kc)
    kc[perm], vc[perm] = k.view(n, page, Hk, D), v.view(n, page, Hk, D)
    want = torch.nn.functional.scaled_dot_product_attention(
        q.float().transpose(0, 1), k.float().repeat_interleave(H // Hk, 1).transpose(0, 1),
        v.float().repeat_interleave(H // Hk, 1).transpose(0, 1), is_causal=True).transpose(0, 1)
    for paged in (False, True):
        out = tune_tile_shape.probe(q, kc if paged else k, vc if paged else v,
                                    perm.int()[None].contiguous() if paged else q,
                                    paged, bm, bn, 4, 2)
        assert float((out.float() - want).norm() / want.norm()) < 2e-3


def test_recall_study_chunked_estimate():
    """With one chunk covering the prompt the chunked study equals the one-shot study; with
    smaller chunks each block is planned from its own chunk's last rows."""
    import torch
    import recall_study
    N, H, D = 700, 2, 64
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(N, H, D, generator=g), torch.randn(N, 1, D, generator=g)
    q[:, :, 0] += 3.0
    k[:5, :, 0] += 3.0  # a few sink keys, as in real attention
    fns = {n: f for n, f in recall_study.rules([0.9, 0.95]).items() if recall_study.MULTI not in n}
    one = recall_study.layer_stats(q, k, 0.125, fns, 6)
    same = recall_study.layer_stats(q, k, 0.125, fns, 6, chunk=1024)
    assert one == same
    chunked = recall_study.layer_stats(q, k, 0.125, fns, 6, chunk=256)
    assert chunked.keys() == one.keys()
    assert chunked != one
    for r in chunked.values():
        assert all(0.0 <= x <= 1.0 + 1e-6 for x in r["recall"])
    ad = recall_study.layer_stats(q, k, 0.125, {}, 6, taus=[0.5], strides=[8, 16])
    assert list(ad) == ["antidiagonal tau=0.5", "antidiagonal tau=0.5 stride=16"]
    assert ad["antidiagonal tau=0.5"] != ad["antidiagonal tau=0.5 stride=16"]


def test_kernel_bench_profile_pattern_plans_the_profile_heads(device):
    """``bench_kernels --profile``: the plugin's planning of a profile layer at a budget
    scale; the default profile at 0.05 equals MInference's rule at 50/305 on every head."""
    import argparse
    import torch
    import bench_kernels
    from kernel_inputs import make_batch
    from vllm_minference.kernels import (build_vertical_slash_worklist, estimate_vertical_slash,
                                         select_vertical_slash)
    N, H = 700, 2
    batch = make_batch([N], [N], H, 1, 64, torch.float32, device, structured=True)
    args = argparse.Namespace(profile="default", budget_scale=0.05)
    plan, index = bench_kernels.plan_profile(args, 3, batch.q, batch.kv, batch.layout)
    wl = index(plan())
    vert, slash = estimate_vertical_slash(batch.q, batch.kv, batch.layout,
                                          torch.arange(H, device=device))
    budget_v, budget_s = torch.full((H,), 50, device=device), torch.full((H,), 305, device=device)
    want = build_vertical_slash_worklist(
        *select_vertical_slash(vert, slash, batch.layout, budget_v, budget_s, 50, 305),
        batch.layout)
    assert torch.equal(wl.tiles(), want.tiles())
    assert bench_kernels.mode_of("profile", args) == dict(mode="fixed", profile="default",
                                                          budget_scale=0.05)


def test_kernel_bench_extra_blocks_adds_the_plugins_far_tiles(device, monkeypatch):
    """``bench_kernels --extra-blocks N``: the fixed Vertical-Slash lists carry the same far
    tiles as the plugin's plan (so density and attention count them); other patterns and
    N = 0 are unchanged, and the rows name the setting."""
    import argparse
    import torch
    import bench_kernels
    from kernel_inputs import make_batch
    from vllm_minference.kernels import LayerPatterns, plan_layer
    from vllm_minference.kernels.plan import HeadPattern
    N, H = 700, 2
    batch = make_batch([N], [N], H, 1, 64, torch.float32, device, structured=True)
    q, kv, layout = batch.q, batch.kv, batch.layout
    est, index = bench_kernels.plan_pattern("vertical_slash", q, kv, layout, H)
    assert bench_kernels.with_extra_tiles(index, "vertical_slash", 0, q, kv, layout) is index
    assert bench_kernels.with_extra_tiles(index, "a_shape", 4, q, kv, layout) is index
    wl = bench_kernels.with_extra_tiles(index, "vertical_slash", 4, q, kv, layout)(est())
    heads = [HeadPattern("vertical_and_slash", 1000, 6096)] * H
    want = plan_layer(q, kv, layout, LayerPatterns.from_heads(heads, device, extra_blocks=4))
    assert torch.equal(wl.extra, want.extra) and torch.equal(wl.tiles(), want.tiles())
    base = bench_kernels.density(index(est()), layout)  # the lists without extra tiles
    assert bench_kernels.density(wl, layout) > base
    args = argparse.Namespace(extra_blocks=4)
    assert bench_kernels.mode_of("vertical_slash", args) == dict(mode="fixed", extra_blocks=4)
    # the Triton kernel does not compute them: its row's density leaves them out
    monkeypatch.setattr(bench_kernels, "time_ms", lambda fn, reps=None: (fn(), 1.0)[1])
    rows: list[dict] = []
    bench_kernels.measure_kernel(
        rows, "triton", input_kind="real", pattern="vertical_slash", q=q, k=kv.key,
        v=kv.value, kv=kv, layout=layout, dense_ms=1.0, est_fn=est,
        index_fn=bench_kernels.with_extra_tiles(index, "vertical_slash", 4, q, kv, layout))
    assert rows[-1]["extra_excluded"]
    assert rows[-1]["density"] == round(base, 4)


def test_chunked_bench_times_every_step_and_sums_the_prompt(device, monkeypatch):
    """``bench_chunked``: one row per prefill step (dense below min_sparse_len or over the
    guard, else sparse) and a prompt row that sums them."""
    import torch
    import bench_chunked
    import bench_kernels
    monkeypatch.setattr(bench_kernels, "DEVICE", device)
    g = torch.Generator(device=device).manual_seed(0)
    q, k, v = (torch.randn(300, h, 64, device=device, generator=g, dtype=torch.float16)
               for h in (4, 1, 1))
    assert bench_chunked.chunk_bounds(300, 128) == [(0, 128), (128, 256), (256, 300)]
    for guard, sparse_path in ((1.0, "sparse"), (0.0, "dense (guard)")):
        rows: list[dict] = []
        bench_chunked.run_layer(rows, q, k, v, chunk=128, kernels=("triton",),
                                pattern="vertical_slash", gamma=0.95, guard=guard,
                                min_sparse_len=200, extra=dict(input="random"))
        steps, (prompt,) = rows[:-1], rows[-1:]
        assert [r["path"] for r in steps] == ["dense (short)", sparse_path, sparse_path]
        assert [r["chunk_end"] for r in steps] == [128, 256, 300]
        assert prompt["total_ms"] == pytest.approx(sum(r["step_ms"] for r in steps))
        assert prompt["sparse_steps"] == (2 if guard == 1.0 else 0)
        assert all(0 < r["density"] <= 1 for r in steps[1:])


def test_chunked_bench_runs_the_fa3_kernels_with_short_runs_on_triton(device, monkeypatch):
    """``--kernels fa3,fa3/run2`` (FA3 emulated on the CPU): both time every sparse step and
    report the keys FA3 computes; run2 leaves isolated chunks to the Triton pass, so its
    pages never hold more keys than fa3's."""
    import torch
    import bench_chunked
    import bench_kernels
    from vllm_minference.kernels.page_lists import attention as pl_attention
    from vllm_minference.kernels.page_lists.reference import emulate_fa3_varlen
    monkeypatch.setattr(bench_kernels, "DEVICE", device)
    monkeypatch.setattr(pl_attention, "fa3_varlen", lambda: emulate_fa3_varlen)
    assert bench_kernels.fa3_options("fa3") == {"min_run": 1, "min_blocks": 1}
    assert bench_kernels.fa3_options("fa3/run2") == {"min_run": 2, "min_blocks": 1}
    assert bench_kernels.fa3_options("fa3/run2/blocks3") == {"min_run": 2, "min_blocks": 3}
    for bad in ("fa3/blocks", "fa3/split2"):
        with pytest.raises(ValueError, match="fa3/runN"):
            bench_kernels.fa3_options(bad)
    g = torch.Generator(device=device).manual_seed(1)
    q, k, v = (torch.randn(448, h, 64, device=device, generator=g, dtype=torch.float16)
               for h in (2, 1, 1))
    rows: list[dict] = []
    bench_chunked.run_layer(rows, q, k, v, chunk=192, kernels=("fa3", "fa3/run2"),
                            pattern="vertical_slash", gamma=0.95, guard=1.0,
                            min_sparse_len=256, extra=dict(input="random"))
    steps = {r["kernel"]: [s for s in rows if s["kind"] == "step" and s["kernel"] == r["kernel"]]
             for r in rows if r["kind"] == "prompt"}
    assert set(steps) == {"fa3", "fa3/run2"}
    for kernel, st in steps.items():
        assert [r["path"] for r in st] == ["dense (short)", "sparse", "sparse"], kernel
    for a, b in zip(steps["fa3"][1:], steps["fa3/run2"][1:]):
        assert 0 < b["page_density"] <= a["page_density"]  # > 1 possible: whole group squares


def test_estimate_tuning_times_every_option_and_restores_the_defaults(device):
    """``tune_estimate``: one row per launch option, each option's sums equal to the first
    option's, and the estimate's module settings back as they were afterwards."""
    import tune_estimate
    from vllm_minference.kernels.vertical_slash import estimate
    def settings():
        return (estimate.KEYS_PER_SPLIT, estimate.MIN_KEYS_PER_SPLIT, dict(estimate.LAUNCH_STATS),
                dict(estimate.LAUNCH_SUMS))
    before = settings()
    options = [tune_estimate.parse_option(o) for o in ("s128w4", "s256w8n2:w2")]
    assert options[1] == dict(name="s256w8n2:w2", keys_per_split=256,
                              stats=dict(num_warps=8, num_stages=2), sums=dict(num_warps=2))
    assert options[0]["sums"] == options[0]["stats"] == dict(num_warps=4)
    with pytest.raises(SystemExit, match="s<keys>"):
        tune_estimate.parse_option("w4")
    rows: list[dict] = []
    tune_estimate.time_shape(rows, 2, 1, 64, 700, options, "current", device)
    assert [r["option"] for r in rows] == ["s128w4", "s256w8n2:w2"]
    assert all(r["max_diff_vs_first"] < 1e-5 and r["pass2_ms"] > 0 for r in rows)
    assert all(r["select_ms"] > 0 and r["adaptive_select_ms"] > 0 for r in rows)
    assert settings() == before
    tune_estimate.time_shape(rows, 2, 1, 64, 700, options[:1], "current", device, est_heads=1)
    assert rows[-1]["est_heads"] == 1 and rows[0]["est_heads"] == 2
    assert settings() == before
    tune_estimate.time_extra_tiles(rows, 2, 1, 64, 700, 130, 32, "current", device,
                                   ("2/2",), (1,))
    assert rows[-1]["kind"] == "extra_tiles" and rows[-1]["extra_tiles_ms"] > 0
    assert rows[-1]["pooling_ms"] > 0 and rows[-1]["bucket_max_ms"] > 0
    assert "rank_ms" in rows[-1] and rows[-1]["rank_kernel_ms"] > 0
    assert rows[-1]["bucket_topk_ms"] > 0 and rows[-1]["rank_kernel_ms_2/2"] > 0
    assert rows[-1]["extra_tiles_ms_1mb"] > 0
    tune_estimate.time_block_sparse(rows, 2, 1, 64, 700, 130, 5, "current", device)
    assert rows[-1]["kind"] == "block_sparse_lists" and rows[-1]["ranked_ms"] > 0
    assert rows[-1]["full_scores_ms"] > 0


def test_plot_labels_name_the_floors_briefly():
    long = "adaptive γ=0.95 adaptive_floor=0.25 adaptive_local=1024 adaptive_sinks=128"
    assert summarize_results.short_label(long) == "adaptive γ=0.95 fixed floor ×0.25 + A-shape floors"
    assert summarize_results.short_label(
        "fixed profile=qwen2.5-coder-0.5b-instruct-searched") == "fixed profile searched"


def test_trace_steps_split_prompts_and_sum_each_step(tmp_path):
    import json
    import trace_steps

    def rec(step, layer, kv, path, ms, density=None, expected=None, kernel=None, **plan):
        return dict(step=step, layer=layer, kv_len=kv, rows=kv // 2, path=path, ms=ms,
                    density=density, expected=expected, kernel=kernel, **plan)
    records = [rec(0, 0, 100, "sparse", 1.0, 0.5, None, "triton"),  # an earlier prompt
               rec(1, 0, 64, "dense (lists)", 2.0, 0.9, None, plan_ms=0.25, waited=True),
               rec(1, 1, 64, "sparse", 1.0, 0.4, None, "fa3", plan_ms=0.5, computed=0.6,
                   waited=True),
               rec(2, 0, 128, "dense (expected)", 3.0, None, 0.6),
               rec(2, 1, 128, "sparse", 0.5, 0.2, 0.25, "fa3"),  # a trace before plan_ms
               rec(2, 2, 128, "sparse", 0.5, 0.5, 0.3, "fa3", waited=False),  # misjudged
               rec(2, 3, 128, "dense (lists)", 0.5, 0.4, 0.6, waited=False)]  # misjudged
    path = tmp_path / "t.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in records) + "\n")
    prompts = trace_steps.prompts_of(trace_steps.steps_of(trace_steps.load(str(path))))
    assert [len(p) for p in prompts] == [1, 2]  # keys fell from 100 to 64: a new prompt
    rows = [trace_steps.step_row(st) for st in prompts[-1]]
    assert rows[0]["dense_lists"] == 1 and rows[0]["sparse_fa3"] == 1
    assert rows[0]["ms"] == 3.0 and rows[0]["dense_ms_per_layer"] == 2.0
    assert rows[1]["dense_expected"] == 1 and rows[1]["sparse_density"] == pytest.approx(0.35)
    assert rows[1]["guard_error"] == pytest.approx((0.05 + 0.2 + 0.2) / 3)
    assert rows[0]["plan_ms"] == 0.75 and rows[1]["plan_ms"] == 0.0
    assert rows[0]["fa3_union"] == pytest.approx(1.5) and "fa3_union" not in rows[1]
    assert (rows[0]["waited"], rows[0]["misjudged"]) == (2, 0)
    assert (rows[1]["waited"], rows[1]["misjudged"]) == (0, 2)
    assert trace_steps.step_row(prompts[-1][1], max_density=0.55)["misjudged"] == 1  # 0.4 dense
    assert "| total | | | | 7.5 | 2.0 | 5.5 | 0.8 | | | | | 2 | 2 |" in trace_steps.markdown(rows)


def test_chunked_table_reports_each_step_and_the_prompt():
    rows = [dict(kind="step", pattern="vertical_slash", kernel="fa3", chunk_end=65536,
                 path="dense (short)", dense_ms=15.0),
            dict(kind="step", pattern="vertical_slash", kernel="fa3", chunk_end=131072,
                 path="sparse", density=0.25, dense_ms=40.0, estimate_ms=1.0, index_ms=0.5,
                 attn_ms=18.5, sparse_ms=20.0, fa3_stages_ms={"fa3": 16.0, "columns": 1.5,
                                                              "tables": 0.5},
                 page_density=0.31),
            dict(kind="prompt", pattern="vertical_slash", kernel="fa3", seq_len=131072,
                 chunk=65536, sparse_steps=1, steps=2, dense_ms=55.0, total_ms=35.0,
                 speedup=55 / 35)]
    lines = summarize_results.chunked_table(rows).splitlines()
    assert len(lines) == 5
    assert ("| 128K | sparse | 0.250 (0.310) | 40.0 | 1.00 | 0.50 | 18.5 | 16.0 / 1.5 / 0.5 "
            "| 0.50 |") in lines[3]
    assert "1/2 steps sparse" in lines[4] and "1.57x" in lines[4]


def test_sign_test_says_when_a_few_answers_are_noise():
    assert summarize_results.sign_test_p(3, 8) == pytest.approx(0.2266, abs=1e-4)
    assert summarize_results.sign_test_p(0, 10) == pytest.approx(2 / 1024)
    assert summarize_results.sign_test_p(0, 0) == 1.0 and summarize_results.sign_test_p(5, 5) == 1.0
    changes = [dict(label="fixed", task="a", length=1, better=0, worse=3, prompts=12),
               dict(label="fixed", task="b", length=1, better=3, worse=5, prompts=12)]
    (total,) = summarize_results.overall_changes(changes)
    assert (total["better"], total["worse"], total["prompts"]) == (3, 8, 24)
    assert total["p"] == pytest.approx(0.2266, abs=1e-4)


def test_accuracy_plot_title_says_where_sparse_began():
    """The heatmap title follows the runs' min_sparse_len instead of a fixed claim."""
    import summarize_results as sr
    assert "default" in sr.sparse_start_note([{"min_sparse_len": None}] * 2)
    assert "4K" in sr.sparse_start_note([{"min_sparse_len": "4096"}])
    assert "per configuration" in sr.sparse_start_note([{"min_sparse_len": None},
                                                        {"min_sparse_len": 4096}])


def test_ttft_repeated_engines_pair_by_their_medians():
    """Short prompts timed over several engine starts: the ratio is of the medians, and the
    table says over how many engines."""
    raw = [dict(_ttft("dense", 1, 1024, s), lease="L1") for s in (2.0, 3.0, 10.0)]
    raw += [dict(_ttft("fixed", 1, 1024, s), lease="L1") for s in (1.0, 2.0, 2.5, 9.0)]
    (row,) = summarize_results.pair_ttft(raw)
    assert (row["dense_s"], row["minference_s"], row["speedup"]) == (3.0, 2.25, 1.333)
    assert summarize_results.engines_note(row) == " (medians of 3 / 4 engines)"
    (single,) = summarize_results.pair_ttft(raw[:1] + raw[3:4])
    assert "engines" not in single and summarize_results.engines_note(single) == ""


def test_recall_study_fixed_rule_runs_without_triton(monkeypatch):
    """The study runs on a CPU without Triton: its fixed rule is the PyTorch reference of the
    (Triton) selection, with the same result."""
    import torch
    import recall_study
    from vllm_minference.kernels import SeqLayout, select_vertical_slash
    from vllm_minference.kernels.vertical_slash import estimate
    layout = SeqLayout.from_lengths([1], [900], "cpu")
    g = torch.Generator().manual_seed(2)
    vert, slash = torch.rand(1, 2, 900, generator=g), torch.rand(1, 2, 900, generator=g)
    budget = torch.full((2,), 1000), torch.full((2,), 6096)
    expect = select_vertical_slash(vert, slash, layout, *budget, 1000, 6096)

    def no_triton(*a, **k):
        raise AssertionError("the study launched a Triton kernel")
    monkeypatch.setattr(estimate, "_select_scores_kernel", no_triton)
    got = recall_study.rules([0.9, 0.95])["fixed 1000/6096"](vert, slash, layout, 2)
    for x, y in zip(got, expect):
        assert torch.equal(x, y)


def test_kernel_bench_antidiagonal_pattern_and_tuning_options(device, monkeypatch):
    """``bench_kernels --patterns antidiagonal``: the plugin's per-block lists at ``--tau``;
    ``tune_antidiagonal`` options name warps, stages and optionally the tile shape."""
    import argparse
    import torch
    import bench_kernels
    import tune_antidiagonal
    from kernel_inputs import make_batch
    from vllm_minference.kernels.antidiagonal import antidiagonal_worklist
    batch = make_batch([300], [300], 4, 2, 64, torch.float16, device, structured=True)
    monkeypatch.setitem(bench_kernels.ANTIDIAGONAL, "tau", 0.8)
    plan, index = bench_kernels.plan_pattern("antidiagonal", batch.q, batch.kv, batch.layout, 4)
    want = antidiagonal_worklist(batch.q, batch.kv, batch.layout,
                                 torch.arange(4, device=device), 0.8, 2048, 8)
    assert torch.equal(index(plan()).desc[..., 1], want.desc[..., 1])
    args = argparse.Namespace()
    assert bench_kernels.mode_of("antidiagonal", args) == dict(
        mode="antidiagonal", tau=0.8, stride=8, max_tiles=2048)
    rows = []
    monkeypatch.setattr(tune_antidiagonal, "bench_ms", lambda fn: (fn(), 1.0)[1])
    monkeypatch.setattr(tune_antidiagonal.bk, "fa3", lambda q, k, v: lambda: None)
    tune_antidiagonal.run("4/2/64", 200, 300, 8, ["w4n2", "iw4n2"], 0.9, rows, device,
                          torch.float16)
    assert [r["launch"]["INNER_LOOP"] for r in rows] == [False, True]
    assert [r["ran"] for r in rows] == ["w4n2", "iw4n2"]  # both fit: ran as asked
    assert rows[1]["same_tiles_as_first"] is True
    assert rows[0]["kept_tiles"] == rows[1]["kept_tiles"] > 0
    assert rows[0]["search_ways"] == tune_antidiagonal.ad.SEARCH_WAYS
    # "" runs the default launch, and the row's tile shape is that launch's (it recorded the
    # non-inner-loop defaults of "" before: H100 rows of 2026-11-27c)
    rows.clear()
    tune_antidiagonal.run("4/2/64", 200, 300, 16, [""], 0.9, rows, device, torch.float16)
    assert rows[0]["ran"] == "ir128k128w8n3"
    assert rows[0]["launch"]["INNER_LOOP"] and rows[0]["launch"]["ROWS"] == 128


def test_tune_antidiagonal_picks_the_fastest_complete_option():
    import tune_antidiagonal

    def row(opt, q_len, ms, same=True, stride=8):
        return dict(shape="14/2/64", stride=stride, q_len=q_len, kv_len=131072, option=opt,
                    total_ms=ms, same_tiles_as_first=same)
    rows = [row("w8n2", 131072, 14.0, None), row("w8n2", 16384, 3.0, None),
            row("iw8n3", 131072, 6.0), row("iw8n3", 16384, 1.5),
            row("ir256k64w8n3", 131072, 4.0, False), row("ir256k64w8n3", 16384, 1.0),
            row("ir128k128w8n3", 131072, 5.0),  # its 16K case was not reached
            row("w4n1", 131072, 1.0, stride=16), row("w4n1", 16384, 1.0, stride=16)]
    assert tune_antidiagonal.best_option(rows, "14/2/64") == "iw8n3"
    assert tune_antidiagonal.best_option(rows, "14/2/64", 16) == "w4n1"
    with pytest.raises(SystemExit):
        tune_antidiagonal.best_option(rows, "32/8/128")


def test_tune_antidiagonal_keeps_the_rows_of_an_earlier_call(tmp_path):
    """A lane's second call with the same ``--out`` adds to its rows (it overwrote them)."""
    import tune_antidiagonal
    path = tmp_path / "tune.json"
    assert tune_antidiagonal.earlier_rows(str(path)) == []
    path.write_text(json.dumps(dict(device="GPU", rows=[dict(option="w4n2")])))
    assert tune_antidiagonal.earlier_rows(str(path)) == [dict(option="w4n2")]


def test_accuracy_without_dense_rows_is_reported_unpaired():
    """A raw folder whose dense rows were measured in another session: the scores alone."""
    raw = [dict(task="multivalue", length=131072, depth=None, seed=s, score=x,
                mode="antidiagonal", config={"mode": "antidiagonal", "tau": "0.98"})
           for s, x in enumerate([1.0, 0.5, 0.25, 0.0])]
    assert summarize_results.pair_accuracy(raw) == []
    (cell,) = summarize_results.unpaired_scores(raw)
    assert (cell["task"], cell["length"], cell["score"], cell["prompts"]) == (
        "multivalue", 131072, 43.8, 4)
    # sparse from 32K is a configuration of its own; the suite's 4096 is left out of labels
    cells = summarize_results.unpaired_scores(raw + [
        dict(r, config=dict(r["config"], min_sparse_len=32768), score=1.0) for r in raw] + [
        dict(r, config=dict(r["config"], min_sparse_len=4096), score=0.0) for r in raw])
    assert [(c["label"], c["score"], c["prompts"]) for c in cells] == [
        ("antidiagonal min_sparse_len=32768 tau=0.98", 100.0, 4),
        ("antidiagonal tau=0.98", 21.9, 8)]
    assert "0.98" in cell["label"]


def test_gpu_lanes_names_are_unique_and_their_functions_exist():
    """A lane name used twice in ``gpu_lanes.sh``'s case runs only its first entry."""
    import re
    from pathlib import Path
    text = (Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_lanes.sh").read_text()
    cases = text[text.index('case "$1" in'):text.rindex("esac")]
    names = re.findall(r"^  ([A-Za-z0-9]+)\)", cases, re.M)
    assert len(names) > 50 and len(names) == len(set(names)), sorted(
        n for n in set(names) if names.count(n) > 1)
    defined = set(re.findall(r"^([A-Za-z0-9_]+)\(\) \{", text, re.M))
    called = set(re.findall(r"lane \d ([A-Za-z0-9_]+)", cases))
    assert called and not called - defined, sorted(called - defined)


def test_far_line_summary_weighs_heads_by_mass_and_pins_the_top_ones():
    """Mass-weighted far-line recall; pinning swaps the top heads' recall for fixed's (the
    profile's ``"fixed": true``) or 1 (dense), heads ranked over every layer of the mass."""
    import far_line_summary as fls
    mass = {0: [0.5, 0.1], 1: [0.0, 0.3], 2: [0.9, 0.0]}  # layer 2 is not in the study
    study = {"layers": {"0": {"fixed 1000/6096": {"far_line_recall": [0.9, 0.8]},
                              "x": {"far_line_recall": [0.2, 1.0]}},
                        "1": {"fixed 1000/6096": {"far_line_recall": [1.0, 0.7]},
                              "x": {"far_line_recall": [0.4, 0.6]}}}}
    rows = {r["rule"]: r for r in fls.summary(study, mass, [2])}
    assert fls.top_heads(mass, 2) == {(2, 0), (0, 0)}
    assert rows["x"]["recall"] == pytest.approx((0.5 * 0.2 + 0.1 * 1.0 + 0.3 * 0.6) / 0.9)
    assert rows["x"]["2 pinned"] == pytest.approx((0.5 * 0.9 + 0.1 * 1.0 + 0.3 * 0.6) / 0.9)
    assert rows["x"]["2 dense"] == pytest.approx((0.5 * 1.0 + 0.1 * 1.0 + 0.3 * 0.6) / 0.9)
    assert rows["fixed 1000/6096"]["2 pinned"] == rows["fixed 1000/6096"]["recall"]


@pytest.mark.parametrize("stride", [8, 32])
def test_partials_probe_gemm_equals_the_kernels_partials(device, monkeypatch, stride):
    """``probe_partials_gemm``: the antidiagonal partials as one GEMM per KV head (rows of a
    group reversed against keys in order) and a tile log-sum-exp equal the plugin kernel's,
    on the causal tiles of a chunk at the end of its keys, over slabs of key groups; a
    reversed order on the wrong side breaks it."""
    import torch
    import probe_partials_gemm as probe
    monkeypatch.setattr(probe, "bench_ms", lambda fn: (fn(), 1.0)[1])
    rows = []
    # 256 bytes of scores at a time: several slabs of key groups
    row = probe.run("4/2/64", 128, 512, stride, 256, rows, device, torch.float16)
    assert row["same_causal_cells"] and row["max_abs_diff_log2"] < 2e-2, row

    def rows_in_order(q, kv_heads, s):  # the antidiagonal read the other way round
        t, h, d = q.shape
        return q.view(t // s, s, h, d).permute(2, 0, 1, 3).reshape(kv_heads, -1, s * d)
    monkeypatch.setattr(probe, "stacked_queries", rows_in_order)
    row = probe.run("4/2/64", 128, 512, stride, 256, rows, device, torch.float16)
    assert row["max_abs_diff_log2"] > 0.1


def test_gpu_idle_merges_streams_splits_steps_and_names_what_preceded_each_gap(tmp_path):
    import gzip
    import gpu_idle

    def x(cat, name, ts, dur):
        return dict(ph="X", cat=cat, name=name, ts=ts, dur=dur)
    events = [x("kernel", "A", 0, 100), x("kernel", "B", 150, 100),
              x("kernel", "C", 240, 60),  # another stream, overlapping B: no gap
              x("gpu_memcpy", "Memcpy DtoH", 330, 10),
              x("kernel", "D", 10340, 100),  # after 10 ms of idle: the next step
              x("cuda_runtime", "cudaStreamSynchronize", 100, 45),
              x("cuda_runtime", "cudaLaunchKernel", 0, 5), x("cpu_op", "aten::mm", 0, 5),
              dict(ph="i", cat="kernel", name="marker", ts=5)]  # not a duration event
    path = tmp_path / "t.json.gz"
    with gzip.open(path, "wt") as f:
        json.dump({"traceEvents": events}, f)
    s = gpu_idle.summarize(gpu_idle.load_events(str(path)), burst_gap_ms=5, min_gap_us=20)
    first, second = s["bursts"]
    assert first["span_ms"] == pytest.approx(0.34) and first["busy_ms"] == pytest.approx(0.26)
    assert first["gaps_over_min"] == 2 and first["activities"] == 4
    assert second["busy_ms"] == pytest.approx(0.1) and second["idle_ms"] == 0
    assert s["busy_share"] == pytest.approx(0.36 / 0.44)
    # the gap after A (50 us) and after C (30 us; C ended after B); the 10 ms step gap is
    # not counted inside a burst
    assert s["idle_after"] == {"A": (1, pytest.approx(0.05)), "C": (1, pytest.approx(0.03))}
    assert s["host_waits"] == {"cudaStreamSynchronize": (1, pytest.approx(0.045))}
    assert s["kernels"]["B"] == (1, pytest.approx(0.1))
    text = gpu_idle.markdown(s)
    assert "| `A` | 1 | 0.05 |" in text and "| `cudaStreamSynchronize` | 1 | 0.04 |" in text


def test_gpu_idle_groups_activities_by_what_they_do():
    """FA3's CUTLASS kernel is attention, not a GEMM (first match wins); the plugin's
    partials and selection have their own rows; what matches nothing is ``other``."""
    import gpu_idle
    fa3 = "void cutlass::device_kernel<flash::enable_sm90_or_later<flash::FlashAttnFwdSm90<>>>"
    assert gpu_idle.group_of(fa3) == "attention: FlashAttention"
    assert gpu_idle.group_of("nvjet_sm90_tst_256x128_64x4_1x2_h_bz_coopA_TNT") == "model: GEMMs"
    assert gpu_idle.group_of("_partials_kernel") == "planning: antidiagonal partials"
    assert gpu_idle.group_of("_select_kernel") == "planning: antidiagonal selection"
    assert gpu_idle.group_of("_sparse_attn_fwd_kernel") == "attention: Triton sparse"
    assert gpu_idle.group_of("ncclDevKernel_AllReduce_Sum_bf16_RING_LL(x)") == "communication"
    assert gpu_idle.group_of("triton_poi_fused_mul_silu_slice_1") == "model: torch.compile"
    assert gpu_idle.group_of("void vllm::reshape_and_cache_flash_kernel<>") == "KV cache writes"
    assert gpu_idle.group_of("_mark_kernel") == "Triton, other"
    assert gpu_idle.group_of("Memcpy DtoH (Device -> Pinned)") == "copies and memsets"
    assert gpu_idle.group_of("something") == "other"
    events = [dict(ph="X", cat="kernel", name=n, ts=ts, dur=d) for n, ts, d in
              [(fa3, 0, 300), ("_partials_kernel", 300, 50), ("_select_kernel", 350, 20),
               ("_partials_kernel", 370, 30), ("something", 400, 10)]]
    s = gpu_idle.summarize(events)
    assert s["groups"] == {"attention: FlashAttention": (1, pytest.approx(0.3)),
                           "planning: antidiagonal partials": (2, pytest.approx(0.08)),
                           "planning: antidiagonal selection": (1, pytest.approx(0.02)),
                           "other": (1, pytest.approx(0.01))}
    assert "| planning: antidiagonal partials | 2 | 0.08 |" in gpu_idle.markdown(s)


def test_ttft_profiles_one_more_prefill_after_the_timed_runs(tmp_path, monkeypatch):
    from argparse import Namespace

    from vllm.config import ProfilerConfig
    cfg = bench_ttft.profiler_config("traces")  # vLLM's own validation of every key
    assert ProfilerConfig(**cfg).torch_profiler_dir == str(Path("traces").resolve())
    calls = []

    class FakeLLM:
        def generate(self, prompts, params, use_tqdm=False):
            calls.append(("generate", len(prompts[0]["prompt_token_ids"])))

        def start_profile(self, profile_prefix=None):
            calls.append(("start", profile_prefix))

        def stop_profile(self):
            calls.append(("stop", None))
    monkeypatch.setattr(bench_ttft, "make_llm", lambda args, max_len: (FakeLLM(), None))
    args = Namespace(backend="FLASH_ATTN", model_kind="dummy-llama", model=None, layers=2,
                     lengths=[4096], reps=1, outputs=False, min_sparse_len=None, mode=None,
                     gamma=None, tp=1, set=None, max_num_batched_tokens=None,
                     out=str(tmp_path / "t.json"), profile_dir=str(tmp_path / "traces"))
    bench_ttft.ttft_rows(args)
    timed = [c for c in calls[:-3] if c[0] == "generate"]
    assert len(timed) == 1 + 11  # the warm-up, then 11 runs of a short length
    assert calls[-3:] == [("start", "ttft_FLASH_ATTN_4096"), ("generate", 4096), ("stop", None)]
    rows = json.loads((tmp_path / "t.json").read_text())
    assert len(rows) == 1 and rows[0]["runs"] == 11  # the profiled run is not a row
    assert len(rows[0]["run_seconds"]) == 11  # each run, in order: the spread behind the median
    assert rows[0]["seconds"] == pytest.approx(sorted(rows[0]["run_seconds"])[5], abs=1e-4)


def test_ttft_rows_of_two_plugin_builds_stay_apart(tmp_path):
    """A branch's wheel and main's timed in one lease: one row each, not one median."""
    raw = [_ttft("dense", 1, 1024, 2.0), dict(_ttft("fixed", 1, 1024, 1.0), build="aaa"),
           dict(_ttft("fixed", 1, 1024, 0.5), build="bbb"),
           dict(_ttft("fixed", 1, 1024, 0.7), build="bbb")]
    rows = summarize_results.pair_ttft(raw)
    assert sorted((r["build"], r["speedup"]) for r in rows) == [("aaa", 2.0), ("bbb", 3.333)]
    # the fingerprint follows the plugin's files: any change to code or data changes it
    (tmp_path / "pkg" / "sub").mkdir(parents=True)
    (tmp_path / "pkg" / "a.py").write_text("x = 1\n")
    (tmp_path / "pkg" / "sub" / "p.json").write_text("{}")
    (tmp_path / "pkg" / "notes.txt").write_text("ignored")
    first = bench_ttft.plugin_build(str(tmp_path / "pkg"))
    assert len(first) == 12 and first == bench_ttft.plugin_build(str(tmp_path / "pkg"))
    (tmp_path / "pkg" / "notes.txt").write_text("still ignored")
    assert bench_ttft.plugin_build(str(tmp_path / "pkg")) == first
    (tmp_path / "pkg" / "sub" / "p.json").write_text('{"a": 1}')
    assert bench_ttft.plugin_build(str(tmp_path / "pkg")) != first
    assert bench_ttft.plugin_build() is not None  # the installed plugin here
