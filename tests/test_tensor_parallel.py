"""Tensor parallelism: each rank plans with the profile entries of its own global heads."""

import pytest
import torch

from vllm_minference.kernels import A_SHAPE, VERTICAL_SLASH
from vllm_minference.layer_plan import LayerPlanner, global_heads
from vllm_minference.profiles import HeadSpec, Profile
from vllm_minference.config import MInferenceSettings


def _profile(num_layers: int, num_heads: int) -> Profile:
    """Every (layer, head) gets a distinct budget, so a wrong mapping cannot go unnoticed."""
    return Profile(layers=[[HeadSpec(pattern=VERTICAL_SLASH if h % 2 == 0 else A_SHAPE,
                                     a=1000 + 100 * layer + h, b=2000 + 100 * layer + h)
                            for h in range(num_heads)] for layer in range(num_layers)])


@pytest.mark.parametrize("tp", [1, 2, 7])
def test_ranks_cover_every_head_once_in_order(tp):
    heads = [h for rank in range(tp) for h in global_heads(rank, 14 // tp, tp, 14)]
    assert heads == list(range(14))


def test_head_count_mismatch_is_an_error():
    with pytest.raises(ValueError, match="heads"):
        global_heads(0, 5, 2, 14)


@pytest.mark.parametrize("tp", [1, 2])
def test_each_rank_uses_its_global_heads_budgets(tp):
    profile = _profile(num_layers=3, num_heads=14)
    settings = MInferenceSettings()
    per_rank = 14 // tp

    class Layer:
        layer_name = "model.layers.2.self_attn.attn"

    for rank in range(tp):
        planner = LayerPlanner(settings, profile, global_heads(rank, per_rank, tp, 14),
                               num_kv_heads=2 // tp)
        lp = planner.patterns(Layer(), torch.device("cpu"))
        assert lp.num_heads == per_rank
        for kind in (VERTICAL_SLASH, A_SHAPE):
            local = lp.groups[kind].tolist()
            want_global = [rank * per_rank + h for h in local]
            assert [profile.layers[2][g].pattern for g in want_global] == [kind] * len(local)
            assert lp.budget_a[kind].tolist() == [1200 + g for g in want_global]
            assert lp.budget_b[kind].tolist() == [2200 + g for g in want_global]
