"""Timing helper shared by the benchmark scripts."""

from __future__ import annotations

import time
from typing import Callable

import torch


def bench_ms(fn: Callable[[], object], warmup_ms: float = 25, rep_ms: float = 100) -> float:
    """Median milliseconds of ``fn``: CUDA-event timing on the GPU (triton's do_bench),
    a single wall-clock run on the CPU (smoke tests under the Triton interpreter)."""
    if torch.cuda.is_available():
        import triton.testing
        return float(triton.testing.do_bench(fn, warmup=warmup_ms, rep=rep_ms,
                                             return_mode="median"))
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) * 1e3
