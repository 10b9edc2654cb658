"""One compiled variant per kernel and model: no Triton recompiles as a long prompt grows.

Every distinct value of a ``tl.constexpr`` (and every change of an int argument's
specialisation class, unless the kernel lists it in ``do_not_specialize``) compiles a new
kernel variant, seconds each.  Inside a serving step that is a stall: a 1M-token prefill
passes through every sequence length, so anything derived from the length must stay out
of the compile key.  This test runs the whole plan + attention at two very different
geometries and checks that each kernel is launched with the same compile key.
"""

from __future__ import annotations

import importlib
import inspect
import json
import os
import subprocess
import sys
from collections import defaultdict

import pytest
import torch

from vllm_minference.kernels import (AntidiagonalRule, HeadPattern, KVSource, LayerPatterns,
                                     SeqLayout, plan_layer, sparse_attention)
from vllm_minference.kernels.page_lists import attention as page_attention
from vllm_minference.kernels.page_lists import page_list_attention
from vllm_minference.kernels.page_lists.reference import emulate_fa3_varlen

KERNEL_MODULES = [
    "vllm_minference.kernels.attention.kernel",
    "vllm_minference.kernels.vertical_slash.estimate",
    "vllm_minference.kernels.vertical_slash.adaptive",
    "vllm_minference.kernels.vertical_slash.index",
    "vllm_minference.kernels.block_sparse.index",
    "vllm_minference.kernels.page_lists.index",
    "vllm_minference.kernels.page_lists.attention",
    "vllm_minference.kernels.antidiagonal.index",
    "vllm_minference.kernels.antidiagonal.columns",
]


class Recorder:
    """Stands in for a Triton kernel: records each launch's compile key (and, into ``specs``,
    its argument types for an offline Hopper compile), then launches."""

    def __init__(self, name, kernel, calls, specs=None):
        self.name, self.kernel, self.calls, self.specs = name, kernel, calls, specs
        self.dont = set(kernel.kwargs.get("do_not_specialize") or []) if hasattr(
            kernel, "kwargs") else set(getattr(kernel, "do_not_specialize", []) or [])
        params = inspect.signature(kernel.fn).parameters
        self.constexprs = {n for n, p in params.items() if "constexpr" in str(p.annotation)}

    def __getitem__(self, grid):
        launch = self.kernel[grid]

        def run(*args, **kwargs):
            names = self.kernel.arg_names
            values = dict(zip(names, args)) | kwargs
            consts = {k: v for k, v in values.items() if k in self.constexprs}
            # Triton also specialises pointers on 16-byte alignment
            consts |= {f"{k}%16": v.data_ptr() % 16 == 0 for k, v in values.items()
                       if isinstance(v, torch.Tensor)}
            consts |= {k: kwargs[k] for k in ("num_warps", "num_stages") if k in kwargs}
            ints = {k: v for k, v in values.items() if isinstance(v, int)
                    and not isinstance(v, bool) and k not in self.constexprs and k not in self.dont}
            self.calls[self.name].append((tuple(sorted(consts.items())), ints))
            if self.specs is not None:
                self.specs[self.name].add(json.dumps(self.spec(values), sort_keys=True))
            return launch(*args, **kwargs)
        return run

    def spec(self, values: dict) -> dict:
        """Triton signature types of one launch (``tests/compile_hopper.py`` compiles it)."""
        sig, consts = {}, {}
        params = inspect.signature(self.kernel.fn).parameters
        for name in self.kernel.arg_names:
            v = values.get(name, params[name].default)
            if name in self.constexprs or v is None:
                sig[name], consts[name] = "constexpr", v
            elif isinstance(v, torch.Tensor):
                sig[name] = "*" + POINTER_TYPES[v.dtype]
            elif isinstance(v, bool):
                sig[name] = "i1"
            elif isinstance(v, int):
                sig[name] = "i32" if -2**31 <= v < 2**31 else "i64"
            else:
                sig[name] = "fp32"
        options = {k: values[k] for k in ("num_warps", "num_stages") if k in values}
        module, _, attr = self.name.rpartition(".")
        return dict(module=module, kernel=attr, signature=sig, constexprs=consts,
                    options=options)


POINTER_TYPES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16",
                 torch.int32: "i32", torch.int64: "i64", torch.int8: "i8", torch.uint8: "u8",
                 torch.bool: "i1"}


def record_launches(monkeypatch, specs=None) -> dict:
    calls = defaultdict(list)
    for mod_name in KERNEL_MODULES:
        mod = importlib.import_module(mod_name)
        for attr, obj in list(vars(mod).items()):
            # launched kernels only (device helpers are called from inside kernels)
            if attr.endswith("_kernel") and hasattr(obj, "arg_names"):
                monkeypatch.setattr(mod, attr,
                                    Recorder(f"{mod_name}.{attr}", obj, calls, specs))
    return calls


@pytest.fixture
def recorded(monkeypatch):
    return record_launches(monkeypatch)


def run_layer(q_len: int, kv_len: int, mode: str, device: str, kernel: str) -> None:
    """Plan + attention of one chunk at the end of ``kv_len`` keys, in the backend's cache
    layout (HND, K and V packed in the last dim) with a block table as wide as vLLM makes it
    for a 128K model with 64-token pages (2049: not a multiple of 16)."""
    H, Hk, D, page, table_width = 4, 2, 64, 64, 2049
    g = torch.Generator().manual_seed(kv_len)
    q = torch.randn(q_len, H, D, generator=g).to(device, torch.float16)
    n_pages = -(-kv_len // page)
    cache = torch.randn(n_pages + 1, Hk, page, 2 * D, generator=g).to(device, torch.float16)
    kc, vc = cache.transpose(1, 2).split(D, dim=-1)
    bt = torch.zeros(1, table_width, dtype=torch.int32)
    bt[0, :n_pages] = torch.arange(1, n_pages + 1)
    kv = KVSource.paged(kc, vc, bt.to(device))
    layout = SeqLayout.from_lengths([q_len], [kv_len], device)
    # the default profile's budgets (MInference's 1000 columns / 6096 diagonals)
    heads = [HeadPattern("vertical_and_slash", 1000, 6096),  # a pinned head: adaptive mode
             HeadPattern("vertical_and_slash", 1000, 6096, fixed=True)] + [  # runs both
        HeadPattern("block_sparse", 8), HeadPattern("stream_llm", 64, 256)]
    patterns = LayerPatterns.from_heads(heads, device, **MODES[mode])
    wl = plan_layer(q, kv, layout, patterns)
    if kernel.startswith("fa3"):
        page_list_attention(q, cache, kv.block_table, layout, wl, **PAGE_OPTIONS[kernel])
    else:
        sparse_attention(q, kv, layout, wl)


MODES = {"fixed": {}, "adaptive": {"gamma": 0.9},
         "adaptive with a fixed floor": {"gamma": 0.9, "floor_scale": 0.25},
         "fixed with extra tiles": {"extra_blocks": 4},
         "antidiagonal": {"antidiagonal": AntidiagonalRule(tau=0.9, stride=32)},
         "antidiagonal shared": {"antidiagonal": AntidiagonalRule(tau=0.9, stride=32,
                                                                  fa3_groups=True)}}


# the page lists' options of each kernel label the pairs below use (triton: none read)
PAGE_OPTIONS = {"triton": {"min_run": 1, "min_blocks": 1},
                "fa3": {"min_run": 1, "min_blocks": 1},
                "fa3/run2": {"min_run": 2, "min_blocks": 1},
                "fa3/blocks2": {"min_run": 1, "min_blocks": 2}}


def _mode_kernel_pairs() -> list[tuple[str, str]]:
    """Every mode on the Triton kernel (the plan kernels depend on the mode, not on the
    attention kernel), and the FA3 page lists in the modes serving runs on Hopper: fixed
    (with the default extra tiles and without), antidiagonal per block and shared.  The
    page-list kernels' compile keys come from the geometry, not the mode, and the short-run
    split (fa3/run2) and the row-group split (fa3/blocks2) only change what happens after
    the lists are built, so the two adaptive modes on FA3 and the splits in other modes
    would repeat launches already checked (CI time: ~25 s a pair)."""
    pairs = [(mode, "triton") for mode in MODES if mode != "antidiagonal shared"]
    pairs += [(mode, "fa3") for mode in ("fixed", "fixed with extra tiles", "antidiagonal",
                                         "antidiagonal shared")]
    return pairs + [("fixed", "fa3/run2"), ("antidiagonal", "fa3/blocks2")]


@pytest.mark.parametrize("mode,kernel", _mode_kernel_pairs())
def test_kernels_compile_once_whatever_the_length(recorded, device, mode, kernel, monkeypatch):
    from vllm_minference import warmup
    monkeypatch.setattr(warmup, "_done", set())
    if device != "cuda":
        monkeypatch.setattr(page_attention, "fa3_varlen", lambda: emulate_fa3_varlen)
    # the model-load warm-up (tiny batch, tiny budgets) must compile what serving runs
    options = PAGE_OPTIONS[kernel]
    assert warmup.warm_up_kernels(4, 2, 64, torch.float16, 64, 0.125, device=device,
                                  kernel=kernel.partition("/")[0],
                                  fa3_min_run=options["min_run"],
                                  fa3_min_blocks=options["min_blocks"], **MODES[mode])
    warm = {name: {c[0] for c in calls} for name, calls in recorded.items()}
    run_layer(64, 700, mode, device, kernel)
    run_layer(256, 9000, mode, device, kernel)  # > one estimate split (4096 keys); 4 blocks
    assert recorded, "no kernel launch was recorded"
    for name, calls in recorded.items():
        keys = {c[0] for c in calls}
        # one variant per kernel, or per pattern using it (the pooled scores serve both
        # Block-Sparse heads and extra tiles), all compiled by the warm-up
        assert keys <= warm.get(name, set()), f"{name} compiles after the warm-up: {keys}"
        assert len(keys) <= 2, f"{name} compiles per length: {keys}"
        values = defaultdict(set)
        for _, ints in calls:
            for arg, v in ints.items():
                values[arg].add(v)
        # any change of value may change Triton's class (== 1, divisible by 16) in serving
        unlisted = sorted(a for a, v in values.items() if len(v) > 1)
        assert not unlisted, (
            f"{name}: int arguments that change with the length but are specialised: "
            f"{unlisted} (add them to do_not_specialize)")


def test_every_launched_kernel_compiles_for_hopper(device, monkeypatch, tmp_path):
    """The interpreter runs code that the GPU compiler rejects (a non-constexpr global read
    inside a kernel, a constexpr re-annotated in a static loop: both reached an H100 lease
    on 2026-11-26).  So on the CPU every kernel variant the backend launches is compiled
    for sm_90 offline, with the argument types of its real launches, in a process without
    the interpreter."""
    if device == "cuda":
        pytest.skip("on a GPU the other tests compile every kernel for real")
    from vllm_minference import warmup
    specs = defaultdict(set)
    record_launches(monkeypatch, specs)
    monkeypatch.setattr(warmup, "_done", set())
    monkeypatch.setattr(page_attention, "fa3_varlen", lambda: emulate_fa3_varlen)
    for mode in MODES:  # every mode's plan kernels; the page lists' in the modes whose
        # lists differ in what the page kernels read (extra tiles, per-block chunks)
        for kernel in ("triton", "fa3/run2") if mode in (
                "fixed", "fixed with extra tiles", "antidiagonal") else ("triton",):
            run_layer(64, 700, mode, device, kernel)
    # Block-Sparse's default budget (100 tiles): the widest ranking kernel, on 4 warps
    warmup.warm_up_kernels(4, 2, 64, torch.float16, 64, 0.125, device=device, bs_budget=100)
    todo = [json.loads(x) for v in specs.values() for x in sorted(v)]
    assert len({(t["module"], t["kernel"]) for t in todo}) >= 8, sorted(specs)
    # antidiagonal mode's estimate (the shipped default of Qwen2.5-Coder-0.5B) included
    assert {"_partials_kernel", "_select_kernel"} <= {t["kernel"] for t in todo}, sorted(specs)
    path = tmp_path / "launches.json"
    path.write_text(json.dumps(todo))
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    out = subprocess.run([sys.executable, os.path.join(os.path.dirname(__file__),
                                                       "compile_hopper.py"), str(path)],
                         env=env, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-4000:]
    assert f"compiled {len(todo)} of {len(todo)}" in out.stdout, out.stdout[-2000:]
