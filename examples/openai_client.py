"""Talk to `vllm serve MODEL --attention-backend minference` with the OpenAI client.

    vllm serve Qwen/Qwen2.5-Coder-0.5B-Instruct --attention-backend minference
    python examples/openai_client.py --base-url http://localhost:8000/v1

Short prompts take vLLM's dense path; a long prompt (here: this repository's Python source
with a pass key hidden in it) takes the sparse prefill once it passes ``min_sparse_len``.
"""

import argparse
import pathlib

from openai import OpenAI


def long_prompt(n_chars: int, key: int) -> str:
    root = pathlib.Path(__file__).resolve().parents[1]
    text = ""
    while len(text) < n_chars:  # repeat the sources until the prompt is long enough
        for f in sorted(root.rglob("*.py")):
            text += f.read_text(errors="ignore")
    text = text[:n_chars]
    mid = len(text) // 2
    return (text[:mid] + f"\n# the pass key is {key}\n" + text[mid:]
            + "\n\nWhat is the pass key in the text above? Answer with the number.")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--base-url", default="http://localhost:8000/v1")
    ap.add_argument("--model", default=None, help="served model name (default: the first)")
    ap.add_argument("--long-chars", type=int, default=100_000)
    args = ap.parse_args()
    client = OpenAI(base_url=args.base_url, api_key="EMPTY")
    model = args.model or client.models.list().data[0].id

    chat = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "Write a haiku about sparse attention."}],
        max_tokens=64, temperature=0.0)
    print("chat:", chat.choices[0].message.content)

    completion = client.completions.create(model=model, prompt="def quicksort(items):",
                                           max_tokens=64, temperature=0.0)
    print("completion:", completion.choices[0].text)

    stream = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": long_prompt(args.long_chars, 4321)}],
        max_tokens=16, temperature=0.0, stream=True)
    print("long prompt (streamed): ", end="")
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            print(chunk.choices[0].delta.content, end="", flush=True)
    print()


if __name__ == "__main__":
    main()
