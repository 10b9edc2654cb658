"""The sparse attention kernel against plain PyTorch attention with the same mask."""

import pytest
import torch

from conftest import kernel_dtypes
from kernel_inputs import make_batch, random_worklist, tolerance
from vllm_minference.kernels import dense_worklist, sparse_attention
from vllm_minference.kernels.attention.reference import (masked_attention_reference,
                                                          worklist_mask, worklist_overlaps)

SHAPES = [
    # q_lens, kv_lens, heads, kv_heads, head_dim
    ([100], [100], 4, 2, 64),          # one sequence, not a multiple of 64
    ([37], [37], 2, 2, 128),           # shorter than a block, head_dim 128
    ([64, 130, 5], [64, 200, 77], 4, 1, 64),  # varlen batch, q_len < kv_len, MQA
    ([70], [333], 8, 2, 128),          # chunk at the end of a longer sequence
]


def _rel_err(out, ref):
    return float((out.double() - ref).norm() / ref.norm().clamp_min(1e-12))


@pytest.mark.parametrize("dtype", kernel_dtypes())
@pytest.mark.parametrize("q_lens,kv_lens,h,hkv,d", SHAPES)
def test_dense_worklist_equals_causal_attention(device, dtype, q_lens, kv_lens, h, hkv, d):
    batch = make_batch(q_lens, kv_lens, h, hkv, d, dtype, device)
    wl = dense_worklist(batch.layout, h)
    ref = masked_attention_reference(batch.q, batch.kv, batch.layout)
    for kv in (batch.kv, batch.paged):
        out = sparse_attention(batch.q, kv, batch.layout, wl)
        assert out.dtype == dtype
        assert _rel_err(out, ref) < tolerance(dtype)


@pytest.mark.parametrize("dtype", kernel_dtypes())
def test_lse_matches_logsumexp(device, dtype):
    batch = make_batch([90, 20], [150, 20], 4, 2, 64, dtype, device)
    wl = dense_worklist(batch.layout, 4)
    out, lse = sparse_attention(batch.q, batch.paged, batch.layout, wl, return_lse=True)
    assert lse.shape == (4, 110)
    scale = 64 ** -0.5
    for b, (q0, ql, kl) in enumerate([(0, 90, 150), (90, 20, 20)]):
        k, _ = batch.kv.gather(b, kl)
        for h in range(4):
            s = batch.q[q0:q0 + ql, h].double() @ k[:, h // 2].double().T * scale
            pos = torch.arange(kl - ql, kl, device=s.device)[:, None]
            s = s.masked_fill(torch.arange(kl, device=s.device)[None, :] > pos, float("-inf"))
            torch.testing.assert_close(lse[h, q0:q0 + ql].double(), torch.logsumexp(s, -1),
                                       atol=2e-3, rtol=1e-3)


@pytest.mark.parametrize("dtype", kernel_dtypes())
@pytest.mark.parametrize("q_lens,kv_lens,h,hkv,d", SHAPES)
def test_any_worklist_equals_masked_attention(device, dtype, q_lens, kv_lens, h, hkv, d):
    batch = make_batch(q_lens, kv_lens, h, hkv, d, dtype, device, seed=3)
    wl = random_worklist(batch.layout, h, seed=5)
    for b in range(batch.layout.num_seqs):
        for hh in range(h):
            assert worklist_overlaps(wl, batch.layout, b, hh) == 0
    ref = masked_attention_reference(
        batch.q, batch.kv, batch.layout,
        lambda b, hh, ql, kl: worklist_mask(wl, batch.layout, b, hh))
    out_c = sparse_attention(batch.q, batch.kv, batch.layout, wl)
    out_p = sparse_attention(batch.q, batch.paged, batch.layout, wl)
    assert _rel_err(out_c, ref) < tolerance(dtype)
    torch.testing.assert_close(out_c, out_p, atol=0, rtol=0)
    for cpt in (1, 2):  # one or two chunks per loop step
        out_cpt = sparse_attention(batch.q, batch.kv, batch.layout, wl, chunks_per_iter=cpt)
        assert _rel_err(out_cpt, ref) < tolerance(dtype)
        for page in (64, 128):  # pages holding whole chunks take the two-page lookup path
            big = make_batch(q_lens, kv_lens, h, hkv, d, dtype, device, page_size=page, seed=3)
            out_big = sparse_attention(big.q, big.paged, big.layout, wl, chunks_per_iter=cpt)
            torch.testing.assert_close(out_big, out_cpt, atol=0, rtol=0)


def test_rejects_bad_shapes(device):
    batch = make_batch([10], [10], 4, 2, 64, torch.float16, device)
    with pytest.raises(ValueError, match="work list"):
        sparse_attention(batch.q, batch.kv, batch.layout, dense_worklist(batch.layout, 3))
    q96 = torch.zeros(10, 4, 96, dtype=torch.float16, device=device)
    with pytest.raises(ValueError, match="head_dim"):
        sparse_attention(q96, batch.kv, batch.layout, dense_worklist(batch.layout, 4))
