"""The vLLM backend on the CPU: registration, request routing, and the forward pass.

vLLM's FlashAttention kernels cannot run on a CPU, so the dense path is replaced by a
PyTorch stand-in; the sparse path runs the real Triton kernels (interpreter).
"""

import math
import pickle
from importlib.metadata import entry_points

import pytest
import torch

from vllm_fixtures import (ENGINE_ARGS_ON_CPU, dense_reference_forward, make_paged_batch,
                           make_vllm_config, run_python, tiny_model_dir)

pytest.importorskip("vllm")

from vllm.config import AttentionConfig  # noqa: E402
from vllm.v1.attention.backends.flash_attn import (FlashAttentionImpl,  # noqa: E402
                                                   FlashAttentionMetadata)
from vllm.v1.attention.backends.registry import AttentionBackendEnum  # noqa: E402
from vllm.v1.kv_cache_interface import FullAttentionSpec  # noqa: E402

from vllm_minference import plugin  # noqa: E402
from vllm_minference.kernels import KVSource, plan_layer  # noqa: E402
from vllm_minference.kernels.attention.reference import (masked_attention_reference,  # noqa: E402
                                                          worklist_mask)
from vllm_minference.layer_plan import planned_page_size  # noqa: E402
from vllm_minference.backend import (MInferenceBackend, MInferenceImpl,  # noqa: E402
                                     MInferenceMetadataBuilder, chunk_hint, classify_requests,
                                     runs_of, warn_dense_layers)

LAYER = "model.layers.1.self_attn.attn"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return tiny_model_dir(tmp_path_factory.mktemp("tiny"))


def test_entry_point_is_declared():
    eps = entry_points(group="vllm.general_plugins")
    assert any(ep.name == "minference" and ep.value == "vllm_minference.plugin:register"
               for ep in eps)


def test_backend_flag_resolves_to_this_backend():
    plugin.register()
    plugin.register()  # idempotent
    for name in ("minference", "MInference", "MINFERENCE"):
        cfg = AttentionConfig(backend=name)
        assert cfg.backend is AttentionBackendEnum.CUSTOM
    assert AttentionBackendEnum.CUSTOM.get_class() is MInferenceBackend
    assert pickle.loads(pickle.dumps(AttentionConfig(backend="minference"))).backend \
        is AttentionBackendEnum.CUSTOM
    assert MInferenceBackend.get_name() == "CUSTOM"
    assert AttentionBackendEnum[MInferenceBackend.get_name()] is AttentionBackendEnum.CUSTOM


CLI_CHECK = ENGINE_ARGS_ON_CPU + """
args = parser.parse_args(["--model", sys.argv[1], "--attention-backend", "minference",
                          "--skip-tokenizer-init", "--max-model-len", "1024",
                          "--additional-config.minference.min_sparse_len", "4096"])
config = EngineArgs.from_cli_args(args).create_engine_config()
print("BACKEND", config.attention_config.backend.name, config.additional_config)
"""


def test_cli_flag_and_plugin_filter(model_dir):
    """`--attention-backend minference` parses through vLLM's own CLI path; VLLM_PLUGINS
    that leaves the plugin out makes the name unknown again."""
    code = CLI_CHECK.replace("sys.argv[1]", repr(model_dir))
    ok = run_python(code, {"VLLM_PLUGINS": "minference"})
    assert "BACKEND CUSTOM" in ok.stdout, ok.stderr[-3000:]
    assert "'min_sparse_len': '4096'" in ok.stdout or "'min_sparse_len': 4096" in ok.stdout
    off = run_python(code, {"VLLM_PLUGINS": "some_other_plugin"})
    assert off.returncode != 0
    assert "Unknown attention backend: 'MINFERENCE'" in off.stderr


def test_classification_and_runs():
    flags = classify_requests([1, 1, 100, 64, 200, 30], [300, 50, 100, 500, 200, 600], 128)
    assert flags == [False, False, False, True, True, False]
    assert runs_of(flags, False) == [(0, 3), (5, 6)]
    assert runs_of(flags, True) == [(3, 5)]
    assert runs_of([True, False, True], True) == [(0, 1), (2, 3)]


def _builder(model_dir, device="cpu", min_sparse_len=128, **settings):
    # max_density 1: these short sequences are nearly dense; keep them on the sparse path
    vc = make_vllm_config(model_dir, {"minference": {"min_sparse_len": min_sparse_len,
                                                     "max_density": 1.0, **settings}})
    spec = FullAttentionSpec(block_size=16, num_kv_heads=2, head_size=64, dtype=torch.float16)
    return MInferenceMetadataBuilder(spec, [LAYER], vc, torch.device(device)), vc


def test_builder_routes_mixed_batch(model_dir):
    builder, _ = _builder(model_dir)
    # decode, decode, short prefill, chunk of a long prompt, long prefill, prefix-cache hit
    q_lens, seq_lens = [1, 1, 100, 64, 200, 30], [300, 50, 100, 500, 200, 600]
    batch = make_paged_batch(q_lens, seq_lens)
    md = builder.build(0, batch.cam)
    sb = md.minference
    assert sb.req_ids == [3, 4]
    assert sb.layout.q_starts_host == (102, 166)
    assert sb.layout.q_lens_host == (64, 200) and sb.layout.kv_lens_host == (500, 200)
    assert [(r.token_start, r.token_end) for r in sb.dense_runs] == [(0, 102), (366, 396)]
    assert [(r.token_start, r.token_end) for r in sb.sparse_runs] == [(102, 366)]
    run = sb.dense_runs[1]
    assert run.metadata.num_actual_tokens == 30 and run.metadata.max_seq_len == 600
    assert run.metadata.query_start_loc.tolist() == [0, 30]
    assert torch.equal(sb.block_table, batch.cam.block_table_tensor[[3, 4]])

    # decode-only and short batches keep the parent's metadata, untouched
    decode = make_paged_batch([1, 1], [300, 50])
    md = builder.build(0, decode.cam)
    assert type(md) is FlashAttentionMetadata
    short = make_paged_batch([100, 1], [100, 60])
    assert type(builder.build(0, short.cam)) is FlashAttentionMetadata


def test_builder_lists_each_sparse_chunks_last_rows_for_a_dense_pass(model_dir):
    builder, _ = _builder(model_dir, dense_tail=16)
    q_lens, seq_lens = [1, 64, 200, 30, 100], [300, 500, 200, 600, 100]
    batch = make_paged_batch(q_lens, seq_lens)
    sb = builder.build(0, batch.cam).minference
    assert sb.req_ids == [1, 2]
    assert [(r.token_start, r.token_end) for r in sb.tail_runs] == [(49, 65), (249, 265)]
    run = sb.tail_runs[1]  # the last 16 rows of request 2, against all its 200 keys
    assert run.metadata.num_actual_tokens == 16 and run.metadata.max_query_len == 16
    assert run.metadata.query_start_loc.tolist() == [0, 16]
    assert run.metadata.seq_lens.tolist() == [200] and run.metadata.max_seq_len == 200
    assert torch.equal(run.metadata.block_table, batch.cam.block_table_tensor[2:3])
    assert torch.equal(run.metadata.slot_mapping, batch.cam.slot_mapping[249:265])
    # a tail longer than the chunk is the whole chunk; 0 (the default) lists none
    builder, _ = _builder(model_dir, dense_tail=100)
    sb = builder.build(0, batch.cam).minference
    assert [(r.token_start, r.token_end) for r in sb.tail_runs] == [(1, 65), (165, 265)]
    builder, _ = _builder(model_dir)
    assert builder.build(0, batch.cam).minference.tail_runs == []


class _Layer:
    layer_name = LAYER


def _impl(vc, monkeypatch):
    from vllm.config import set_current_vllm_config
    monkeypatch.setattr(FlashAttentionImpl, "forward", dense_reference_forward)
    with set_current_vllm_config(vc):
        return MInferenceImpl(4, 64, 64 ** -0.5, 2, None, None, "auto")


def test_forward_mixed_batch(model_dir, monkeypatch, device):
    """Dense rows equal the dense path; sparse rows equal the kernels on the same lists;
    budgets that cover everything make sparse rows equal dense attention."""
    q_lens, seq_lens = [1, 100, 130, 1, 200], [300, 100, 400, 77, 200]
    batch = make_paged_batch(q_lens, seq_lens, seed=1, device=device)
    T = sum(q_lens)
    reference = torch.zeros(T, 4, 64, dtype=torch.float16, device=device)
    builder, vc = _builder(model_dir, device)
    impl = _impl(vc, monkeypatch)
    dense_reference_forward(impl, _Layer(), batch.query, batch.key, batch.value,
                            batch.kv_cache, builder.build(0, batch.cam), reference)
    md = builder.build(0, batch.cam)
    assert md.minference.req_ids == [2, 4]

    # default profile (Vertical-Slash 1000/6096) covers these short sequences entirely
    out = torch.full_like(reference, float("nan"))
    impl.forward(_Layer(), batch.query, batch.key, batch.value, batch.kv_cache, md, out)
    assert not out.isnan().any()
    dense_rows = torch.cat([torch.arange(0, 101), torch.arange(231, 232)]).to(device)
    torch.testing.assert_close(out[dense_rows], reference[dense_rows], atol=0, rtol=0)
    torch.testing.assert_close(out, reference, atol=1e-2, rtol=1e-2)

    # small budgets: sparse rows follow the sparse lists (differ from dense), dense rows don't
    impl.planner.settings = impl.planner.settings.model_copy(update={"budget_scale": 0.0})
    impl.planner._patterns = None
    out2 = torch.full_like(reference, float("nan"))
    impl.forward(_Layer(), batch.query, batch.key, batch.value, batch.kv_cache, md, out2)
    assert not out2.isnan().any()
    torch.testing.assert_close(out2[dense_rows], reference[dense_rows], atol=0, rtol=0)
    sb = md.minference
    key_cache, value_cache = batch.kv_cache.transpose(1, 2).split(64, dim=-1)
    kv = KVSource.paged(key_cache, value_cache, sb.block_table)
    wl = plan_layer(batch.query, kv, sb.layout, impl.planner.patterns(_Layer(), batch.query.device))
    assert float(wl.density(sb.layout).max()) < 0.9  # really sparse
    expect = masked_attention_reference(
        batch.query, kv, sb.layout, lambda b, h, ql, kl: worklist_mask(wl, sb.layout, b, h))
    sparse_rows = torch.cat([torch.arange(101, 231), torch.arange(232, 432)]).to(device)
    assert float((out2[sparse_rows].double() - expect[sparse_rows]).norm()
                 / expect[sparse_rows].norm()) < 1e-2

    # the last rows of each sparse chunk again over every key (dense_tail): those rows equal
    # dense attention exactly, the rows before them keep the sparse lists
    tail = MInferenceMetadataBuilder._tail_run
    qsl = batch.cam.query_start_loc_cpu.tolist()
    md.minference.tail_runs = [tail(md, qsl, seq_lens, r, 8) for r in (2, 4)]
    out4 = torch.full_like(reference, float("nan"))
    impl.forward(_Layer(), batch.query, batch.key, batch.value, batch.kv_cache, md, out4)
    tail_rows = torch.cat([torch.arange(223, 231), torch.arange(424, 432)]).to(device)
    torch.testing.assert_close(out4[tail_rows], reference[tail_rows], atol=0, rtol=0)
    assert not torch.equal(out2[tail_rows], reference[tail_rows])  # sparse there before
    kept = sparse_rows[~torch.isin(sparse_rows, tail_rows)]
    torch.testing.assert_close(out4[kept], out2[kept], atol=0, rtol=0)
    md.minference.tail_runs = []

    # a density limit below what the lists need sends the layer to the dense path
    impl.planner.guard.max_density = 0.01
    out3 = torch.full_like(reference, float("nan"))
    impl.forward(_Layer(), batch.query, batch.key, batch.value, batch.kv_cache, md, out3)
    torch.testing.assert_close(out3, reference, atol=0, rtol=0)


def test_pages_the_stride_does_not_divide_run_dense_with_one_warning(model_dir, monkeypatch):
    """Start-up checks the antidiagonal stride against the page size vLLM is expected to
    use (64 here); a cache of 16-token pages at run time keeps the layer dense, warned once,
    where the estimate used to raise mid-serve."""
    from vllm_minference import layer_plan
    q_lens, seq_lens = [100, 200], [400, 200]
    batch = make_paged_batch(q_lens, seq_lens, seed=2)  # 16-token pages
    builder, vc = _builder(model_dir, mode="antidiagonal", antidiagonal_stride=32)
    impl = _impl(vc, monkeypatch)
    assert impl.planner.page_size == 64  # what start-up checked
    said = []
    monkeypatch.setattr(layer_plan.logger, "warning", lambda msg, *a: said.append(msg % a))
    monkeypatch.setattr(layer_plan, "_warned_pages", False)
    md = builder.build(0, batch.cam)
    assert md.minference.req_ids == [0, 1]
    reference = torch.zeros(sum(q_lens), 4, 64, dtype=torch.float16)
    dense_reference_forward(impl, _Layer(), batch.query, batch.key, batch.value,
                            batch.kv_cache, md, reference)
    for _ in range(2):
        out = torch.full_like(reference, float("nan"))
        impl.forward(_Layer(), batch.query, batch.key, batch.value, batch.kv_cache, md, out)
        torch.testing.assert_close(out, reference, atol=0, rtol=0)
    assert len(said) == 1 and "antidiagonal_stride=32" in said[0]
    assert impl.planner.last_step["path"] == "dense (pages)"


def test_fixed_mode_sinks_and_local_band_reach_the_plan(model_dir, monkeypatch):
    _, vc = _builder(model_dir, fixed_sinks=8, fixed_local=512)
    lp = _impl(vc, monkeypatch).planner.patterns(_Layer(), "cpu")
    assert (lp.gamma, lp.keep_first, lp.keep_diag) == (None, 8, 512)


def test_profile_pins_heads_to_fixed_top_k_in_antidiagonal_mode(model_dir, monkeypatch,
                                                                tmp_path):
    """A head the profile marks ``"fixed": true`` reaches the layer's plan as the pinned
    group (fixed top-k) while the other Vertical-Slash heads take the antidiagonal rule."""
    from vllm_minference.kernels.plan import PINNED, VERTICAL_SLASH
    from vllm_minference.profiles import HeadSpec, Profile, save_profile
    vs = dict(pattern=VERTICAL_SLASH, a=1000, b=6096)
    layer = [HeadSpec(**vs), HeadSpec(**vs, fixed=True), HeadSpec(**vs), HeadSpec(**vs)]
    save_profile(Profile(layers=[layer, layer[::-1]]), tmp_path / "pinned.json")
    _, vc = _builder(model_dir, mode="antidiagonal", antidiagonal_stride=16,
                     profile=str(tmp_path / "pinned.json"))
    lp = _impl(vc, monkeypatch).planner.patterns(_Layer(), "cpu")  # LAYER is layer 1
    assert lp.antidiagonal is not None
    assert lp.groups[PINNED].tolist() == [2]
    assert lp.groups[VERTICAL_SLASH].tolist() == [0, 1, 3]


def _profile_with_settings(path, **settings) -> str:
    """A tiny model's profile (2 layers x 4 heads, Vertical-Slash) carrying ``settings``."""
    from vllm_minference.kernels.plan import VERTICAL_SLASH
    from vllm_minference.profiles import HeadSpec, Profile, ProfileMetadata, save_profile
    head = HeadSpec(pattern=VERTICAL_SLASH, a=1000, b=6096)
    save_profile(Profile(metadata=ProfileMetadata(settings=settings),
                         layers=[[head] * 4] * 2), path)
    return str(path)


def test_profile_settings_apply_where_the_user_chose_no_mode(model_dir, monkeypatch, tmp_path):
    """A profile measured in one mode brings that mode and its settings to the builder and
    every layer alike (the builder's min_sparse_len decides which requests go sparse); a
    user who sets a mode gets the plugin defaults instead, and settings the user set win."""
    from vllm_minference import layer_plan
    prof = _profile_with_settings(tmp_path / "p.json", mode="antidiagonal",
                                  antidiagonal_stride=16, tau=0.9, min_sparse_len=256)
    said = []
    monkeypatch.setattr(layer_plan.logger, "info", lambda msg, *a: said.append(msg % a))
    monkeypatch.setattr(layer_plan, "_settings_logged", set())
    vc = make_vllm_config(model_dir, {"minference": {"profile": prof, "tau": 0.95}})
    spec = FullAttentionSpec(block_size=16, num_kv_heads=2, head_size=64, dtype=torch.float16)
    builder = MInferenceMetadataBuilder(spec, [LAYER], vc, torch.device("cpu"))
    planner = _impl(vc, monkeypatch).planner
    for s in (builder.settings, planner.settings):
        assert (s.mode, s.antidiagonal_stride, s.min_sparse_len, s.tau) == (
            "antidiagonal", 16, 256, 0.95)
    assert planner.patterns(_Layer(), "cpu").antidiagonal.stride == 16
    assert sum("settings from the profile p.json" in m for m in said) == 1  # once a process
    batch = make_paged_batch([200, 100], [300, 100])
    assert builder.build(0, batch.cam).minference.req_ids == [0]  # 300 >= 256 > 100
    chosen = make_vllm_config(model_dir, {"minference": {"profile": prof, "mode": "fixed"}})
    for s in (layer_plan.resolve_settings(chosen), _impl(chosen, monkeypatch).planner.settings):
        assert (s.mode, s.min_sparse_len, s.tau) == ("fixed", 65536, 0.98)


def test_profile_settings_the_page_size_cannot_run_are_not_taken(model_dir, monkeypatch,
                                                                  tmp_path):
    """An antidiagonal stride the user's --block-size does not hold would stop start-up;
    settings that only came from the profile give way instead, with one warning."""
    from vllm_minference import layer_plan
    prof = _profile_with_settings(tmp_path / "p.json", mode="antidiagonal",
                                  antidiagonal_stride=32)
    said = []
    monkeypatch.setattr(layer_plan.logger, "warning", lambda msg, *a: said.append(msg % a))
    monkeypatch.setattr(layer_plan, "_settings_logged", set())
    vc = make_vllm_config(model_dir, {"minference": {"profile": prof}})
    vc.cache_config.block_size, vc.cache_config.user_specified_block_size = 16, True
    for _ in range(2):
        assert layer_plan.resolve_settings(vc).mode == "fixed"
    assert _impl(vc, monkeypatch).planner.settings.mode == "fixed"
    assert len(said) == 1 and "multiple of 32" in said[0] and "p.json" in said[0]


def test_the_bundled_qwen_coder_profile_brings_its_measured_mode(tmp_path):
    """Qwen2.5-Coder-0.5B-Instruct (a local folder of that name here) serves in the mode its
    bundled profile's pinned heads were measured in; another model keeps fixed mode."""
    from vllm_minference.layer_plan import resolve_settings
    qwen = resolve_settings(make_vllm_config(tiny_model_dir(
        tmp_path / "qwen2.5-coder-0.5b-instruct")))
    assert (qwen.mode, qwen.antidiagonal_stride, qwen.tau, qwen.min_sparse_len) == (
        "antidiagonal", 32, 0.98, 32768)
    other = resolve_settings(make_vllm_config(tiny_model_dir(tmp_path / "other")))
    assert (other.mode, other.min_sparse_len) == ("fixed", 65536)


def test_trace_writes_one_line_per_layer_and_step(model_dir, monkeypatch, tmp_path):
    """With the trace setting each forward of a sparse step becomes one JSON line: the path
    the layer took (sparse, or dense because its lists or its prediction were too dense),
    its density and time; a step's lines are written once its last layer ran."""
    import json
    path = tmp_path / "trace.jsonl"
    builder, vc = _builder(model_dir, trace=str(path))
    impl = _impl(vc, monkeypatch)
    impl.planner.settings = impl.planner.settings.model_copy(update={"budget_scale": 0.0})
    assert len(impl.planner.profile.layers) == 2  # LAYER (index 1) ends a step
    batch = make_paged_batch([1, 130, 200], [300, 400, 200], seed=3)
    md = builder.build(0, batch.cam)
    out = torch.zeros_like(batch.query)
    for max_density in (1.0, 0.01, 0.01):
        impl.planner.guard.max_density = max_density
        impl.forward(_Layer(), batch.query, batch.key, batch.value, batch.kv_cache, md, out)
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [(r["step"], r["layer"], r["path"]) for r in lines] == [
        (0, 1, "sparse"), (1, 1, "dense (expected)"), (2, 1, "dense (expected)")]
    first = lines[0]
    assert first["kernel"] == "triton" and first["expected"] is None
    assert 0 < first["density"] < 0.9 and first["ms"] >= 0
    assert 0 <= first["plan_ms"] <= first["ms"]  # planned: its estimate and lists are timed
    assert "plan_ms" not in lines[1] and "_plan_start" not in lines[1]  # not planned
    assert (first["seqs"], first["rows"], first["kv_len"], first["dense_rows"]) == (2, 330, 400, 1)
    assert lines[1]["expected"] == pytest.approx(first["density"], rel=1e-3)
    assert lines[1]["density"] is None and lines[1]["kernel"] is None


def test_trace_flushes_a_step_when_the_next_one_starts(tmp_path):
    from vllm_minference.trace import StepTrace
    trace = StepTrace(str(tmp_path / "t.jsonl"), num_layers=4)
    for layer in (0, 1, 0):  # a step cut short (its later layers had nothing sparse)
        trace.end(trace.begin(torch.device("cpu")), layer, path="sparse",
                  density=torch.tensor(0.25))
    written = (tmp_path / "t.jsonl").read_text().splitlines()
    assert len(written) == 2 and '"density": 0.25' in written[0]
    trace.flush()
    assert len((tmp_path / "t.jsonl").read_text().splitlines()) == 3
    assert trace.step == 1


@pytest.mark.parametrize("extra_blocks", [0, 2])
@pytest.mark.parametrize("memory_order", ["HND", "NHD"])
def test_forward_fa3_page_lists(model_dir, monkeypatch, device, memory_order, extra_blocks):
    """With attention_kernel fa3 the sparse rows come from the page lists (FA3 emulated on
    the CPU) over an HND cache, with the lists' extra tiles where set; an NHD cache (not
    what the backend allocates) falls back to the Triton kernel on the work lists
    themselves (no extra tiles)."""
    from vllm_minference.kernels.page_lists import attention as page_attention
    from vllm_minference.kernels.page_lists.reference import (emulate_fa3_varlen,
                                                             page_list_mask)
    monkeypatch.setattr(page_attention, "fa3_varlen", lambda: emulate_fa3_varlen)
    monkeypatch.setattr("vllm_minference.layer_plan.FA3_MIN_KEYS", 0)  # short test rows
    q_lens, seq_lens = [1, 130, 200], [300, 400, 200]
    batch = make_paged_batch(q_lens, seq_lens, seed=2, device=device, memory_order=memory_order)
    builder, vc = _builder(model_dir, device)
    impl = _impl(vc, monkeypatch)
    impl.planner.kernel = "fa3"
    impl.planner.settings = impl.planner.settings.model_copy(
        update={"budget_scale": 0.0, "extra_blocks": extra_blocks})
    md = builder.build(0, batch.cam)
    sb = md.minference
    out = torch.full_like(batch.query, float("nan"))
    impl.forward(_Layer(), batch.query, batch.key, batch.value, batch.kv_cache, md, out)
    key_cache, value_cache = batch.kv_cache.transpose(1, 2).split(64, dim=-1)
    kv = KVSource.paged(key_cache, value_cache, sb.block_table)
    wl = plan_layer(batch.query, kv, sb.layout, impl.planner.patterns(_Layer(), device))
    assert float(wl.density(sb.layout).max()) < 0.9  # really sparse
    assert (wl.extra is not None and bool((wl.extra >= 0).any())) == (extra_blocks > 0)
    if memory_order == "HND":
        mask = lambda b, h, ql, kl: page_list_mask(wl, sb.layout, 192, b, h)  # noqa: E731
        assert sb._geometry  # the step's page geometry, shared by its layers
    else:
        mask = lambda b, h, ql, kl: worklist_mask(wl, sb.layout, b, h)  # noqa: E731
    expect = masked_attention_reference(batch.query, kv, sb.layout, mask)
    rows = torch.arange(1, 331, device=out.device)
    assert not out[rows].isnan().any()
    assert float((out[rows].double() - expect[rows]).norm() / expect[rows].norm()) < 1e-2


def test_forward_with_fa3_estimate_statistics(model_dir, monkeypatch, device):
    """estimate_stats fa3: the estimate's row statistics come from FA3 (emulated here) where
    FA3 serves the layer, and the layer's output matches the two-pass estimate's."""
    from vllm_minference.kernels.page_lists import attention as page_attention
    from vllm_minference.kernels.page_lists.reference import emulate_fa3_varlen
    from vllm_minference.kernels.vertical_slash import estimate_row_lse
    monkeypatch.setattr(page_attention, "fa3_varlen", lambda: emulate_fa3_varlen)
    monkeypatch.setattr("vllm_minference.layer_plan.FA3_MIN_KEYS", 0)
    calls = []

    def emulated(*args, **kwargs):
        calls.append(args[2].num_seqs)
        return estimate_row_lse(*args, varlen_fn=emulate_fa3_varlen, **kwargs)
    monkeypatch.setattr("vllm_minference.layer_plan.estimate_row_lse", emulated)
    batch = make_paged_batch([1, 130, 200], [300, 400, 200], seed=4, device=device)
    builder, vc = _builder(model_dir, device, estimate_stats="fa3")
    impl = _impl(vc, monkeypatch)
    impl.planner.settings = impl.planner.settings.model_copy(update={"budget_scale": 0.0})
    md = builder.build(0, batch.cam)
    outs = []
    for kernel in ("fa3", "triton"):  # the Triton kernel keeps the Triton statistics
        impl.planner.kernel = kernel
        out = torch.full_like(batch.query, float("nan"))
        impl.forward(_Layer(), batch.query, batch.key, batch.value, batch.kv_cache, md, out)
        outs.append(out)
        assert calls == [2]  # once, for the fa3 layer's two sparse sequences
    impl.planner.kernel = "fa3"
    impl.planner.settings = impl.planner.settings.model_copy(update={"estimate_stats": "triton"})
    two_pass = torch.full_like(batch.query, float("nan"))
    impl.forward(_Layer(), batch.query, batch.key, batch.value, batch.kv_cache, md, two_pass)
    assert calls == [2]
    rows = torch.arange(1, 331, device=device)
    assert not outs[0][rows].isnan().any()
    torch.testing.assert_close(outs[0][rows], two_pass[rows], atol=1e-3, rtol=1e-3)


def test_kernel_choice_and_hnd_cache(model_dir, monkeypatch):
    from vllm_minference.kernels import SeqLayout
    from vllm_minference.layer_plan import FA3_MIN_KEYS, mean_causal_keys, resolve_kernel
    assert resolve_kernel("auto", 3) == "fa3"
    assert resolve_kernel("auto", 2) == "triton"
    assert resolve_kernel("auto", None) == "triton"
    assert resolve_kernel("triton", 3) == "triton"
    assert resolve_kernel("fa3", 2) == "triton"  # with one warning (no FA3 here)
    shape = MInferenceBackend.get_kv_cache_shape(10, 64, 2, 64)
    order = MInferenceBackend.get_kv_cache_stride_order()
    assert shape == (10, 2, 64, 128) and order == (0, 1, 2, 3)  # logical order = memory order
    assert MInferenceBackend.get_kv_cache_stride_order(include_num_layers_dimension=True) == (
        1, 2, 0, 3, 4)
    # per step: FA3 lists only for an HND cache and lists dense enough to pay for them
    _, vc = _builder(model_dir)
    planner = _impl(vc, monkeypatch).planner
    planner.kernel = "fa3"
    hnd = make_paged_batch([64], [64]).kv_cache
    nhd = make_paged_batch([64], [64], memory_order="NHD").kv_cache
    layout = SeqLayout.from_lengths([65536], [131072], "cpu")  # rows see 98304.5 keys
    assert mean_causal_keys(layout) == 98304.5
    assert mean_causal_keys(SeqLayout.from_lengths([4, 2], [4, 10], "cpu")) == (1 + 2 + 3 + 4 + 9 + 10) / 6
    assert planner.tile_kernel(hnd, 64) == "triton"  # nothing known yet
    planner.guard.basis_keys = FA3_MIN_KEYS
    assert planner.tile_kernel(hnd, 64) == "fa3"
    assert planner.tile_kernel(nhd, 64) == "triton"
    planner.guard.basis_keys = FA3_MIN_KEYS / 2  # too few keys per virtual sequence
    assert planner.tile_kernel(hnd, 64) == "triton"
    planner.settings = planner.settings.model_copy(update={"extra_blocks": 4})
    assert planner.tile_kernel(hnd, 64, extra=True) == "fa3"  # only page lists read them
    assert planner.tile_kernel(nhd, 64, extra=True) == "triton"
    assert planner.plan_options()["extra_blocks"] == 4
    planner.kernel = "triton"
    assert planner.plan_options()["extra_blocks"] == 0  # not computed for nothing
    planner.settings = planner.settings.model_copy(update={"mode": "antidiagonal",
                                                           "antidiagonal_shared": True})
    assert not planner.plan_options()["antidiagonal"].fa3_groups  # one list per block
    planner.kernel = "fa3"
    assert planner.plan_options()["antidiagonal"].fa3_groups  # FA3 row groups share one
    planner.kernel = "triton"
    planner.guard.basis_keys = 98304.5
    assert planner.tile_kernel(hnd, 64) == "triton"


def test_unsupported_layers_stay_dense_with_one_warning(model_dir, monkeypatch):
    from vllm.config import set_current_vllm_config
    builder, vc = _builder(model_dir)
    with set_current_vllm_config(vc):
        cases = {
            "sliding": MInferenceImpl(4, 64, 0.1, 2, None, 256, "auto"),
            "fp8": MInferenceImpl(4, 64, 0.1, 2, None, None, "fp8"),
            "head96": MInferenceImpl(4, 96, 0.1, 2, None, None, "auto"),
            "softcap": MInferenceImpl(4, 64, 0.1, 2, None, None, "auto", logits_soft_cap=30.0),
            "ok": MInferenceImpl(4, 64, 0.1, 2, None, None, "auto"),
        }
    assert "sliding" in cases["sliding"].dense_reason
    assert "fp8" in cases["fp8"].dense_reason
    assert "96" in cases["head96"].dense_reason
    assert "soft-cap" in cases["softcap"].dense_reason
    assert cases["ok"].dense_reason is None and cases["ok"].planner is not None
    for name in ("sliding", "fp8", "head96", "softcap"):
        assert cases[name].planner is None

    class FakeLayer:
        def __init__(self, impl):
            self.impl = impl
    ctx = vc.compilation_config.static_forward_context
    names = []
    for i, key in enumerate(["sliding", "sliding", "ok"]):
        name = f"model.layers.{i}.self_attn.attn"
        ctx[name] = FakeLayer(cases[key])
        names.append(name)
    messages = warn_dense_layers(vc, names)
    assert len(messages) == 1 and "2 attention layer(s)" in messages[0]
    assert "sliding-window" in messages[0]
    assert warn_dense_layers(vc, names) == []  # said once


def test_chunk_hint_once_for_long_context_with_small_chunks():
    from types import SimpleNamespace

    def config(max_len, chunk):
        return SimpleNamespace(model_config=SimpleNamespace(max_model_len=max_len),
                               scheduler_config=SimpleNamespace(max_num_batched_tokens=chunk))
    assert chunk_hint(config(32768, 8192)) is None  # short context: nothing to gain
    assert chunk_hint(config(1 << 20, 65536)) is None  # already large chunks
    assert chunk_hint(config(131072, 131072)) is None  # no chunking at all
    assert chunk_hint(config(1 << 20, 16384), "fixed") is None  # measured gain: adaptive only
    msg = chunk_hint(config(1 << 20, 16384))
    assert msg is not None and "16384" in msg and "--max-num-batched-tokens 65536" in msg
    assert chunk_hint(config(1 << 20, 16384)) is None  # said once per process
    assert chunk_hint(SimpleNamespace()) is None  # a config without these parts


def test_weights_loaded_hook_warms_up_sparse_layers_only(model_dir, monkeypatch):
    from vllm.config import set_current_vllm_config
    _, vc = _builder(model_dir)
    with set_current_vllm_config(vc):
        sparse = MInferenceImpl(4, 64, 0.125, 2, None, None, "auto")
        dense = MInferenceImpl(4, 64, 0.125, 2, None, 256, "auto")  # sliding window
    seen = []
    monkeypatch.setattr(type(sparse.planner), "warm_up",
                        lambda self, *a: seen.append((self.page_size, *a)))
    sparse.process_weights_after_loading(torch.bfloat16)
    dense.process_weights_after_loading(torch.bfloat16)
    assert seen == [(planned_page_size(vc.cache_config), 64, torch.bfloat16, 0.125)]


def test_backend_asks_for_64_token_pages_unless_the_user_chose():
    from vllm.config import CacheConfig
    assert MInferenceBackend.get_preferred_block_size(16) == 64
    assert MInferenceBackend.get_preferred_block_size(128) == 128
    assert MInferenceBackend.supports_block_size(64)  # FlashAttention's MultipleOf(16)
    assert planned_page_size(CacheConfig()) == 64  # default: vLLM will apply our preference
    assert planned_page_size(CacheConfig(block_size=16)) == 16  # --block-size 16 stays
    assert planned_page_size(None) == 64


def test_density_guard_decides_from_the_previous_step_and_reprobes():
    from vllm_minference.kernels import SeqLayout
    from vllm_minference.layer_plan import DensityGuard
    layout = SeqLayout.from_lengths([1024], [1024], "cpu")  # rows see 512.5 keys on average
    g = DensityGuard(max_density=0.45, reprobe_steps=4)
    assert g.should_plan(layout)
    assert g.decide(torch.tensor(0.9), layout) is False  # first step: its own density, waited for
    assert g.known_keys == pytest.approx(0.9 * 512.5)  # what carries over: keys per row
    # dense lately: no planning for reprobe_steps - 1 steps, then one re-measuring plan
    assert [g.should_plan(layout) for _ in range(4)] == [False, False, False, True]
    assert g.decide(torch.tensor(0.1), layout) is False  # decided by the previous step (0.9)
    assert g.should_plan(layout) and g.decide(torch.tensor(0.2), layout) is True  # 0.1 arrived
    assert g.decide(torch.tensor(0.8), layout) is True  # still the previous one (0.2)
    assert g.decide(torch.tensor(0.8), layout) is False
    assert g.expected_density(layout) == pytest.approx(0.8)


def test_density_guard_carries_keys_per_row_across_growing_chunks():
    """Chunked prefill: the same budgets are a smaller share of a longer causal area, so a
    layer too dense on its first chunk is sparse again a few chunks later, without waiting
    for a re-probe.  Large jumps in the keys a row sees wait for the step's own density."""
    from vllm_minference.kernels import SeqLayout
    from vllm_minference.layer_plan import DensityGuard
    chunk = 65536
    layouts = [SeqLayout.from_lengths([chunk], [chunk * (i + 1)], "cpu") for i in range(6)]
    g = DensityGuard(max_density=0.45, reprobe_steps=16)
    assert g.should_plan(layouts[0])
    assert g.decide(torch.tensor(0.6), layouts[0]) is False  # 0.6 x 32768.5 keys per row
    assert g.waited == 1
    assert g.should_plan(layouts[1])  # 19661 / 98304.5 = 0.2 expected at 128K
    assert g.decide(torch.tensor(0.25), layouts[1]) is True  # 3x the keys: waited for
    assert g.waited == 2 and g.known_keys == pytest.approx(0.25 * 98304.5)
    assert g.decide(torch.tensor(0.2), layouts[2]) is True  # 1.67x: waited for
    assert g.waited == 3
    # 1.4x the keys and clearly sparse (0.14 expected): trusted, not waited for
    assert g.expected_density(layouts[3]) == pytest.approx(0.2 * 163840.5 / 229376.5)
    assert g.decide(torch.tensor(0.3), layouts[3]) is True and g.waited == 3
    # the step's own density arrives for the next prediction
    assert g.expected_density(layouts[4]) == pytest.approx(0.3 * 229376.5 / 294912.5)
    # a step trusted at 0.23 expected finds 0.5; the next is a close call and waits: 0.41
    # expected, 0.6 found
    assert g.decide(torch.tensor(0.5), layouts[4]) is True and g.waited == 3
    assert g.expected_density(layouts[5]) == pytest.approx(0.5 * 294912.5 / 360448.5)
    assert g.decide(torch.tensor(0.6), layouts[5]) is False and g.waited == 4
    # a new (shorter) prompt: this layer was too dense at 360K keys, so it is at 64K
    short = SeqLayout.from_lengths([chunk], [chunk], "cpu")
    assert not g.should_plan(short)


def test_density_guard_across_prompts():
    """A new prompt plans, except where the layer was found clearly too dense with at least
    as many keys per row (then it runs dense unplanned, and re-measures every
    reprobe_steps); a sparse finding with fewer keys withdraws that.  It waits for its own
    density where the layer's history holds no step of about its length (here 16K after
    64K: 4x fewer keys)."""
    from vllm_minference.kernels import SeqLayout
    from vllm_minference.layer_plan import DensityGuard
    k16, k32, k64 = (SeqLayout.from_lengths([16384], [n], "cpu") for n in (16384, 32768, 65536))
    g = DensityGuard(max_density=0.45, reprobe_steps=4)
    assert g.should_plan(k64) and g.decide(torch.tensor(0.3), k64) is True
    assert g.should_plan(k16)  # a new prompt, no dense finding: plan and wait
    assert g.decide(torch.tensor(0.9), k16) is False and g.waited == 2
    assert g.dense_up_to == pytest.approx(8192.5)
    # the next prompt's first chunk: dense without planning; its second chunk sees more keys
    assert not g.should_plan(k16)
    assert g.should_plan(k32)
    assert g.decide(torch.tensor(0.5), k32) is False  # found, not clearly too dense
    assert g.dense_up_to == pytest.approx(8192.5)
    # many prompts of 16K: one re-measuring plan every reprobe_steps
    assert [g.should_plan(k16) for _ in range(4)] == [False, False, True, False]
    # that re-measure finds it sparse: the step itself follows the layer's last finding at
    # 16K (0.9, clear of the margin: no wait), and the rule is withdrawn, 16K prompts plan
    # again
    assert g.decide(torch.tensor(0.3), k16) is False and g.waited == 3
    assert g.dense_up_to == 0.0
    assert g.should_plan(k16)
    assert g.decide(torch.tensor(0.3), k16) is True and g.waited == 3


def _prompt_walk(guard, layouts, densities) -> list[tuple[bool, bool]]:
    """Each step of a prompt whose lists would find ``densities``: (took the sparse path,
    waited for its own density); a step the guard does not plan runs dense unwaited."""
    steps = []
    for lay, density in zip(layouts, densities):
        waited = guard.waited
        sparse = guard.should_plan(lay) and guard.decide(torch.tensor(density), lay)
        steps.append((sparse, guard.waited > waited))
    return steps


def test_density_guard_trusts_a_comparable_step_of_an_earlier_prompt():
    """Waiting for a step's own density stalls the host (61 waits in a 128K prefill before
    this rule, 26 with it, H200).  A new prompt's first sparse chunk need not wait where the
    layer's history holds a step of about its length from an earlier prompt, and a
    share-based layer's chunk may see up to 2.25x the keys of the step it is predicted from
    (a prediction off by at most 1.5x whatever the true growth); close calls and unseen
    lengths still wait."""
    from vllm_minference.kernels import SeqLayout
    from vllm_minference.layer_plan import SHARE_KEYS_GROWTH, DensityGuard
    chunks = [SeqLayout.from_lengths([16384], [16384 * i], "cpu") for i in range(2, 9)]
    causal = [c.causal_keys() / 16384 for c in chunks]  # 24.5K ... 122.9K keys a row
    real = [0.3 * (causal[0] / c) ** 0.5 for c in causal]  # a sparse layer, 0.3 at 32K
    g = DensityGuard(max_density=0.45, keys_growth=SHARE_KEYS_GROWTH)
    assert g.max_ratio == pytest.approx(2.25)
    # first prompt: only its first step waits (40.9K after 24.5K keys: 1.67x, within 2.25)
    assert _prompt_walk(g, chunks, real) == [(True, True)] + [(True, False)] * 6
    # the next prompt: its 32K chunk is predicted from the last prompt's 48K step, whose
    # keys per row (not the last step's, 1.7x more) choose its kernel
    assert _prompt_walk(g, chunks[:1], real) == [(True, False)]
    assert g.basis_keys == pytest.approx(real[1] * causal[1])
    assert _prompt_walk(g, chunks[1:], real[1:]) == [(True, False)] * 6
    assert g.waited == 1
    # budget lists (growth 0) allow 1.5x: the 48K chunk after the 32K one waits once
    b = DensityGuard(max_density=0.45)
    assert b.max_ratio == pytest.approx(1.5)
    assert [w for _, w in _prompt_walk(b, chunks, [0.3] * 7)] == [True, True] + [False] * 5
    assert b.basis_keys == pytest.approx(0.3 * causal[5])  # trusted: the step before's
    # a length not seen lately waits: 1M keys after 128K
    long = SeqLayout.from_lengths([65536], [1 << 20], "cpu")
    assert _prompt_walk(g, [long], [0.05]) == [(True, True)]
    # 64K chunks (3x the keys of the first chunk at the second): the first prompt waits at
    # its first two chunks, the next prompt at none
    big = [SeqLayout.from_lengths([65536], [65536 * i], "cpu") for i in range(1, 9)]
    seen = [c.causal_keys() / 65536 for c in big]
    real = [0.3 * (seen[0] / c) ** 0.5 for c in seen]
    g = DensityGuard(max_density=0.45, keys_growth=SHARE_KEYS_GROWTH)
    assert [w for _, w in _prompt_walk(g, big, real)] == [True, True] + [False] * 6
    assert [w for _, w in _prompt_walk(g, big, real)] == [False] * 8
    # the newest comparable step decides: a close call there waits, though an older one
    # of that length was clear
    g = DensityGuard(max_density=0.45, keys_growth=SHARE_KEYS_GROWTH)
    _prompt_walk(g, chunks[:1], [0.3])
    _prompt_walk(g, chunks[:1], [0.5])  # trusted 0.3 (sparse); 0.5 arrives afterwards
    assert _prompt_walk(g, chunks[:1], [0.3]) == [(True, True)]


def test_density_guard_pays_one_step_for_a_prompt_denser_than_the_last():
    """A prediction from another prompt can be wrong about this one: a layer sparse in the
    last prompt and random-like in this one runs one chunk sparse (at the cost of that
    chunk's lists, never a wrong answer), then that chunk's own density decides."""
    from vllm_minference.kernels import SeqLayout
    from vllm_minference.layer_plan import SHARE_KEYS_GROWTH, DensityGuard
    chunks = [SeqLayout.from_lengths([16384], [16384 * i], "cpu") for i in range(2, 9)]
    g = DensityGuard(max_density=0.45, keys_growth=SHARE_KEYS_GROWTH)
    _prompt_walk(g, chunks, [0.2] * 7)
    paths = [sparse for sparse, _ in _prompt_walk(g, chunks, [0.98] * 7)]
    assert paths == [True] + [False] * 6


def _guard_walk(guard, layouts, density: float) -> list[bool]:
    """Which steps the guard plans, each planned step finding ``density`` (and going dense)."""
    plans = []
    for lay in layouts:
        plans.append(guard.should_plan(lay))
        if plans[-1]:
            assert guard.decide(torch.tensor(density), lay) is False
    return plans


def test_density_guard_keeps_random_like_layers_dense():
    """Random-like attention: the lists cover a fixed share whatever the length, so keys
    per row grow with the keys a row sees.  Falling predictions reach the margin (or a large
    jump) before they pass below it, and there the step's own density decides."""
    from vllm_minference.kernels import SeqLayout
    from vllm_minference.layer_plan import DensityGuard
    chunk = 65536
    layouts = [SeqLayout.from_lengths([chunk], [chunk * (i + 1)], "cpu") for i in range(6)]
    g = DensityGuard(max_density=0.45, reprobe_steps=16)
    assert g.decide(torch.tensor(0.95), layouts[0]) is False
    assert g.should_plan(layouts[1])  # 0.32 expected, but 3x the keys: wait
    assert g.decide(torch.tensor(0.95), layouts[1]) is False
    # 0.57, 0.41 (within the margin: planned), 0.74, 0.6
    assert _guard_walk(g, layouts[2:], 0.95) == [False, True, False, False]
    # issue 5's worst case: dummy weights at 128K in vLLM's 16K chunks, sparse from 64K keys
    # (the 4th chunk on): every step runs dense, two of five planned
    g = DensityGuard(max_density=0.45, reprobe_steps=16)
    steps = [SeqLayout.from_lengths([16384], [16384 * i], "cpu") for i in range(4, 9)]
    assert g.decide(torch.tensor(1.0), steps[0]) is False
    assert _guard_walk(g, steps[1:], 1.0) == [False, False, True, False]


def test_density_guard_for_share_based_lists_plans_a_random_like_layer_once():
    """Antidiagonal mode keeps a share of each block's attention: a random-like layer keeps
    about all of it at any length, and each plan pays the estimate.  Its guard predicts with
    keys growing as the square root of the keys seen, so such a layer plans once in issue
    5's worst case (where budget-bounded prediction planned two steps of five), while a
    layer just above the bar still re-plans as its prompt grows."""
    from vllm_minference.config import MInferenceSettings
    from vllm_minference.kernels import SeqLayout
    from vllm_minference.layer_plan import SHARE_KEYS_GROWTH, DensityGuard, LayerPlanner
    from vllm_minference.profiles import default_profile
    steps = [SeqLayout.from_lengths([16384], [16384 * i], "cpu") for i in range(4, 9)]
    g = DensityGuard(max_density=0.45, reprobe_steps=16, keys_growth=SHARE_KEYS_GROWTH)
    assert g.decide(torch.tensor(0.98), steps[0]) is False
    causal = [s.causal_keys() / 16384 for s in steps]
    assert g.expected_density(steps[4]) == pytest.approx(0.98 * (causal[0] / causal[4]) ** 0.5)
    assert _guard_walk(g, steps[1:], 0.98) == [False, False, False, False]
    g = DensityGuard(max_density=0.45, reprobe_steps=16, keys_growth=SHARE_KEYS_GROWTH)
    assert g.decide(torch.tensor(0.6), steps[0]) is False  # 0.53 expected next: within margin
    assert g.should_plan(steps[1])
    assert g.decide(torch.tensor(0.4), steps[1]) is True
    modes = {m: LayerPlanner(MInferenceSettings(mode=m), default_profile(1, 4), [0, 1, 2, 3],
                             2).guard.keys_growth for m in ("fixed", "adaptive", "antidiagonal")}
    assert modes == {"fixed": 0.0, "adaptive": 0.0, "antidiagonal": SHARE_KEYS_GROWTH}


def test_extra_blocks_without_page_lists_warn_once_when_set(monkeypatch):
    """Only the FA3 page lists read extra tiles: a user who sets ``extra_blocks`` on an
    engine without them is told once; fixed mode's own default is not warned about."""
    from vllm_minference import layer_plan
    said = []
    monkeypatch.setattr(layer_plan.logger, "warning", lambda msg, *a: said.append(msg % a))
    monkeypatch.setattr(layer_plan, "_warned_extra", False)
    layer_plan._warn_extra_without_fa3(0, "triton")  # the default (None -> 0 here)
    layer_plan._warn_extra_without_fa3(8, "fa3")
    assert said == []
    layer_plan._warn_extra_without_fa3(8, "triton")
    layer_plan._warn_extra_without_fa3(8, "triton")
    assert len(said) == 1 and "extra_blocks=8" in said[0]
