"""Kernel warm-up at model load: runs every kernel once, once per shape, never fatal."""

import pytest
import torch

from vllm_minference import warmup
from vllm_minference.warmup import warm_up_kernels


def test_warm_up_runs_all_patterns_once_per_shape(device, monkeypatch):
    monkeypatch.setattr(warmup, "_done", set())
    calls = []
    real = warmup.sparse_attention

    def counted(*a, **kw):
        calls.append(a[3].desc.shape)  # the work list of every head of the layer
        return real(*a, **kw)
    monkeypatch.setattr(warmup, "sparse_attention", counted)
    args = (4, 2, 64, torch.float16, 16, 0.125)
    assert warm_up_kernels(*args, gamma=None, device=device)
    assert not warm_up_kernels(*args, gamma=None, device=device)  # cached per process
    assert warm_up_kernels(*args, gamma=0.9, device=device)  # adaptive selection too
    assert len(calls) == 2 and calls[0][0] == 4


def test_planner_warm_up_is_a_no_op_without_cuda(monkeypatch):
    from vllm_minference.config import MInferenceSettings
    from vllm_minference.layer_plan import LayerPlanner
    from vllm_minference.profiles import default_profile
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    ran = []
    monkeypatch.setattr("vllm_minference.layer_plan.warm_up_kernels",
                        lambda *a, **k: ran.append(a))
    planner = LayerPlanner(MInferenceSettings(), default_profile(1, 4), [0, 1, 2, 3], 2)
    planner.warm_up(64, torch.bfloat16, 0.125)
    assert ran == []


def test_planner_warm_up_failure_only_warns(monkeypatch):
    from vllm_minference.config import MInferenceSettings
    from vllm_minference.layer_plan import LayerPlanner
    from vllm_minference.profiles import default_profile
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)

    def boom(*a, **k):
        raise RuntimeError("no compiler")
    monkeypatch.setattr("vllm_minference.layer_plan.warm_up_kernels", boom)
    planner = LayerPlanner(MInferenceSettings(), default_profile(1, 4), [0, 1, 2, 3], 2)
    planner.warm_up(64, torch.bfloat16, 0.125)  # must not raise


def test_bad_plan_option_stops_start_up_not_the_first_prefill(monkeypatch):
    from vllm_minference.config import MInferenceSettings
    from vllm_minference.layer_plan import LayerPlanner
    from vllm_minference.profiles import default_profile
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr("vllm_minference.layer_plan.warm_up_kernels", lambda *a, **k: True)
    settings = MInferenceSettings(mode="antidiagonal", antidiagonal_launch="fast")
    with pytest.raises(ValueError, match="launch option"):
        LayerPlanner(settings, default_profile(1, 4), [0, 1, 2, 3], 2)
    good = MInferenceSettings(mode="antidiagonal", antidiagonal_launch="ir128k128w8n3")
    LayerPlanner(good, default_profile(1, 4), [0, 1, 2, 3], 2).warm_up(64, torch.bfloat16, 0.1)
    # a stride the KV pages cannot hold whole groups of (--block-size 16, stride 32)
    wide = MInferenceSettings(mode="antidiagonal", antidiagonal_stride=32)
    with pytest.raises(ValueError, match="block-size"):
        LayerPlanner(wide, default_profile(1, 4), [0, 1, 2, 3], 2, page_size=16)
    LayerPlanner(wide, default_profile(1, 4), [0, 1, 2, 3], 2, page_size=64)


def test_fa3_warm_up_failure_falls_back_to_triton(monkeypatch):
    from vllm_minference.config import MInferenceSettings
    from vllm_minference.layer_plan import LayerPlanner
    from vllm_minference.profiles import default_profile
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    kernels = []

    def fa3_fails(*a, kernel, **k):
        kernels.append(kernel)
        if kernel == "fa3":
            raise RuntimeError("FA3 rejects the page lists")
        return True
    monkeypatch.setattr("vllm_minference.layer_plan.warm_up_kernels", fa3_fails)
    planner = LayerPlanner(MInferenceSettings(), default_profile(1, 4), [0, 1, 2, 3], 2,
                           fa_version=3)
    assert planner.kernel == "fa3"
    planner.warm_up(64, torch.bfloat16, 0.125)
    assert kernels == ["fa3", "triton"] and planner.kernel == "triton"


def test_planner_warms_up_every_distinct_vertical_slash_budget(monkeypatch):
    """The index builder's and adaptive selection's compiled variants follow the largest
    budgets of a layer (past 1000/6096): each distinct maximum of the profile is warmed up,
    budget_scale applied, so none compiles inside the first long prefill."""
    from vllm_minference.config import MInferenceSettings
    from vllm_minference.layer_plan import LayerPlanner
    from vllm_minference.profiles import HeadSpec, default_profile
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    budgets = []
    monkeypatch.setattr("vllm_minference.layer_plan.warm_up_kernels",
                        lambda *a, vs_budget, **k: budgets.append(vs_budget) or True)
    profile = default_profile(3, 4)
    big = HeadSpec(pattern="vertical_and_slash", a=3500, b=24528)
    stream = HeadSpec(pattern="stream_llm", a=128, b=1024)
    layers = [profile.layers[0], [big] + profile.layers[1][1:], [stream] * 4]
    profile = profile.model_copy(update={"layers": layers})
    settings = MInferenceSettings(budget_scale=0.5)
    LayerPlanner(settings, profile, [0, 1, 2, 3], 2).warm_up(64, torch.bfloat16, 0.125)
    assert budgets == [(500, 3048), (1750, 12264)]
    budgets.clear()  # heads of this shard (TP) only: head 0 is elsewhere
    LayerPlanner(settings, profile, [1, 2], 2).warm_up(64, torch.bfloat16, 0.125)
    assert budgets == [(500, 3048)]


def test_planner_warms_up_every_block_sparse_ranking_width(monkeypatch):
    """Block-Sparse heads rank their tiles in a kernel compiled per power of two of the
    budget: the warm-up covers each width the profile's layers need (budget_scale applied),
    together with the Vertical-Slash budgets."""
    from vllm_minference.config import MInferenceSettings
    from vllm_minference.layer_plan import LayerPlanner
    from vllm_minference.profiles import HeadSpec, default_profile
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    calls = []
    monkeypatch.setattr("vllm_minference.layer_plan.warm_up_kernels",
                        lambda *a, vs_budget, bs_budget, **k: calls.append(
                            (vs_budget, bs_budget)) or True)
    profile = default_profile(4, 4)
    def bs(k):
        return HeadSpec(pattern="block_sparse", a=k, b=0)
    layers = [profile.layers[0], [bs(200)] + profile.layers[1][1:], [bs(100), bs(6)] * 2,
              [bs(8)] * 4]
    profile = profile.model_copy(update={"layers": layers})
    LayerPlanner(MInferenceSettings(budget_scale=0.5), profile, [0, 1, 2, 3], 2).warm_up(
        64, torch.bfloat16, 0.125)
    # scaled budgets 100, 50 (+3), 4: 99 ranked tiles (width 128), 49 (64), 3 (16, the least)
    assert calls == [((500, 3048), 4), ((500, 3048), 50), ((500, 3048), 100)]


def test_warm_up_with_large_budgets(device, monkeypatch):
    """A budget wider than the warm-up's tiny sequence still runs (the lists are as wide as
    the budget, the sequence fills part of them)."""
    monkeypatch.setattr(warmup, "_done", set())
    args = (3, 1, 64, torch.float16, 16, 0.125)
    assert warm_up_kernels(*args, gamma=None, device=device, vs_budget=(3500, 9000),
                           bs_budget=100)
    assert warm_up_kernels(*args, gamma=0.9, device=device, vs_budget=(3500, 9000))
