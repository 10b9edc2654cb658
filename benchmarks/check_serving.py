"""Serve the real model with ``vllm serve`` and check it like a user would.

For each backend (minference, then FLASH_ATTN) it starts ``vllm serve`` with vLLM's
defaults (chunked prefill, prefix caching, CUDA graphs), then through the OpenAI client:

* short chat and completion requests plus a prompt just below the sparse threshold,
  greedy: minference must answer exactly as FLASH_ATTN does;
* passkey retrieval in long prompts above the threshold (sparse path);
* ``--load``: 32 concurrent requests of mixed lengths (1K-31K tokens, a third sharing a
  long prefix), half streaming: every request must be answered; throughput and TTFT p50/p99.

The server log is scanned for errors and GPU memory is sampled.  Results go to ``--out``.

    python benchmarks/check_serving.py --out serving.json --load
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import subprocess
import sys
import time
import urllib.request

PORT = 8011
SHORT_CHAT = ["Write a Python function that reverses a string.",
              "What does the `yield` keyword do in Python? Answer in two sentences."]
SHORT_COMPLETION = ["def fibonacci(n):", "# A function that checks whether a number is prime\n"]


def parse_config(name: str) -> tuple[str, int]:
    """``BACKEND`` or ``BACKEND@tpN`` -> (backend, tensor-parallel size)."""
    backend, _, tp = name.partition("@tp")
    return backend, int(tp or 1)


STARTED: list[subprocess.Popen] = []  # servers to stop if this script is stopped


def stop_all_and_exit(*_) -> None:
    """SIGTERM (``timeout``): stop the servers this script started (each in its own session,
    so they would outlive it), then exit."""
    for proc in STARTED:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    sys.exit(124)


def server_answers() -> bool:
    try:
        with urllib.request.urlopen(f"http://localhost:{PORT}/health", timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


def server_log_name(config: str, settings: dict) -> str:
    """``server-<config>[-<settings>].log``: runs of one backend with other settings (a
    ``trace`` file counts as ``traced``) keep their own logs."""
    tag = "-".join("traced" if k == "trace" else f"{k}{v}" for k, v in settings.items())
    tag = "".join(ch if ch.isalnum() or ch in "-." else "_" for ch in tag)
    return f"server-{config.replace('@', '-')}{'-' + tag if tag else ''}.log"


def start_server(model: str, config: str, max_len: int, min_sparse_len: int, log_path: str,
                 extra: dict | None = None):
    # a server left over on the port (a run cut short by its time limit) would answer for
    # this one, and this one would fail for lack of GPU memory
    if server_answers():
        raise RuntimeError(f"port {PORT} already has a server; stop it first")
    backend, tp = parse_config(config)
    cmd = ["vllm", "serve", model, "--port", str(PORT), "--max-model-len", str(max_len),
           "--gpu-memory-utilization", "0.80", "--served-model-name", "model",
           "--attention-backend", backend, "--tensor-parallel-size", str(tp)]
    if backend.lower() == "minference":
        settings = {"min_sparse_len": min_sparse_len, **(extra or {})}
        cmd += ["--additional-config", json.dumps({"minference": settings})]
    log = open(log_path, "w")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    STARTED.append(proc)
    t0 = time.time()
    while time.time() - t0 < 400:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}; see {log_path}")
        try:
            with urllib.request.urlopen(f"http://localhost:{PORT}/health", timeout=2) as r:
                if r.status == 200:
                    print(f"{config}: server up after {time.time() - t0:.0f}s", flush=True)
                    return proc
        except OSError:
            time.sleep(2)
    raise RuntimeError("server did not come up")


def stop_server(proc) -> None:
    os.killpg(proc.pid, signal.SIGINT)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)


def gpu_memory_mib() -> int | None:
    """Memory used on the visible GPUs (nvidia-smi ignores CUDA_VISIBLE_DEVICES: pass -i)."""
    cmd = ["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"]
    if os.environ.get("CUDA_VISIBLE_DEVICES"):
        cmd += ["-i", os.environ["CUDA_VISIBLE_DEVICES"]]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=10).stdout
        return sum(int(x) for x in out.split())
    except Exception:  # noqa: BLE001 - best effort
        return None


def filler(tok, n_tokens: int, seed: int) -> str:
    sys.path.insert(0, os.path.dirname(__file__))
    from bench_kernels import code_tokens
    ids = code_tokens(tok, n_tokens + 5000 * seed)[5000 * seed:]
    return tok.decode(ids)


def passkey_prompt(tok, n_tokens: int, depth: float, key: int) -> str:
    """The classic pass-key retrieval prompt: a key hidden at ``depth`` in repetitive text."""
    intro = ("There is an important info hidden inside a lot of irrelevant text. Find it and "
             "memorize it. I will quiz you about the important information there.\n")
    noise = ("The grass is green. The sky is blue. The sun is yellow. Here we go. "
             "There and back again. ")
    n_noise = max(1, (n_tokens - 120) // len(tok.encode(noise, add_special_tokens=False)))
    cut = int(n_noise * depth)
    needle = f"The pass key is {key}. Remember it. {key} is the pass key. "
    return (intro + noise * cut + needle + noise * (n_noise - cut)
            + "\nWhat is the pass key? The pass key is")


def functional(client, tok, max_len: int, min_sparse_len: int) -> dict:
    out = {"chat": [], "completion": [], "below_threshold": None, "passkey": []}
    for p in SHORT_CHAT:
        r = client.chat.completions.create(model="model", messages=[{"role": "user", "content": p}],
                                           max_tokens=64, temperature=0.0)
        out["chat"].append(r.choices[0].message.content)
    for p in SHORT_COMPLETION:
        r = client.completions.create(model="model", prompt=p, max_tokens=64, temperature=0.0)
        out["completion"].append(r.choices[0].text)
    below = filler(tok, min_sparse_len - 1500, 2) + "\n\n# Summary of the code above:\n#"
    r = client.completions.create(model="model", prompt=below, max_tokens=48, temperature=0.0)
    out["below_threshold"] = r.choices[0].text
    out["below_threshold_prompt_tokens"] = r.usage.prompt_tokens
    for n, depth, key in [(max_len - 2500, 0.3, 71432), (max_len - 2500, 0.8, 40587),
                          (min_sparse_len + 3000, 0.5, 93210)]:
        prompt = passkey_prompt(tok, n, depth, key)
        r = client.completions.create(model="model", prompt=prompt, max_tokens=12,
                                      temperature=0.0)
        ans = r.choices[0].text
        out["passkey"].append(dict(prompt_tokens=r.usage.prompt_tokens, depth=depth, key=key,
                                   answer=ans, found=str(key) in ans))
    return out


async def load_test(tok, n_requests: int = 32, seed: int = 0) -> dict:
    from openai import AsyncOpenAI
    client = AsyncOpenAI(base_url=f"http://localhost:{PORT}/v1", api_key="x")
    rnd = random.Random(seed)
    prefix = filler(tok, 20000, 3)
    base = filler(tok, 32000, 4)
    prompts = []
    for i in range(n_requests):
        n_chars = int(len(base) * rnd.uniform(1000, 31000) / 32000)
        if i % 3 == 0:  # shares a ~20K-token prefix
            text = prefix + base[: max(0, n_chars - len(prefix))]
        else:
            start = rnd.randrange(0, len(base) - n_chars + 1)
            text = base[start:start + n_chars]
        prompts.append(text[-int(len(base) * 31000 / 32000):] + "\n# What does this code do?\n")

    async def one(i: int, text: str) -> dict:
        t0 = time.perf_counter()
        stream = i % 2 == 0
        first = None
        if stream:
            chunks = await client.completions.create(model="model", prompt=text, max_tokens=32,
                                                     temperature=0.0, stream=True)
            n_out = 0
            async for c in chunks:
                if first is None and c.choices and c.choices[0].text:
                    first = time.perf_counter() - t0
                n_out += 1
        else:
            r = await client.completions.create(model="model", prompt=text, max_tokens=32,
                                                temperature=0.0)
            first = time.perf_counter() - t0  # non-streaming: time to the whole answer
            n_out = r.usage.completion_tokens
        return dict(stream=stream, ttft=first, total=time.perf_counter() - t0, out=n_out)

    t0 = time.perf_counter()
    results = await asyncio.gather(*[one(i, p) for i, p in enumerate(prompts)],
                                   return_exceptions=True)
    wall = time.perf_counter() - t0
    ok = [r for r in results if isinstance(r, dict)]
    errors = [repr(r)[:300] for r in results if not isinstance(r, dict)]
    ttfts = sorted(r["ttft"] for r in ok if r["stream"] and r["ttft"] is not None)

    def pct(v, p):
        return v[min(len(v) - 1, int(round(p / 100 * (len(v) - 1))))] if v else None
    return dict(requests=n_requests, answered=len(ok), errors=errors, wall_s=wall,
                requests_per_s=len(ok) / wall, ttft_p50_s=pct(ttfts, 50), ttft_p99_s=pct(ttfts, 99))


def main() -> None:
    global PORT
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=os.environ.get("GPU_KIT_MODEL"))
    ap.add_argument("--configs", nargs="+", default=["minference", "FLASH_ATTN"],
                    help="BACKEND or BACKEND@tpN (tensor-parallel size N)")
    ap.add_argument("--port", type=int, default=8011)
    ap.add_argument("--max-len", type=int, default=32768)
    ap.add_argument("--min-sparse-len", type=int, default=16384)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="a minference setting for every minference server (JSON value), e.g. "
                         "budget_scale=0.25 so that 16K-31K prompts run the sparse kernels")
    ap.add_argument("--load", action="store_true")
    ap.add_argument("--skip-functional", action="store_true")
    ap.add_argument("--logdir", default=".")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    PORT = args.port
    signal.signal(signal.SIGTERM, stop_all_and_exit)
    extra = {}
    for item in args.set:
        key, _, value = item.partition("=")
        try:
            extra[key] = json.loads(value)
        except json.JSONDecodeError:
            extra[key] = value
    from openai import OpenAI
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(args.model)
    client = OpenAI(base_url=f"http://localhost:{PORT}/v1", api_key="x")
    report = {}
    for config in args.configs:
        settings = extra if parse_config(config)[0].lower() == "minference" else {}
        log_path = os.path.join(args.logdir, server_log_name(config, settings))
        proc = start_server(args.model, config, args.max_len, args.min_sparse_len, log_path,
                            settings)
        entry = {"mem_mib_start": gpu_memory_mib(), "settings": settings}
        try:
            if not args.skip_functional:
                entry["functional"] = functional(client, tok, args.max_len, args.min_sparse_len)
                print(json.dumps(entry["functional"]["passkey"]), flush=True)
            if args.load:
                entry["load"] = asyncio.run(load_test(tok))
                print(json.dumps(entry["load"]), flush=True)
            entry["mem_mib_end"] = gpu_memory_mib()
        finally:
            stop_server(proc)
        with open(log_path) as f:
            log = f.read()
        entry["log_errors"] = [ln for ln in log.splitlines()
                               if ("ERROR" in ln or "Traceback" in ln) and "SIGINT" not in ln][:20]
        entry["log_minference"] = [ln for ln in log.splitlines() if "minference" in ln.lower()][:10]
        report[config] = entry
        with open(args.out, "w") as f:
            json.dump(report, f, indent=1)
    if not args.skip_functional:
        # every pair of configurations: which greedy outputs are identical
        names = [c for c in args.configs if "functional" in report.get(c, {})]
        report["identical"] = {}
        for i, a in enumerate(names):
            for b in names[i + 1:]:
                fa, fb = report[a]["functional"], report[b]["functional"]
                same = {k: fa[k] == fb[k] for k in ("chat", "completion", "below_threshold")}
                same["passkey_answers"] = [x["answer"] == y["answer"]
                                           for x, y in zip(fa["passkey"], fb["passkey"])]
                report["identical"][f"{a} vs {b}"] = same
                print(f"identical greedy outputs, {a} vs {b}:", same, flush=True)
        with open(args.out, "w") as f:
            json.dump(report, f, indent=1)


if __name__ == "__main__":
    main()
