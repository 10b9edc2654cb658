"""The fused fixed-budget selection (one radix-select kernel) against its PyTorch reference.

``select_vertical_slash`` must return exactly what ``select_vertical_slash_reference``
returns: the same lists, padding and counts, ties at a budget's cut included (the highest
positions are kept), which integer-valued scores force here on purpose.
"""

import random

import pytest
import torch

from vllm_minference.kernels.layout import SeqLayout
from vllm_minference.kernels.vertical_slash.reference import select_vertical_slash_reference
from vllm_minference.kernels.vertical_slash.selection import select_vertical_slash


def _case(seed: int, device: str) -> dict:
    """Random lengths (some shorter than the budgets or the forced floors), per-head budgets
    from 0 past the length, continuous or heavily tied scores, zeros past ``kv_len``."""
    rng = random.Random(seed)
    g = torch.Generator().manual_seed(seed)
    B, H = rng.randint(1, 3), rng.randint(1, 4)
    kv_lens = [rng.choice([rng.randint(1, 63), rng.randint(64, 900), rng.randint(900, 3000)])
               for _ in range(B)]
    n = max(kv_lens) + rng.choice([0, 0, 37])  # the estimate's width may exceed every length
    scores = []
    for _ in range(2):
        x = torch.rand(B, H, n, generator=g)
        if seed % 3 == 1:
            x = (x * 5).floor()  # many ties at every cut
        elif seed % 3 == 2:
            x = x ** 8  # a few heavy lines, many near zero
        for b, kl in enumerate(kv_lens):
            x[b, :, kl:] = 0
        scores.append(x.to(device))
    v_budget = torch.tensor([rng.choice([0, 1, 30, 100, 1000, 5000]) for _ in range(H)])
    s_budget = torch.tensor([rng.choice([1, 50, 300, 6096]) for _ in range(H)])
    layout = SeqLayout.from_lengths([rng.randint(1, kl) for kl in kv_lens], kv_lens, device)
    return dict(vertical=scores[0], slash=scores[1], layout=layout,
                v_budget=v_budget.to(device), s_budget=s_budget.to(device),
                v_max=int(v_budget.max()) + rng.choice([0, 9]), s_max=int(s_budget.max()),
                keep_first=rng.choice([0, 4, 30]), keep_diag=rng.choice([1, 3, 100]))


@pytest.mark.parametrize("seed", range(24))
def test_fused_selection_matches_reference(device, seed):
    case = _case(seed, device)
    ref = select_vertical_slash_reference(**case)
    got = select_vertical_slash(**case)
    for name, r, o in zip(("cols", "n_cols", "diags", "n_diags"), ref, got):
        assert o.dtype == r.dtype and o.shape == r.shape, (name, o.shape, r.shape)
        assert torch.equal(o.cpu(), r.cpu()), (seed, name)


def test_forced_lines_and_counts(device):
    """Budgets below the forced floors keep the nearest forced lines; a budget past the
    length keeps every position; nothing past ``kv_len`` is ever kept."""
    layout = SeqLayout.from_lengths([10, 40], [10, 40], device)
    vert = torch.rand(2, 1, 40, device=device)
    slash = torch.rand(2, 1, 40, device=device)
    cols, n_cols, diags, n_diags = select_vertical_slash(
        vert, slash, layout, torch.tensor([3], device=device), torch.tensor([64], device=device),
        5, 64, keep_first=8, keep_diag=2)
    assert n_cols.cpu().tolist() == [[3], [3]]
    assert cols[:, 0, :3].cpu().tolist() == [[2, 1, 0], [2, 1, 0]]  # the first keys, nearest
    assert (cols[:, 0, 3:] == -1).all()
    assert n_diags.cpu().tolist() == [[10], [40]]
    assert diags[0, 0, :10].cpu().tolist() == list(range(9, -1, -1))
    assert (diags[0, 0, 10:] == -1).all()
