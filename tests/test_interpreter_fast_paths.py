"""The interpreter's NumPy fast paths (``interpreter_fast_paths``) give the bits its own
element-by-element code gives, and the kernels' ``tl.topk`` / running maximum take them."""

import os

import numpy as np
import pytest
import torch
import triton
import triton.language as tl

from vllm_minference.kernels.vertical_slash.index import _max_combine

pytestmark = pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1",
                                reason="patches Triton's interpreter only")


def _tensor(data: np.ndarray, dtype):
    from triton.runtime.interpreter import TensorHandle
    return tl.core.tensor(TensorHandle(data, dtype), tl.block_type(dtype, list(data.shape)))


@triton.jit
def _xor_kernel(X, ROWS, COLS, KEPT, ALL, R: tl.constexpr, C: tl.constexpr):
    r = tl.arange(0, R)
    c = tl.arange(0, C)
    x = tl.load(X + r[:, None] * C + c[None, :])
    tl.store(ROWS + r, tl.xor_sum(x, axis=1))
    tl.store(COLS + c, tl.xor_sum(x, axis=0))
    tl.store(KEPT + r[:, None] * C + c[None, :], tl.xor_sum(x, axis=1, keep_dims=True)
             + x * 0)
    tl.store(ALL + tl.arange(0, 1), tl.xor_sum(tl.reshape(x, [R * C]), axis=0)
             + tl.zeros([1], x.dtype))


@triton.jit
def _max_scan_kernel(X, FWD, REV, N: tl.constexpr):
    i = tl.arange(0, N)
    x = tl.load(X + i)
    tl.store(FWD + i, tl.associative_scan(x, 0, _max_combine))
    tl.store(REV + i, tl.associative_scan(x, 0, _max_combine, reverse=True))


def _generic_only(monkeypatch):
    """Back to the interpreter's own element-by-element code."""
    from triton.runtime import interpreter
    monkeypatch.setattr(interpreter.ReduceOps, "apply_impl",
                        interpreter.ReduceOps.generic_apply_impl)
    monkeypatch.setattr(interpreter.ScanOps, "apply_impl", interpreter.ScanOps.generic_apply_impl)


@pytest.mark.parametrize("dtype", [torch.int32, torch.int64])
def test_xor_reduce_equals_the_interpreters_own(dtype, monkeypatch):
    """``xor_sum`` over rows, columns, with kept dims and over everything."""
    R, C = 4, 8
    info = torch.iinfo(dtype)
    x = torch.randint(info.min, info.max, (R, C), dtype=dtype,
                      generator=torch.Generator().manual_seed(3))

    def run():
        outs = [torch.empty(R, dtype=dtype), torch.empty(C, dtype=dtype),
                torch.empty(R, C, dtype=dtype), torch.empty(1, dtype=dtype)]
        _xor_kernel[(1,)](x, *outs, R=R, C=C)
        return outs
    fast = run()
    _generic_only(monkeypatch)
    slow = run()
    a = x.numpy()
    want = [np.bitwise_xor.reduce(a, axis=1), np.bitwise_xor.reduce(a, axis=0),
            np.repeat(np.bitwise_xor.reduce(a, axis=1)[:, None], C, axis=1),
            np.bitwise_xor.reduce(a, axis=None).reshape(1)]
    for f, s, w in zip(fast, slow, want):
        assert torch.equal(f, s) and np.array_equal(f.numpy(), w)


def test_running_max_equals_the_interpreters_own(monkeypatch):
    """The Vertical-Slash index builder's running maximum, forward and reversed."""
    from triton.runtime import interpreter
    x = torch.randint(-1000, 1000, (16,), dtype=torch.int32,
                      generator=torch.Generator().manual_seed(1))

    def run():
        fwd, rev = torch.empty_like(x), torch.empty_like(x)
        _max_scan_kernel[(1,)](x, fwd, rev, N=16)
        return fwd, rev

    def refuse(self, input):
        raise AssertionError("generic_scan reached")
    with monkeypatch.context() as m:  # the fast path is the one taken
        m.setattr(interpreter.ScanOps, "generic_scan", refuse)
        fast = run()
    _generic_only(monkeypatch)
    slow = run()
    a = x.numpy()
    want = [np.maximum.accumulate(a), np.maximum.accumulate(a[::-1])[::-1]]
    for f, s, w in zip(fast, slow, want):
        assert torch.equal(f, s) and np.array_equal(f.numpy(), w)


def test_floats_and_other_combines_keep_the_interpreters_path(monkeypatch):
    from triton.runtime import interpreter
    called = []
    monkeypatch.setattr(interpreter.ReduceOps, "generic_reduce",
                        lambda self, input: called.append(1) or [input[0]])
    data = np.arange(8, dtype="float32")
    interpreter.ReduceOps(0, tl.standard._xor_combine, False).apply_impl(
        (_tensor(data, tl.float32),))
    interpreter.ReduceOps(0, tl.standard._or_combine, False).apply_impl(
        (_tensor(data.astype("int32"), tl.int32),))
    assert called == [1, 1]


def test_the_extra_tiles_topk_takes_the_fast_path(monkeypatch):
    """The kernel that ranks the extra tiles (``tl.topk`` over int64 keys) runs without
    the interpreter's element-by-element reduction and ranks as ``torch.topk`` does."""
    from triton.runtime import interpreter
    from vllm_minference.kernels.block_sparse.index import rank_far_tiles_into

    def refuse(self, input):
        raise AssertionError("generic_reduce reached")
    monkeypatch.setattr(interpreter.ReduceOps, "generic_reduce", refuse)
    g = torch.Generator().manual_seed(0)
    H, nb, n_tiles, per_block = 2, 3, 64, 5  # 4 buckets of 16 tiles
    scores = torch.randn(H, nb, n_tiles, generator=g)
    bmax = scores.view(H, nb, 4, 16).amax(-1)
    buckets = bmax.topk(4, dim=-1).indices.to(torch.int32).contiguous()
    out = torch.full((H, nb, per_block), -2, dtype=torch.int32)
    rank_far_tiles_into(out, buckets, bmax, scores)
    want = scores.topk(per_block, dim=-1).indices.to(torch.int32) * 64
    assert torch.equal(out, want)
