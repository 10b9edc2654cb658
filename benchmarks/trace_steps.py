"""Where a traced prefill spent its attention time, step by step (the backend's ``trace``).

    python benchmarks/trace_steps.py trace.jsonl [--markdown out.md]

One row per prefill step (all layers of one chunk): the keys the chunk's rows reach, how
many layers ran sparse (on which kernel) or dense (because the guard expected dense lists,
or because the step's own lists were too dense), the attention ms summed over layers, split
into sparse and dense layers, the part of it spent planning (estimate, selection, lists;
every planned layer, also one whose lists then ran dense), and the mean density of the
sparse layers with, for those on FlashAttention-3, how many times their listed tiles FA3
computes (its page lists hold a row group's union of its 64-row blocks' tiles), how many
layers waited for their own density (each wait stalls the host) and how many that did not
wait took the other path than their own lists' density would have chosen (the guard's
prediction misjudged them; ``--max-density`` must be the run's setting).  A prompt
starts where the keys fall back (a new request); the last prompt of the file is the one
reported unless ``--prompt`` says otherwise.
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict

from vllm_minference.config import MInferenceSettings

# the plugin's default max_density (which path a step's own density would have chosen)
DEFAULT_MAX_DENSITY: float = MInferenceSettings.model_fields["max_density"].default


def load(path: str) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def steps_of(records: list[dict]) -> list[list[dict]]:
    """Records grouped by step, in order."""
    by_step: dict[int, list[dict]] = defaultdict(list)
    for r in records:
        by_step[r["step"]].append(r)
    return [by_step[k] for k in sorted(by_step)]


def prompts_of(steps: list[list[dict]]) -> list[list[list[dict]]]:
    """Steps grouped by prompt: a step whose keys do not exceed the previous one's starts a
    new prompt (chunked prefill of one prompt reaches further every step)."""
    prompts: list[list[list[dict]]] = []
    last = None
    for st in steps:
        kv = st[0]["kv_len"]
        if last is None or kv <= last:
            prompts.append([])
        prompts[-1].append(st)
        last = kv
    return prompts


def step_row(st: list[dict], max_density: float = DEFAULT_MAX_DENSITY) -> dict:
    sparse = [r for r in st if r["path"] == "sparse"]
    dense = [r for r in st if r["path"] != "sparse"]
    row = dict(kv_len=st[0]["kv_len"], rows=st[0]["rows"], layers=len(st),
               sparse_fa3=sum(r["kernel"] == "fa3" for r in sparse),
               sparse_triton=sum(r["kernel"] == "triton" for r in sparse),
               dense_expected=sum(r["path"] == "dense (expected)" for r in dense),
               dense_lists=sum(r["path"] == "dense (lists)" for r in dense),
               ms=sum(r["ms"] for r in st), sparse_ms=sum(r["ms"] for r in sparse),
               dense_ms=sum(r["ms"] for r in dense),
               plan_ms=sum(r.get("plan_ms") or 0.0 for r in st),
               waited=sum(bool(r.get("waited")) for r in st),
               misjudged=sum(r["density"] is not None and not r.get("waited")
                             and (r["path"] == "sparse") != (r["density"] <= max_density)
                             for r in st))
    if sparse:
        row["sparse_density"] = sum(r["density"] for r in sparse) / len(sparse)
    on_fa3 = [r for r in sparse if r.get("computed") is not None]
    if on_fa3:  # FA3's page lists compute each row group's union of its blocks' tiles
        row["fa3_union"] = sum(r["computed"] / r["density"] for r in on_fa3) / len(on_fa3)
    planned = [r for r in st if r["density"] is not None and r["expected"] is not None]
    if planned:  # how far the guard's prediction was from the step's own lists
        row["guard_error"] = sum(abs(r["expected"] - r["density"]) for r in planned) / len(planned)
    if dense:
        row["dense_ms_per_layer"] = row["dense_ms"] / len(dense)
    return row


def markdown(rows: list[dict]) -> str:
    head = ("| keys | rows | sparse fa3 / triton | dense expected / lists | attn ms | sparse ms "
            "| dense ms | plan ms | dense ms/layer | sparse density | fa3 union | guard error "
            "| waited | misjudged |\n"
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n")
    lines = []
    for r in rows:
        def f(key, fmt):
            return format(r[key], fmt) if key in r else ""
        lines.append(f"| {r['kv_len']} | {r['rows']} | {r['sparse_fa3']} / {r['sparse_triton']} "
                     f"| {r['dense_expected']} / {r['dense_lists']} | {r['ms']:.1f} "
                     f"| {r['sparse_ms']:.1f} | {r['dense_ms']:.1f} | {r['plan_ms']:.1f} "
                     f"| {f('dense_ms_per_layer', '.2f')} "
                     f"| {f('sparse_density', '.3f')} | {f('fa3_union', '.2f')} "
                     f"| {f('guard_error', '.3f')} | {r['waited']} | {r['misjudged']} |")
    total = {k: sum(r[k] for r in rows)
             for k in ("ms", "sparse_ms", "dense_ms", "plan_ms", "waited", "misjudged")}
    lines.append(f"| total | | | | {total['ms']:.1f} | {total['sparse_ms']:.1f} "
                 f"| {total['dense_ms']:.1f} | {total['plan_ms']:.1f} | | | | "
                 f"| {total['waited']} | {total['misjudged']} |")
    return head + "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("trace")
    ap.add_argument("--prompt", type=int, default=-1, help="which prompt of the file")
    ap.add_argument("--markdown", default=None, help="also write the table here")
    ap.add_argument("--max-density", type=float, default=DEFAULT_MAX_DENSITY,
                    help="the run's max_density (which path a step's own density chose)")
    args = ap.parse_args()
    prompts = prompts_of(steps_of(load(args.trace)))
    rows = [step_row(st, args.max_density) for st in prompts[args.prompt]]
    table = markdown(rows)
    print(f"{len(prompts)} prompt(s) in the trace; prompt {args.prompt}:\n{table}")
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(table)


if __name__ == "__main__":
    main()
