"""merge_diagonals (one Triton kernel) against the plain-torch reference, bit for bit.

Downstream kernels binary-search the segment and chunk arrays, so every field must match
exactly, padding (``_BIG`` / 0) included.  Small ``block`` values make runs of touching
diagonals span many steps of the kernel's loop, exercising the state it carries.
"""

import pytest
import torch

from vllm_minference.kernels.vertical_slash.index import merge_diagonals
from vllm_minference.kernels.vertical_slash.reference import merge_diagonals_reference

FIELDS = ("seg_start", "seg_end", "n_seg", "chunks", "n_chunks")


def _head(g: torch.Generator, n: int, merge_p: float, d_max: int) -> torch.Tensor:
    """``n`` distinct diagonals, descending: gaps <= 64 merge (64 just touches), > 64 break."""
    if n == 0:
        return torch.empty(0, dtype=torch.int64)
    near = torch.randint(1, 65, (n,), generator=g)
    near[torch.rand(n, generator=g) < 0.2] = 64  # exactly touching
    far = torch.randint(65, 400, (n,), generator=g)
    far[torch.rand(n, generator=g) < 0.2] = 65  # one key apart: still two segments
    gaps = torch.where(torch.rand(n, generator=g) < merge_p, near, far)
    gaps[0] = 0
    asc = torch.cumsum(gaps, 0)
    room = max(d_max - int(asc[-1]), 0)
    low = int(torch.randint(0, room + 1, (1,), generator=g))
    return (asc + low).flip(0)


def _batch(seed: int, B: int, H: int, S: int, d_max: int = 1 << 20,
           fill: str = "random") -> tuple[torch.Tensor, torch.Tensor]:
    """Selections in select_vertical_slash's format: int32, descending, -1 padded."""
    g = torch.Generator().manual_seed(seed)
    diags = torch.full((B, H, S), -1, dtype=torch.int32)
    n_diags = torch.zeros(B, H, dtype=torch.int32)
    for b in range(B):
        for h in range(H):
            n = {"random": int(torch.randint(0, S + 1, (1,), generator=g)),
                 "full": S, "empty": 0}[fill]
            merge_p = float(torch.rand(1, generator=g))  # from lone diagonals to one long run
            d = _head(g, n, merge_p, d_max)
            diags[b, h, :n], n_diags[b, h] = d.to(torch.int32), n
    return diags, n_diags


def _check(diags: torch.Tensor, n_diags: torch.Tensor, device: str, block: int) -> None:
    got = merge_diagonals(diags.to(device), n_diags.to(device), block=block)
    ref = merge_diagonals_reference(diags, n_diags)
    for f in FIELDS:
        out = got[f].cpu()
        assert out.dtype == torch.int32 and got[f].is_contiguous(), f
        assert torch.equal(out, ref[f]), f


@pytest.mark.parametrize("seed", range(40))
def test_random_shapes(device, seed):
    g = torch.Generator().manual_seed(1000 + seed)
    B, H = int(torch.randint(1, 3, (1,), generator=g)), int(torch.randint(1, 4, (1,), generator=g))
    S = int(torch.randint(1, 90, (1,), generator=g))
    block = [8, 16, 32, 1024][seed % 4]
    _check(*_batch(seed, B, H, S), device, block)


@pytest.mark.parametrize("fill", ["empty", "full"])
@pytest.mark.parametrize("S", [1, 2, 63, 65])
def test_empty_and_full_heads(device, fill, S):
    _check(*_batch(S, 2, 2, S, fill=fill), device, 16)


def test_small_diagonal_range(device):
    """Diagonals packed into a few hundred keys: mostly one or two long merged runs."""
    _check(*_batch(7, 2, 3, 70, d_max=300), device, 16)


def test_extreme_runs(device):
    """A run of touching diagonals across many blocks, lone ones, the main diagonal, 2^20."""
    S = 100
    runs = [torch.arange(1 << 20, (1 << 20) - 64 * S, -64),          # touching only
            torch.arange(5000, 5000 - S, -1),                        # dense band
            torch.arange(S - 1, -1, -1) * 65 + 3,                    # all lone
            torch.cat([torch.tensor([1 << 20]), torch.arange(S - 2, -1, -1)])]  # far + band
    diags = torch.stack(runs).to(torch.int32).view(2, 2, S)
    n_diags = torch.tensor([[S, S], [S, 37]], dtype=torch.int32)
    diags[1, 1, 37:] = -1
    _check(diags, n_diags, device, 8)


def test_default_block_longer_run(device):
    """The default block size, with one merged run longer than a block and a lone tail."""
    S = 1500
    band = torch.arange(1 << 20, (1 << 20) - 1200, -1)
    tail = torch.arange(290, -1, -1) * 100
    diags = torch.cat([band, tail]).to(torch.int32)[:S]
    n = len(band) + len(tail)
    full = torch.full((1, 2, S), -1, dtype=torch.int32)
    full[0, 0, :n] = diags[:n]
    full[0, 1] = torch.arange(S - 1, -1, -1, dtype=torch.int32) * 70  # all lone
    _check(full, torch.tensor([[n, S]], dtype=torch.int32), device, 1024)
