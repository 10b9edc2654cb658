"""``vllm-minference`` command line: start serving, or show sparse prefill on a CPU.

    vllm-minference quickstart [MODEL]   # GPU: vllm serve MODEL --attention-backend minference
                                         # (the default model at 128K context, YaRN x4)
                                         # no GPU: the CPU demo below
    vllm-minference demo                 # sparse vs dense prefill under the Triton interpreter
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys

from vllm_minference.config import LONG_CONTEXT, LONG_PROMPT_CHUNK

DEFAULT_MODEL = "Qwen/Qwen2.5-Coder-0.5B-Instruct"
# The default model's native context (32K) ends where sparse prefill starts (its profile's
# `min_sparse_len`, 32K; 64K elsewhere): quickstart serves it at 128K with YaRN x4 (the scaling Qwen
# documents for long inputs; it found a passkey at 125K in our suite) and in 64K prefill
# chunks (each chunk pays one pattern estimate: README, "Prefill chunk").
DEFAULT_MODEL_LONG_CONTEXT = [
    "--max-model-len", str(LONG_CONTEXT),
    "--hf-overrides", json.dumps({
        "rope_parameters": {"rope_type": "yarn", "factor": 4.0, "rope_theta": 1000000.0,
                            "original_max_position_embeddings": 32768},
        "max_position_embeddings": LONG_CONTEXT}),
    "--max-num-batched-tokens", str(LONG_PROMPT_CHUNK),
]


def serve_command(model: str, extra: list[str]) -> list[str]:
    """The `vllm serve` command quickstart runs; the user's own arguments come last, so
    they override these (argparse keeps the last value)."""
    defaults = DEFAULT_MODEL_LONG_CONTEXT if model == DEFAULT_MODEL else []
    return ["vllm", "serve", model, "--attention-backend", "minference", *defaults, *extra]


def demo(seq_len: int = 2048, seed: int = 0) -> dict:
    """Vertical-Slash prefill of one synthetic long-ish prompt against dense attention.

    Attention is made peaked like a real model's (a few sink keys, a strong local band),
    so the estimate finds a sparse pattern.  Runs anywhere: on a CPU the Triton kernels run
    in the interpreter (set before Triton is imported).
    """
    import torch
    if not torch.cuda.is_available():
        os.environ.setdefault("TRITON_INTERPRET", "1")
    from vllm_minference.kernels import (HeadPattern, KVSource, LayerPatterns, SeqLayout,
                                         dense_worklist, plan_layer, sparse_attention)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    g = torch.Generator().manual_seed(seed)
    H, Hkv, D = 4, 2, 64
    pos = torch.arange(seq_len, dtype=torch.float32)
    # keys carry a slowly rotating position code (local band) and sinks at the start
    freqs = torch.exp(-torch.arange(D // 2) / (D // 2) * 6.0)
    code = torch.cat([torch.cos(pos[:, None] * freqs), torch.sin(pos[:, None] * freqs)], -1)
    k = 0.3 * torch.randn(seq_len, Hkv, D, generator=g) + 2.0 * code[:, None, :]
    k[:4] += 3.0
    q = 0.3 * torch.randn(seq_len, H, D, generator=g) + 2.0 * code[:, None, :]
    v = torch.randn(seq_len, Hkv, D, generator=g)
    q, k, v = (x.to(device=device, dtype=torch.float16) for x in (q, k, v))
    layout = SeqLayout.from_lengths([seq_len], [seq_len], device)
    kv = KVSource.contiguous(k, v, [seq_len])
    patterns = LayerPatterns.from_heads([HeadPattern("vertical_and_slash", 64, 128)] * H, device)
    wl = plan_layer(q, kv, layout, patterns)
    sparse = sparse_attention(q, kv, layout, wl)
    dense = sparse_attention(q, kv, layout, dense_worklist(layout, H))
    rel = float((sparse.float() - dense.float()).norm() / dense.float().norm())
    density = float(wl.density(layout).mean())
    return dict(device=device, seq_len=seq_len, heads=H, density=density,
                relative_error=rel)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="vllm-minference", description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    q = sub.add_parser("quickstart", help="serve MODEL on a GPU; the CPU demo without one")
    q.add_argument("model", nargs="?", default=DEFAULT_MODEL)
    q.add_argument("serve_args", nargs=argparse.REMAINDER,
                   help="further `vllm serve` arguments")
    d = sub.add_parser("demo", help="sparse vs dense prefill of a synthetic prompt")
    d.add_argument("--seq-len", type=int, default=2048)
    sr = sub.add_parser("search", add_help=False, help="offline per-head pattern search: write "
                        "a profile for MODEL (vllm-minference search MODEL --out PATH; --help)")
    sr.add_argument("search_args", nargs=argparse.REMAINDER)
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["search"]:  # forwarded whole: its options (and --help) are search.py's
        from vllm_minference.search import main as search_main
        return search_main(argv[1:])
    if argv[:1] == ["quickstart"] and not {"-h", "--help"} & set(argv[1:2]):
        # by hand: argparse's REMAINDER after an optional MODEL drops a leading `--flag`
        rest = argv[1:]
        model = rest.pop(0) if rest and not rest[0].startswith("-") else DEFAULT_MODEL
        import torch
        if torch.cuda.is_available():
            cmd = serve_command(model, rest)
            print("+", shlex.join(cmd), flush=True)  # copy-pasteable (the JSON is quoted)
            os.execvp(cmd[0], cmd)
            return 0  # only reached when execvp is replaced (tests)
        print("no GPU found: running the CPU demo (Triton interpreter) instead of serving")
        argv = ["demo"]
    args = ap.parse_args(argv)
    r = demo(getattr(args, "seq_len", 2048))
    print(f"Vertical-Slash prefill of {r['seq_len']} tokens x {r['heads']} heads on {r['device']}:"
          f" computes {r['density']:.0%} of the causal attention tiles,"
          f" relative error vs dense attention {r['relative_error']:.2e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
