"""Accuracy suite through vLLM: passkey retrieval and RULER-style tasks, one backend config.

Every prompt is generated from a fixed seed, so each configuration (FLASH_ATTN, minference
adaptive / fixed, scaled budgets) answers exactly the same prompts; rows are appended to
``--out`` and ``summarize_results.py`` pairs them with the dense rows.

* passkey: a 5-digit key hidden at depths 0-100% of repetitive filler (lengths x depths x seeds);
* RULER-style (``--ruler-lengths``): multi-key needle (the value of one of 4 keys),
  multi-value needle (4 values of one key), variable tracking (a 4-hop chain of
  assignments among distractor chains) and common-word extraction (the 10 most frequent
  words of a long list); scores are the share of expected items in the answer.

The real model runs with YaRN x4 at every length (one engine for the whole suite, the same
for every configuration).  ``--min-sparse-len`` below the shortest prompt makes minference
sparsify every prompt, including those the default threshold would leave dense.

    python benchmarks/bench_accuracy.py --backend FLASH_ATTN --out acc.json
    python benchmarks/bench_accuracy.py --backend minference --min-sparse-len 4096 --out acc.json
"""

from __future__ import annotations

import argparse
import json
import os
import random
import time

from bench_ttft import append_rows, build_field, chunk_setting, parse_settings, plugin_mode

# YaRN x4 over the model's 32K: positions past 131072 index outside vLLM's rope table (a
# device-side assert that kills the engine, seen on the H100 with a 131K prompt + answer)
ROPE_LIMIT = 4 * 32768
ANSWER_ROOM = 128  # prompt tokens left free for the answer (max_tokens <= 60) and the template
NOISE = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again. "
WORDS = ("apple river stone cloud music paper garden window silver orange planet forest candle "
         "bridge mirror rocket pencil island thunder copper violet marble falcon harbor meadow "
         "lantern puzzle saddle timber velvet anchor basket cactus dragon ember fabric glacier "
         "hammer igloo jacket kettle ladder magnet needle oyster pepper quartz ribbon shadow "
         "tunnel umbrella vessel walnut yogurt zipper").split()


class PromptMaker:
    """Builds prompts of a target token length with pieces inserted at given depths."""

    def __init__(self, tokenizer):
        self.tok = tokenizer
        self.unit = len(tokenizer.encode(NOISE, add_special_tokens=False))

    def n_tokens(self, text: str) -> int:
        return len(self.tok.encode(text, add_special_tokens=False))

    def fill(self, n_tokens: int, head: str, inserts: list[tuple[float, str]], tail: str) -> str:
        fixed = self.n_tokens(head + tail + "".join(t for _, t in inserts))
        n_units = max(1, (n_tokens - fixed) // self.unit)
        cuts = sorted((min(n_units, int(round(d * n_units))), t) for d, t in inserts)
        parts, done = [head], 0
        for cut, text in cuts:
            parts.append(NOISE * (cut - done))
            parts.append(text)
            done = cut
        parts.append(NOISE * (n_units - done))
        parts.append(tail)
        return "".join(parts)


def passkey(pm: PromptMaker, n: int, depth: float, rnd: random.Random) -> dict:
    key = str(rnd.randrange(10000, 100000))
    head = ("There is an important info hidden inside a lot of irrelevant text. Find it and "
            "memorize it. I will quiz you about the important information there.\n")
    needle = f"The pass key is {key}. Remember it. {key} is the pass key. "
    text = pm.fill(n, head, [(depth, needle)], "\nWhat is the pass key? The pass key is")
    return dict(task="passkey", prompt=text, expect=[key], max_tokens=12)


def multikey(pm: PromptMaker, n: int, rnd: random.Random) -> dict:
    keys = rnd.sample(WORDS, 4)
    vals = [str(rnd.randrange(1000000, 10000000)) for _ in keys]
    inserts = [(rnd.random(), f"One of the special magic numbers for {k} is: {v}. ")
               for k, v in zip(keys, vals)]
    j = rnd.randrange(4)
    head = "Some special magic numbers are hidden inside the following text. Memorize them.\n"
    tail = f"\nWhat is the special magic number for {keys[j]}? The special magic number for {keys[j]} is:"
    return dict(task="multikey", prompt=pm.fill(n, head, inserts, tail), expect=[vals[j]],
                max_tokens=16)


def multivalue(pm: PromptMaker, n: int, rnd: random.Random) -> dict:
    key = rnd.choice(WORDS)
    vals = [str(rnd.randrange(1000000, 10000000)) for _ in range(4)]
    inserts = [(rnd.random(), f"One of the special magic numbers for {key} is: {v}. ") for v in vals]
    head = "Some special magic numbers are hidden inside the following text. Memorize them.\n"
    tail = (f"\nWhat are all the special magic numbers for {key}? List them. "
            f"The special magic numbers for {key} are:")
    return dict(task="multivalue", prompt=pm.fill(n, head, inserts, tail), expect=vals,
                max_tokens=48)


def variable_tracking(pm: PromptMaker, n: int, rnd: random.Random) -> dict:
    names = ["".join(rnd.choice("ABCDEFGHIJKLMNOPQRSTUVWXYZ") for _ in range(5)) for _ in range(10)]
    value = str(rnd.randrange(10000, 100000))
    chain, other = names[:5], names[5:]
    lines = [f"VAR {chain[0]} = {value}. "] + [f"VAR {chain[i]} = VAR {chain[i - 1]}. "
                                               for i in range(1, 5)]
    decoy = str(rnd.randrange(10000, 100000))
    lines += [f"VAR {other[0]} = {decoy}. "] + [f"VAR {other[i]} = VAR {other[i - 1]}. "
                                                for i in range(1, 5)]
    depths = sorted(rnd.random() for _ in range(5))
    inserts = [(depths[i], lines[i]) for i in range(5)] + [(rnd.random(), ln) for ln in lines[5:]]
    head = "Memorize and track the chain(s) of variable assignment hidden in the following text.\n"
    tail = (f"\nQuestion: Find all variables that are assigned the value {value} in the text "
            f"above. Answer: According to the chain(s) of variable assignment in the text "
            f"above, 5 variables are assigned the value {value}, they are:")
    return dict(task="variable_tracking", prompt=pm.fill(n, head, inserts, tail), expect=chain,
                max_tokens=40)


def common_words(pm: PromptMaker, n: int, rnd: random.Random) -> dict:
    common = rnd.sample(WORDS, 10)
    rare_pool = [w + s for w in WORDS for s in ("s", "ed", "er", "ing", "ly") if w not in common]
    head = ("Below is a numbered list of words. In these words, some appear more often than "
            "others. Memorize the ones that appear most often.\n")
    tail = ("\nQuestion: What are the 10 most common words in the above list? Answer: The top "
            "10 words that appear most often in the list are:")

    def build(total: int) -> str:
        r = random.Random(rnd.random())
        words = common * max(2, total // 30)  # each common word: ~1/30 of the list...
        words += [r.choice(rare_pool) for _ in range(max(0, total - len(words)))]  # rare: 1-3x
        r.shuffle(words)
        return head + " ".join(f"{i + 1}. {w}" for i, w in enumerate(words)) + tail

    total = max(40, n // 8)
    for _ in range(3):  # list numbers grow longer with the list: fit the length by measuring
        text = build(total)
        total = max(40, int(total * (n - 8) / pm.n_tokens(text)))
    text = build(total)
    while pm.n_tokens(text) > n:
        total = int(total * 0.98)
        text = build(total)
    return dict(task="common_words", prompt=text, expect=common, max_tokens=60)


def score(answer: str, expect: list[str]) -> float:
    return sum(e in answer for e in expect) / len(expect)


TASKS = ("passkey", "multikey", "multivalue", "variable_tracking", "common_words")


def build_suite(tok, lengths, depths, seeds, ruler_lengths, ruler_samples,
                max_len: int = ROPE_LIMIT, ruler_first: int = 0) -> list[dict]:
    """Every prompt of the suite; a length at the engine's limit gets prompts ``ANSWER_ROOM``
    tokens shorter (prompt + answer must stay inside the rope table).  RULER samples are
    ``ruler_first ... ruler_first + ruler_samples - 1``: a later run adds new prompts to a
    cell instead of repeating the first ones."""
    pm = PromptMaker(tok)
    items = []

    def fit(n: int) -> int:
        return min(n, max_len - ANSWER_ROOM)

    for n in lengths:
        for d in depths:
            for s in seeds:
                it = passkey(pm, fit(n), d / 100, random.Random(f"pk-{n}-{d}-{s}"))
                items.append(dict(it, length=n, depth=d, seed=s))
    makers = {"multikey": multikey, "multivalue": multivalue,
              "variable_tracking": variable_tracking, "common_words": common_words}
    for n in ruler_lengths:
        for name, make in makers.items():
            for s in range(ruler_first, ruler_first + ruler_samples):
                it = make(pm, fit(n), random.Random(f"{name}-{n}-{s}"))
                items.append(dict(it, length=n, depth=None, seed=s))
    return items


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--backend", required=True, help="FLASH_ATTN or minference")
    ap.add_argument("--model", default=os.environ.get("GPU_KIT_MODEL"))
    ap.add_argument("--lengths", type=int, nargs="+", default=[8192, 16384, 32768, 65536, 131072])
    ap.add_argument("--depths", type=int, nargs="+", default=list(range(0, 101, 10)))
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--ruler-lengths", type=int, nargs="*", default=[16384, 32768, 131072])
    ap.add_argument("--ruler-samples", type=int, default=3)
    ap.add_argument("--ruler-first-sample", type=int, default=0,
                    help="index of the first RULER sample (12 after a 12-sample run: new "
                         "prompts, so that the two runs together have more samples per cell)")
    ap.add_argument("--tasks", nargs="+", default=None, choices=TASKS,
                    help="only these tasks (default: all)")
    ap.add_argument("--mode", choices=["adaptive", "fixed", "antidiagonal"], default=None)
    ap.add_argument("--gamma", type=float, default=None)
    ap.add_argument("--budget-scale", type=float, default=None)
    ap.add_argument("--min-sparse-len", type=int, default=None)
    ap.add_argument("--gpu-mem", type=float, default=0.85)
    ap.add_argument("--max-num-batched-tokens", type=int, default=None,
                    help="vLLM's prefill chunk (each chunk of a sparse prefill has its own "
                         "estimate, so the chunk can change answers)")
    ap.add_argument("--set", action="append", metavar="KEY=VALUE",
                    help="any other plugin setting (e.g. profile=..., adaptive_local=1024)")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()

    from vllm import LLM, SamplingParams
    cfg = {k: v for k, v in dict(mode=args.mode, gamma=args.gamma, budget_scale=args.budget_scale,
                                 min_sparse_len=args.min_sparse_len).items() if v is not None}
    cfg.update(parse_settings(args.set))
    longest = max(args.lengths + args.ruler_lengths)
    if longest > ROPE_LIMIT:
        raise SystemExit(f"lengths above {ROPE_LIMIT} need a larger YaRN factor than 4")
    max_len = ROPE_LIMIT
    os.environ.setdefault("VLLM_ALLOW_LONG_MAX_MODEL_LEN", "1")
    kw = dict(max_model_len=max_len, gpu_memory_utilization=args.gpu_mem, seed=0,
              attention_backend=args.backend,
              hf_overrides={"rope_parameters": {"rope_type": "yarn", "factor": 4.0,
                                                "original_max_position_embeddings": 32768,
                                                "rope_theta": 1000000.0},
                            "max_position_embeddings": max_len})
    if args.backend.lower() == "minference" and cfg:
        kw["additional_config"] = {"minference": cfg}
    kw.update(chunk_setting(args))
    llm = LLM(model=args.model, **kw)
    items = build_suite(llm.get_tokenizer(), args.lengths, args.depths, args.seeds,
                        args.ruler_lengths, args.ruler_samples, max_len,
                        args.ruler_first_sample)
    if args.tasks:
        items = [it for it in items if it["task"] in args.tasks]
    too_long = [it for it in items if len(llm.get_tokenizer().encode(it["prompt"]))
                > max_len - it["max_tokens"]]
    if too_long:  # never let one prompt fail the whole batch
        raise SystemExit(f"{len(too_long)} prompts longer than {max_len} tokens, e.g. "
                         f"{too_long[0]['task']}@{too_long[0]['length']}")
    mode = plugin_mode(args.backend, cfg, args.model)
    build = build_field(args.backend)
    rows = []
    t0 = time.perf_counter()
    # one batch per length, shortest first, rows saved after each: a run cut short keeps them
    for n in sorted({it["length"] for it in items}):
        group = [it for it in items if it["length"] == n]
        params = [SamplingParams(max_tokens=it["max_tokens"], temperature=0.0) for it in group]
        outs = llm.generate([it["prompt"] for it in group], params, use_tqdm=False)
        new = []
        for it, o in zip(group, outs):
            ans = o.outputs[0].text
            new.append(dict(task=it["task"], length=n, depth=it["depth"], seed=it["seed"],
                            prompt_tokens=len(o.prompt_token_ids),
                            score=score(ans, it["expect"]), answer=ans[:80],
                            backend=args.backend, mode=mode, config=cfg, **build,
                            **chunk_setting(args)))
        append_rows(args.out, new, indent=0)
        rows += new
    elapsed = time.perf_counter() - t0
    by_task: dict[tuple, list[float]] = {}
    for r in rows:
        by_task.setdefault((r["task"], r["length"]), []).append(r["score"])
    print(json.dumps(dict(backend=args.backend, config=cfg, seconds=round(elapsed, 1),
                          scores={f"{t}@{n}": round(sum(v) / len(v), 3)
                                  for (t, n), v in sorted(by_task.items())})), flush=True)


if __name__ == "__main__":
    main()
