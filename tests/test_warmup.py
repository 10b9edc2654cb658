"""Kernel warm-up at model load: runs every kernel once, once per shape, never fatal."""

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
