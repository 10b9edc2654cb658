"""Offline inference with vLLM's ``LLM`` and the minference backend.

    python examples/offline_llm.py --model Qwen/Qwen2.5-Coder-0.5B-Instruct

Settings go through ``additional_config`` (the same keys as
``--additional-config.minference.*`` on the command line): ``profile`` (a profile file or
bundled name), ``min_sparse_len`` (prefills whose sequence reaches it are sparse),
``budget_scale`` and ``max_density``.
"""

import argparse

from vllm import LLM, SamplingParams


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="Qwen/Qwen2.5-Coder-0.5B-Instruct")
    ap.add_argument("--min-sparse-len", type=int, default=16384)
    args = ap.parse_args()
    llm = LLM(model=args.model, attention_backend="minference", max_model_len=32768,
              additional_config={"minference": {"min_sparse_len": args.min_sparse_len}})
    params = SamplingParams(max_tokens=64, temperature=0.0)
    filler = "".join(f"x{i} = {i} * 2\n" for i in range(3000))  # ~20K tokens of code
    prompts = [
        "Write a Python function that merges two sorted lists.",
        filler + "# the secret value is 8675309\n" + filler
        + "\n# Question: what is the secret value mentioned above? Answer:",
    ]
    for out in llm.generate(prompts, params):
        print(f"[{len(out.prompt_token_ids)} prompt tokens] {out.outputs[0].text!r}")


if __name__ == "__main__":
    main()
