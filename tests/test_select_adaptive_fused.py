"""The fused adaptive selection (two Triton kernels, two top-k) against its PyTorch reference.

``select_adaptive`` must return exactly what ``select_adaptive_reference`` returns: the same
lists, padding and counts.  Masses are continuous random numbers, so ties between estimated
masses (where the two could legitimately order equal keys differently) are improbable; the
ties that the rule itself makes (forced floors, the zero-mass local band) are exercised.
"""

import random

import pytest
import torch

from vllm_minference.kernels.layout import SeqLayout
from vllm_minference.kernels.vertical_slash import adaptive
from vllm_minference.kernels.vertical_slash.adaptive import select_adaptive
from vllm_minference.kernels.vertical_slash.reference import select_adaptive_reference

GAMMAS = [0.5, 0.9, 0.95, 1.0]


def _masses(kv_lens: list[int], H: int, g: torch.Generator, power: float,
            total: float = 64.0) -> torch.Tensor:
    """``[B, H, max kv]`` estimate-like masses summing to ``total``, 0 past ``kv_len``.

    Real estimates have equal column and diagonal totals (64 rows of probability); the
    tests give the diagonals another total so that ``gamma = 1`` does not hinge on the last
    bit of two float sums (where the reference and the kernels may round differently).
    """
    x = torch.rand(len(kv_lens), H, max(kv_lens), generator=g) ** power
    for b, kl in enumerate(kv_lens):
        x[b, :, kl:] = 0
    return x / x.sum(-1, keepdim=True) * total


def _case(seed: int) -> dict:
    """A random batch: lengths off the 64 grid (some below 64 or below keep_first), mixed
    budgets per head (below and above the floors), one of the gammas."""
    rng = random.Random(seed)
    g = torch.Generator().manual_seed(seed)
    B, H = rng.randint(1, 3), rng.randint(1, 5)
    kv_lens = []
    for _ in range(B):
        kl = rng.choice([rng.randint(1, 63)] + [rng.randint(65, 400), rng.randint(400, 1100)] * 2)
        kv_lens.append(kl + 1 if kl % 64 == 0 else kl)
    keep_first = rng.choice([0, 4, 30, 30, 90])
    keep_diag = rng.choice([1, 64, 100, 100, 300])
    v_ceil = [rng.choice([0, 10, 40, 100, 200, 2000]) for _ in range(H)]
    s_ceil = [rng.choice([0, 2, 6, 10, 15, 200]) for _ in range(H)]
    power = rng.choice([1.0, 4.0, 8.0])  # flat to a few heavy lines
    return dict(
        vertical=_masses(kv_lens, H, g, power),
        slash=_masses(kv_lens, H, g, power, rng.choice([48.0, 80.0])),
        layout=SeqLayout.from_lengths([rng.randint(1, kl) for kl in kv_lens], kv_lens, "cpu"),
        v_ceiling=torch.tensor(v_ceil), s_ceiling=torch.tensor(s_ceil),
        v_max=max(v_ceil) + rng.choice([0, 0, 50]), s_max=max(s_ceil) + rng.choice([0, 0, 5]),
        gamma=GAMMAS[seed % len(GAMMAS)], keep_first=keep_first, keep_diag=keep_diag)


def _on(case: dict, device: str) -> dict:
    """The case's tensors and layout on ``device``."""
    out = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in case.items()}
    lay = case["layout"]
    out["layout"] = SeqLayout.from_lengths(lay.q_lens_host, lay.kv_lens_host, device)
    return out


def _check(case: dict, device: str) -> None:
    """Both on ``device``: ``torch.topk`` breaks the ties of equal scores (the zero-mass
    local band) differently on CPU and GPU, and both implementations rank with it."""
    case = _on(case, device)
    ref = select_adaptive_reference(**case)
    got = select_adaptive(**case)
    for name, r, o in zip(("cols", "n_cols", "diags", "n_diags"), ref, got):
        assert o.dtype == r.dtype and o.shape == r.shape, (name, o.shape, r.shape)
        assert torch.equal(o, r), (name, o, r)


@pytest.mark.parametrize("seed", range(48))
def test_fused_matches_reference(device, seed):
    _check(_case(seed), device)


@pytest.mark.parametrize("gamma", GAMMAS)
def test_fused_matches_reference_profile_budgets(device, gamma):
    """Budgets near the real profile's (1000 columns, 6096 chunks) on a few thousand keys:
    every chunk is a candidate, wide lists, large sorts."""
    g = torch.Generator().manual_seed(11)
    kv_lens = [3000, 2050]
    case = dict(vertical=_masses(kv_lens, 2, g, 6.0), slash=_masses(kv_lens, 2, g, 6.0, 56.0),
                layout=SeqLayout.from_lengths([1000, 2050], kv_lens, "cpu"),
                v_ceiling=torch.tensor([1000, 300]), s_ceiling=torch.tensor([6096, 20]),
                v_max=1000, s_max=6096, gamma=gamma)
    _check(case, device)


@pytest.mark.parametrize("seed", [3, 101, 202])
def test_fused_matches_reference_in_small_tiles(device, monkeypatch, seed):
    """Several score programs per row (partial totals, spill across program edges) and a
    chunk scan of several steps, which real lengths (4096 keys a program, 1024 chunks a
    step) reach only past 64K keys."""
    monkeypatch.setattr(adaptive, "CHUNKS_PER_PROGRAM", 16)
    monkeypatch.setattr(adaptive, "SCAN_CHUNKS", 16)
    g = torch.Generator().manual_seed(seed)
    kv_lens = [3000, 1500, 2049]
    case = dict(vertical=_masses(kv_lens, 2, g, 6.0), slash=_masses(kv_lens, 2, g, 6.0, 70.0),
                layout=SeqLayout.from_lengths([64, 1500, 100], kv_lens, "cpu"),
                v_ceiling=torch.tensor([400, 120]), s_ceiling=torch.tensor([45, 30]),
                v_max=400, s_max=45, gamma=GAMMAS[seed % len(GAMMAS)])
    _check(case, device)


def test_fused_keeps_the_floors_of_an_empty_estimate(device):
    """All-zero masses: the target (0) is reached at once, only the floors stay."""
    kv_lens = [200, 37]
    z = torch.zeros(2, 3, 200)
    case = dict(vertical=z, slash=z.clone(),
                layout=SeqLayout.from_lengths([10, 37], kv_lens, "cpu"),
                v_ceiling=torch.tensor([5, 50, 500]), s_ceiling=torch.tensor([1, 10, 100]),
                v_max=500, s_max=100, gamma=0.9)
    _check(case, device)
    cols, n_cols, diags, n_diags = select_adaptive(**_on(case, device))
    assert (n_cols.cpu() == 30).all()  # keep_first, all inside both sequences
    # chunks 0-2 hold the 100 nearest diagonals; a 37-key sequence has only chunks 0 and 1
    assert n_diags.cpu().tolist() == [[3, 3, 3], [2, 2, 2]]
    assert diags[1, :, :2].cpu().tolist() == [[64, 0]] * 3
