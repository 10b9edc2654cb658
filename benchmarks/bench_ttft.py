"""Time to first token through vLLM itself: FLASH_ATTN vs minference, same machine.

Offline ``LLM`` with vLLM's defaults (chunked prefill and prefix caching on, CUDA graphs),
``max_tokens=1``, after a warm-up.  Every measured prompt is different source-code text (a
new offset per run), so the prefix cache never serves it.  One configuration per process
(``--backend``, ``--model-kind``); rows are appended to ``--out``.

    # the real model (gpu-kit) past its 32K context with YaRN x32
    python benchmarks/bench_ttft.py --backend minference --model-kind real \
        --lengths 4096 8192 32768 131072 524288 1048576 --out ttft.json
    # random attention worst case: dummy Llama-3-8B shape, 32 layers
    python benchmarks/bench_ttft.py --backend FLASH_ATTN --model-kind dummy-llama \
        --lengths 32768 131072 --out ttft.json
    # decode tokens/s at 32K context
    python benchmarks/bench_ttft.py --backend minference --model-kind real --decode --out ttft.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

LLAMA_8B = {
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 4096,
    "intermediate_size": 14336, "num_attention_heads": 32, "num_key_value_heads": 8,
    "num_hidden_layers": 32, "head_dim": 128, "max_position_embeddings": 262144,
    "rms_norm_eps": 1e-5, "vocab_size": 128256, "torch_dtype": "bfloat16",
    "rope_theta": 500000.0, "bos_token_id": 128000, "eos_token_id": 128001,
}


def yarn_overrides(max_len: int, longest_prompt: int) -> dict:
    """YaRN x4 up to 128K, x32 up to 1M (the factor covers the prompt; a few output
    positions past it are allowed by VLLM_ALLOW_LONG_MAX_MODEL_LEN)."""
    factor = 1
    while 32768 * factor < longest_prompt:
        factor *= 2
    if factor == 1:
        return {}
    return {"rope_parameters": {"rope_type": "yarn", "factor": float(factor),
                                "original_max_position_embeddings": 32768,
                                "rope_theta": 1000000.0},
            "max_position_embeddings": max_len}


def source_token_ids(tokenizer, n_tokens: int) -> list[int]:
    sys.path.insert(0, os.path.dirname(__file__))
    from bench_kernels import code_tokens  # same text as the kernel benchmark
    return code_tokens(tokenizer, n_tokens).tolist()


def plugin_build(root: str | None = None) -> str | None:
    """A fingerprint of the installed plugin's code and data (12 hex digits of a SHA-256 over
    its files' paths and contents), or None without it.  Rows of two builds timed in one
    lease (a branch's wheel against main's) then stay apart in ``summarize_results.py``
    instead of being merged into one median."""
    import hashlib
    if root is None:
        try:
            import vllm_minference
        except ImportError:
            return None
        root = os.path.dirname(vllm_minference.__file__)
    digest = hashlib.sha256()
    for folder, dirs, files in sorted(os.walk(root)):
        dirs.sort()
        for name in sorted(files):
            if name.endswith((".py", ".json")):
                path = os.path.join(folder, name)
                digest.update(os.path.relpath(path, root).encode())
                with open(path, "rb") as f:
                    digest.update(f.read())
    return digest.hexdigest()[:12]


def build_field(backend: str) -> dict:
    """``{"build": ...}`` for a minference row (its plugin's fingerprint), ``{}`` otherwise."""
    return {"build": plugin_build()} if backend.lower() == "minference" else {}


def parse_settings(pairs: list[str] | None) -> dict:
    """``--set KEY=VALUE`` pairs as plugin settings (validated by the plugin itself)."""
    cfg = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise SystemExit(f"--set takes KEY=VALUE, got {pair!r}")
        cfg[key] = value
    return cfg


def minference_config(args) -> dict:
    cfg = parse_settings(getattr(args, "set", None))
    if args.min_sparse_len:
        cfg["min_sparse_len"] = args.min_sparse_len
    if args.mode:
        cfg["mode"] = args.mode
    if args.gamma:
        cfg["gamma"] = args.gamma
    return cfg


def plugin_mode(backend: str, config: dict, model: str | None = None) -> str:
    """Row label: dense (any other backend) or the minference selection mode in effect
    with these settings (the plugin's defaults, MINFERENCE_* variables and, where no mode is
    set, the settings of the profile the model's name selects)."""
    if backend.lower() != "minference":
        return "dense"
    from vllm_minference.config import MInferenceSettings
    settings = MInferenceSettings.from_sources({"minference": config})
    if model:
        from vllm_minference.layer_plan import with_model_profile
        settings = with_model_profile(settings, [model])[0]
    return settings.mode


def mode_of(args) -> str:
    model = args.model if getattr(args, "model_kind", "real") == "real" else None
    return plugin_mode(args.backend, minference_config(args), model)


def chunk_setting(args) -> dict:
    """``max_num_batched_tokens`` (vLLM's prefill chunk) when the run sets it: an engine
    argument and a field of every row, so results pair with runs of the same chunk."""
    n = args.max_num_batched_tokens
    return {"max_num_batched_tokens": n} if n else {}


def profiler_config(folder: str) -> dict:
    """vLLM's PyTorch profiler writing each worker's Chrome trace into ``folder``: no Python
    stacks (smaller traces, less overhead), no front-end trace (the engine process is what
    runs the prefill); ``benchmarks/gpu_idle.py`` reads the traces."""
    return dict(profiler="torch", torch_profiler_dir=os.path.abspath(folder),
                torch_profiler_with_stack=False, ignore_frontend=True)


def make_llm(args, max_len: int):
    from vllm import LLM
    kw = dict(max_model_len=max_len, gpu_memory_utilization=args.gpu_mem, seed=0,
              tensor_parallel_size=args.tp)
    if args.backend != "default":
        kw["attention_backend"] = args.backend
    kw.update(chunk_setting(args))  # default: 16K for LLM on an H100
    if getattr(args, "profile_dir", None):
        kw["profiler_config"] = profiler_config(args.profile_dir)
    if minference_config(args):
        kw["additional_config"] = {"minference": minference_config(args)}
    if args.model_kind == "real":
        os.environ.setdefault("VLLM_ALLOW_LONG_MAX_MODEL_LEN", "1")
        return LLM(model=args.model, hf_overrides=yarn_overrides(max_len, max_len - 64) or None, **kw), None
    folder = tempfile.mkdtemp(prefix="dummy-llama-")
    cfg = dict(LLAMA_8B, num_hidden_layers=args.layers, max_position_embeddings=max_len)
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(cfg, f)
    return LLM(model=folder, load_format="dummy", skip_tokenizer_init=True, **kw), folder


def base_row(args) -> dict:
    return dict(backend=args.backend, mode=mode_of(args), gamma=args.gamma, tp=args.tp,
                model=args.model_kind, layers=args.layers if args.model_kind != "real" else 24,
                config=minference_config(args) if args.backend.lower() == "minference" else {},
                **build_field(args.backend), **chunk_setting(args))


def append_rows(path: str, rows: list[dict], indent: int = 1) -> None:
    """Add rows to a JSON list file as soon as they are measured, so a run cut short keeps
    what it measured."""
    old = []
    if os.path.exists(path):
        with open(path) as f:
            old = json.load(f)
    with open(path, "w") as f:
        json.dump(old + rows, f, indent=indent)


def append_row(path: str, row: dict) -> None:
    append_rows(path, [row])
    print(json.dumps(row), flush=True)


def ttft_rows(args) -> None:
    from vllm import SamplingParams
    max_len = max(args.lengths) + 64
    llm, _ = make_llm(args, max_len)
    one = SamplingParams(max_tokens=1, temperature=0.0, detokenize=False)
    if args.model_kind == "real":
        pool = source_token_ids(llm.get_tokenizer(),
                                max(40000, max(args.lengths) + args.reps * 4096 + 8192))
    else:
        import random
        rnd = random.Random(0)
        pool = [rnd.randrange(1000, 120000) for _ in range(max(args.lengths) + args.reps * 4096 + 8192)]
    offset = [0]

    def prompt(n: int) -> dict:
        offset[0] += 4099  # a new slice of text every time: no prefix-cache hits
        start = offset[0] % (len(pool) - n)
        return {"prompt_token_ids": pool[start:start + n]}

    if args.outputs:
        output_rows(args, llm, pool)
    llm.generate([prompt(8192)], one, use_tqdm=False)  # warm-up: Triton JIT, graphs
    if max(args.lengths) >= 65536:  # the sparse path's kernels compile on first use too
        llm.generate([prompt(min(args.lengths[-1], 70000))], one, use_tqdm=False)
    for n in args.lengths:
        # short prompts: ~20 ms each, where one slow run of three moved a ratio by 0.1-0.3
        reps = max(args.reps, 11) if n <= 16384 else args.reps if n <= 131072 else 1
        times = []
        for _ in range(reps):
            p = prompt(n)
            t0 = time.perf_counter()
            llm.generate([p], one, use_tqdm=False)
            times.append(time.perf_counter() - t0)
        append_row(args.out, dict(kind="ttft", **base_row(args), seq_len=n,
                                  seconds=sorted(times)[len(times) // 2], runs=len(times),
                                  run_seconds=[round(t, 4) for t in times]))  # spread
    if getattr(args, "profile_dir", None):  # one more prefill of the longest length, profiled
        # after the timed runs (the profiler's overhead stays out of the rows)
        llm.start_profile(profile_prefix=f"ttft_{args.backend}_{max(args.lengths)}")
        llm.generate([prompt(max(args.lengths))], one, use_tqdm=False)
        llm.stop_profile()


def output_rows(args, llm, pool) -> None:
    """Greedy continuations of fixed prompts (short, below and above a 16K threshold): rows
    to compare configurations token by token (TP=1 vs TP=2, minference vs dense)."""
    from vllm import SamplingParams
    greedy = SamplingParams(max_tokens=24, temperature=0.0, detokenize=False)
    assert len(pool) >= 40000, "outputs need 40K tokens of text"
    for n in (200, 3000, 12000, 20000, 30000):
        start = (7919 * n) % (40000 - n)  # the same prompts whatever the pool size
        out = llm.generate([{"prompt_token_ids": pool[start:start + n]}], greedy, use_tqdm=False)
        append_row(args.out, dict(kind="outputs", **base_row(args), seq_len=n,
                                  token_ids=list(out[0].outputs[0].token_ids)))


def decode_rows(args) -> None:
    from vllm import SamplingParams
    ctx, new = args.decode_context, args.decode_tokens
    llm, _ = make_llm(args, ctx + new + 64)
    pool = source_token_ids(llm.get_tokenizer(), ctx * 3)
    gen = SamplingParams(max_tokens=new, min_tokens=new, temperature=0.0, ignore_eos=True,
                         detokenize=False)
    one = SamplingParams(max_tokens=1, temperature=0.0, detokenize=False)
    llm.generate([{"prompt_token_ids": pool[:ctx]}], gen, use_tqdm=False)  # warm-up
    # decode rate = (time for prompt + N tokens - time for prompt + 1 token) / (N - 1)
    p = {"prompt_token_ids": pool[ctx:2 * ctx]}
    t0 = time.perf_counter()
    llm.generate([p], one, use_tqdm=False)
    t_first = time.perf_counter() - t0
    p = {"prompt_token_ids": pool[2 * ctx - 7:3 * ctx - 7]}
    t0 = time.perf_counter()
    llm.generate([p], gen, use_tqdm=False)
    t_all = time.perf_counter() - t0
    append_row(args.out, dict(kind="decode", **base_row(args), seq_len=ctx, new_tokens=new,
                              tokens_per_s=(new - 1) / (t_all - t_first)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--backend", required=True, help="FLASH_ATTN, minference or default")
    ap.add_argument("--model-kind", choices=["real", "dummy-llama"], default="real")
    ap.add_argument("--model", default=os.environ.get("GPU_KIT_MODEL"))
    ap.add_argument("--layers", type=int, default=32, help="dummy-llama layers")
    ap.add_argument("--lengths", type=int, nargs="+", default=[4096, 8192, 32768, 131072])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--profile-dir", default=None,
                    help="after the timed runs, profile one more prefill of the longest "
                         "length with vLLM's PyTorch profiler; each worker's trace lands "
                         "here (read them with benchmarks/gpu_idle.py)")
    ap.add_argument("--decode", action="store_true", help="measure decode tokens/s instead")
    ap.add_argument("--outputs", action="store_true",
                    help="also record greedy outputs of fixed prompts (200 to 30K tokens)")
    ap.add_argument("--decode-context", type=int, default=32768)
    ap.add_argument("--decode-tokens", type=int, default=256)
    ap.add_argument("--min-sparse-len", type=int, default=None)
    ap.add_argument("--mode", choices=["adaptive", "fixed", "antidiagonal"], default=None,
                    help="minference selection mode (default: the plugin's)")
    ap.add_argument("--gamma", type=float, default=None)
    ap.add_argument("--tp", type=int, default=1, help="tensor-parallel size")
    ap.add_argument("--set", action="append", metavar="KEY=VALUE",
                    help="any other plugin setting (e.g. adaptive_local=1024), repeatable")
    ap.add_argument("--gpu-mem", type=float, default=0.85)
    ap.add_argument("--max-num-batched-tokens", type=int, default=None,
                    help="vLLM engine argument: tokens per step, i.e. the prefill chunk")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    decode_rows(args) if args.decode else ttft_rows(args)


if __name__ == "__main__":
    main()
