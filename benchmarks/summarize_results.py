"""Turn the raw JSON of a GPU session into the published results: paired tables and plots.

    python benchmarks/summarize_results.py RAW_DIR [--device h100]

``RAW_DIR`` holds what the device calls wrote (``kernels.json``, ``ttft*.json``,
``decode.json``, ``accuracy.json``, ``serving.json``); a ``L<n>-`` prefix names the machine
lease a file came from, and TTFT rows pair with the dense row of their own lease first.
Writes into ``benchmarks/results/``: ``kernels-<device>.json``, ``ttft-<device>.json``,
``accuracy-qwen2.5-coder-0.5b-<device>.json``, ``serving-<device>.json``, a PNG per table,
and ``RESULTS-<device>.md`` with the markdown tables.
Every number comes from the raw files; nothing is computed here but pairing and ratios.
"""

from __future__ import annotations

import argparse
import glob
import json
import math
import os
import statistics
from collections import defaultdict

import trace_steps  # a sibling script (this folder is first on the path when run)

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(HERE, "results")
SUITE_MIN_SPARSE_LEN = 4096  # the accuracy lanes' --min-sparse-len (short prompts sparse too)


def load(path: str):
    with open(path) as f:
        return json.load(f)


def other_lease(row: dict) -> str:
    """Flag a TTFT ratio whose dense run came from another machine lease (its own had none):
    two machines of one kind, not one run."""
    return f" (dense of {row['dense_lease'] or 'an untagged file'})" if "dense_lease" in row else ""


def fmt_len(n: int) -> str:
    return f"{n // 1048576}M" if n >= 1048576 and n % 1048576 == 0 else f"{round(n / 1024)}K"


# ------------------------------------------------------------------------------- TTFT
def engines_note(r: dict) -> str:
    """Where a ratio is of medians over several engine starts, how many on each side."""
    if "engines" not in r:
        return ""
    return f" (medians of {r['engines'][0]} / {r['engines'][1]} engines)"


def pair_ttft(raw_rows: list[dict]) -> list[dict]:
    """One row per (model, tp, seq_len, minference mode/config): dense vs minference."""
    def key(r):  # the prefill chunk is an engine setting both backends share
        return (r["model"], r["tp"], r["seq_len"], r.get("max_num_batched_tokens"))
    # several engines of one configuration (repeated pairs of short prompts, whose
    # engine-to-engine spread exceeds the backends' difference) count by their median
    dense, dense_lease = {}, defaultdict(list)
    sparse = defaultdict(list)
    for r in raw_rows:
        if r["kind"] != "ttft":
            continue
        if r["mode"] == "dense":  # a row's own lease first, else the last lease seen
            dense_lease[(*key(r), r.get("lease"))].append(r)
            dense[key(r)] = dense_lease[(*key(r), r.get("lease"))]
        else:
            sparse[(*key(r), r.get("lease"), json.dumps(r["config"], sort_keys=True),
                    r.get("build"))].append(r)
    out = []
    for group in sparse.values():
        r = group[0]
        ds = dense_lease.get((*key(r), r.get("lease"))) or dense.get(key(r))
        if not ds:
            continue
        d_s = statistics.median(x["seconds"] for x in ds)
        m_s = statistics.median(x["seconds"] for x in group)
        out.append(dict(kind="ttft", model=r["model"], layers=r["layers"], tp=r["tp"],
                        seq_len=r["seq_len"], mode=r["mode"], config=r["config"],
                        max_num_batched_tokens=r.get("max_num_batched_tokens"),
                        dense_s=round(d_s, 4), minference_s=round(m_s, 4),
                        speedup=round(d_s / m_s, 3), runs=r["runs"],
                        **({"build": r["build"]} if r.get("build") else {}),
                        **({"engines": [len(ds), len(group)]}
                           if len(ds) > 1 or len(group) > 1 else {}),
                        **({"dense_lease": ds[0].get("lease")}
                           if ds[0].get("lease") != r.get("lease") else {})))
    by_file = defaultdict(dict)  # decode runs pair within their file (one call, one machine)
    for r in raw_rows:
        if r["kind"] == "decode":
            by_file[r.get("file")][r["mode"]] = r
    for dec in by_file.values():
        if "dense" not in dec:
            continue
        for mode, r in dec.items():
            if mode == "dense":
                continue
            out.append(dict(kind="decode", model=r["model"], layers=r["layers"], tp=r["tp"],
                            seq_len=r["seq_len"], mode=mode, config=r["config"],
                            dense_tokens_per_s=round(dec["dense"]["tokens_per_s"], 1),
                            minference_tokens_per_s=round(r["tokens_per_s"], 1),
                            ratio=round(r["tokens_per_s"] / dec["dense"]["tokens_per_s"], 3)))
    return out


def lease_of(path: str) -> str | None:
    """Machine lease of a raw file named ``L<n>-<name>.json`` (one GPU machine held from the
    kit's arrival to its return), else None: timings pair within a lease first."""
    name = os.path.basename(path)
    head, sep, _ = name.partition("-")
    return head if sep and head[:1] == "L" and head[1:].isdigit() else None


REFERENCE_BACKEND = "FLASH_ATTN"


def as_reference_or_not(row: dict) -> dict:
    """Dense rows of a backend other than FLASH_ATTN (e.g. TRITON_ATTN) are a configuration
    of their own, ``dense:<backend>``, compared with FLASH_ATTN like a sparse one: how often
    two exact attentions answer differently is the noise floor the sparse counts sit on."""
    backend = row.get("backend", REFERENCE_BACKEND)
    if row.get("mode") == "dense" and backend.upper() != REFERENCE_BACKEND:
        return dict(row, mode=f"dense:{backend.upper()}")
    return row


def load_tagged(path: str) -> list[dict]:
    rows = [as_reference_or_not(r) for r in load(path)]
    lease = lease_of(path)
    name = os.path.basename(path)
    return [dict(r, lease=lease, file=name) if lease else dict(r, file=name) for r in rows]


def output_agreement(raw_rows: list[dict]) -> list[dict]:
    """Greedy outputs of fixed prompts: configurations compared token by token."""
    outs = defaultdict(dict)
    for r in raw_rows:  # a later file's rows replace an earlier one's of the same configuration
        if r["kind"] == "outputs":
            outs[(r["mode"], r["tp"])][r["seq_len"]] = r["token_ids"]
    keys = sorted(outs)
    rows = []
    for i, a in enumerate(keys):
        for b in keys[i + 1:]:
            if a[0] != b[0] and a[1] != b[1]:  # same mode across TP, or modes at one TP
                continue
            for n in sorted(set(outs[a]) & set(outs[b])):
                x, y = outs[a][n], outs[b][n]
                first = next((j for j, (p, q) in enumerate(zip(x, y)) if p != q), None)
                rows.append(dict(a=f"{a[0]} tp{a[1]}", b=f"{b[0]} tp{b[1]}", prompt_tokens=n,
                                 identical=x == y, first_divergence=first))
    return rows


def short_label(cfg: str) -> str:
    """A configuration label for plot legends: the adaptive floors in a few words."""
    return (cfg.replace(" adaptive_local=1024 adaptive_sinks=128", " + A-shape floors")
            .replace("adaptive_floor=", "fixed floor ×")
            .replace("profile=qwen2.5-coder-0.5b-instruct-", "profile "))


def plot_ttft(rows: list[dict], path: str, device: str = "h100") -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(12, 6.5))
    dense = sorted({r["seq_len"]: r["dense_s"] for r in rows
                    if r["kind"] == "ttft" and r["model"] == "real" and r["tp"] == 1}.items())
    if dense:
        a1.plot([d[0] for d in dense], [d[1] for d in dense], ".-", color="gray", alpha=0.6,
                label="FLASH_ATTN (Qwen2.5-Coder-0.5B)")
    styles = {("real", "adaptive"): "o-", ("real", "fixed"): "s--",
              ("dummy-llama", "adaptive"): "^:", ("dummy-llama", "fixed"): "v:"}
    lines = defaultdict(list)  # one line per model and configuration (mode and settings)
    for r in rows:  # other modes (antidiagonal, ...) as diamonds: a run of one length is a point
        if r["kind"] == "ttft" and r["tp"] == 1:
            chunk = r.get("max_num_batched_tokens")
            cfg = config_label(r["mode"], r["config"]) + (
                f", {fmt_len(chunk)} chunks" if chunk else "")
            lines[(r["model"], r["mode"], cfg)].append(r)
    for (model, mode, cfg), rs in sorted(lines.items()):
        style = styles.get((model, mode), "D-")
        rs = sorted(rs, key=lambda r: r["seq_len"])
        x = [r["seq_len"] for r in rs]
        label = ("Qwen2.5-Coder-0.5B" if model == "real" else "Llama-3-8B shape, dummy") + \
            f", {short_label(cfg)}"
        a1.plot(x, [r["minference_s"] for r in rs], style, label=f"minference ({label})")
        if model != "real":
            a1.plot(x, [r["dense_s"] for r in rs], style[0] + "-", color="gray", alpha=0.6,
                    label=f"FLASH_ATTN ({label.split(',')[0]})")
        a2.plot(x, [r["speedup"] for r in rs], style, label=label)
    for ax in (a1, a2):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("prompt tokens")
        ax.grid(alpha=0.3)
    a1.set_yscale("log")
    a1.set_ylabel("time to first token (s)")
    a2.axhline(1.0, color="k", lw=0.8)
    a2.set_ylabel("speedup over FLASH_ATTN")
    for ax in (a1, a2):  # below the axes: long configuration names must not hide points
        ax.legend(fontsize=6.5, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=1)
    fig.suptitle(f"vLLM 0.26 TTFT, minference vs FLASH_ATTN ({device.upper()})")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


# ------------------------------------------------------------------------------- kernels
def plot_kernels(rows: list[dict], path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    groups = defaultdict(list)
    for r in rows:
        key = (r["input"], r["pattern"], r["q_heads"], r.get("kernel", "triton"))
        groups[key].append(r)
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.set_prop_cycle(color=plt.cm.tab20.colors)
    for (inp, pat, qh, kern), rs in sorted(groups.items()):
        by_len = defaultdict(list)
        for r in rs:
            by_len[r["seq_len"]].append(r["speedup"])
        x = sorted(by_len)
        shape = "Qwen 14/2 d64" if qh == 14 else "Llama 32/8 d128"
        ax.plot(x, [sum(by_len[n]) / len(by_len[n]) for n in x],
                "o-" if kern == "triton" else "s--", label=f"{inp}, {pat}, {shape}, {kern}")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.axhline(1.0, color="k", lw=0.8)
    ax.set_xlabel("sequence length")
    ax.set_ylabel("speedup over FA3 (estimate+index+attention)")
    ax.legend(fontsize=6)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def kernel_table(rows: list[dict]) -> str:
    lines = ["| input | pattern | tiles on | shape | seq | density | FA3 ms | est ms | index ms | "
             "attn ms | total ms | speedup | efficiency | vLLM sparse_attn_func ms |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    agg = defaultdict(list)
    for r in rows:
        pat = r["pattern"]
        if pat == "profile":  # a profile's own planning: name it and its budget scale
            pat = f"profile {r.get('profile', '?').removesuffix('.json')}"
            if r.get("budget_scale", 1.0) != 1.0:
                pat += f" ×{r['budget_scale']}"
        if r.get("extra_blocks"):  # bench_kernels --extra-blocks (fixed mode's default: 32)
            computed = r.get("kernel", "triton").startswith("fa3")
            pat += (f" + {r['extra_blocks']} extra tiles" if computed else
                    f" ({r['extra_blocks']} extra tiles not computed by this kernel"
                    f"{'' if r.get('extra_excluded') else ', yet in its density'})")
        agg[(r["input"], pat, kernel_cell(r), r["q_heads"], r["kv_heads"], r["head_dim"],
             r["seq_len"])].append(r)
    for (inp, pat, kern, qh, kh, d, n), rs in sorted(
            agg.items(), key=lambda kv: (kv[0][6], kv[0][0], kv[0][3], kv[0][1], kv[0][2])):
        def m(k):
            vals = [r[k] for r in rs if r.get(k) is not None]
            return sum(vals) / len(vals) if vals else None
        fa2 = m("fa2_sparse_ms")
        lines.append(f"| {inp} | {pat} | {kern} | {qh}/{kh} d{d} | {fmt_len(n)} | "
                     f"{m('density'):.3f} | "
                     f"{m('dense_ms'):.1f} | {m('estimate_ms'):.2f} | {m('index_ms'):.2f} | "
                     f"{m('attn_ms'):.1f} | {m('total_ms'):.1f} | {m('speedup'):.2f}x | "
                     f"{m('efficiency'):.2f} | {'' if fa2 is None else f'{fa2:.1f}'} |")
    return "\n".join(lines)


def kernel_cell(r: dict) -> str:
    """The kernel a row timed, with its lease where the raw folder holds several leases'
    kernel files (each may carry another build of the same kernel label)."""
    kernel = r.get("kernel", "triton")
    return f"{kernel} ({r['lease']})" if r.get("lease") else kernel


def stage_table(rows: list[dict]) -> str:
    """Where the FA3 page-list time goes (rows of bench_kernels runs that timed the stages)."""
    staged = [r for r in rows if r.get("fa3_stages_ms")]
    if not staged:
        return ""
    names = ["gather", "tables", "fa3", "columns"]
    lines = ["| tiles on | shape | seq | layer | density | in pages | FA3 dense ms | "
             + " | ".join(f"{n} ms" for n in names) + " | stage sum ms | timed attn ms | "
             "FA3 speed on pages |",
             "|---|---|---|---|---|---|---|" + "---|" * len(names) + "---|---|---|"]
    for r in staged:
        st = r["fa3_stages_ms"]
        speed = r["page_density"] * r["dense_ms"] / st["fa3"] if st.get("fa3") else None
        layer = r.get("layer", ",".join(str(x) for x in r.get("layers", [])))
        lines.append(
            f"| {kernel_cell(r)} | {r['q_heads']}/{r['kv_heads']} d{r['head_dim']} | "
            f"{fmt_len(r['seq_len'])} | "
            f"{layer} | {r['density']:.3f} | {r['page_density']:.3f} | {r['dense_ms']:.1f} | "
            + " | ".join(f"{st.get(n, 0.0):.1f}" for n in names)
            + f" | {sum(st.get(n, 0.0) for n in names):.1f} | {r['attn_ms']:.1f} | "
            f"{'' if speed is None else f'{speed:.2f}'} |")
    return "\n".join(lines)


# ------------------------------------------------------------------------------- accuracy
def config_label(mode: str, cfg: dict) -> str:
    """Column name of a minference configuration: mode, gamma, budget scale, other settings
    (``min_sparse_len`` only where it is not the accuracy suite's 4096: a 128K prompt sparse
    from 32K is another configuration than one dense up to the plugin's 64K)."""
    parts = [mode]
    if mode == "adaptive":
        parts.append(f"γ={cfg.get('gamma', 0.95)}")
    if float(cfg.get("budget_scale", 1.0)) != 1.0:
        parts.append(f"×{cfg['budget_scale']}")
    for k in sorted(cfg):
        if k in ("mode", "gamma", "budget_scale") or (
                k == "min_sparse_len" and int(cfg[k]) == SUITE_MIN_SPARSE_LEN):
            continue
        v = os.path.basename(str(cfg[k])).removesuffix(".json") if k == "profile" else cfg[k]
        parts.append(f"{k}={v}")
    return " ".join(parts)


def run_config(r: dict) -> dict:
    """A minference row's settings; a prefill chunk of its own makes a configuration of its
    own (it changes each chunk's estimate, so it can change answers), and so does another
    build of the plugin (``bench_ttft.plugin_build``; rows from before it have none)."""
    cfg = dict(r["config"])
    if r.get("max_num_batched_tokens"):
        cfg["max_num_batched_tokens"] = r["max_num_batched_tokens"]
    if r.get("build"):
        cfg["build"] = r["build"]
    return cfg


def prompt_means(raw: list[dict]) -> list[dict]:
    """One row per (configuration, prompt): a prompt run again by the same configuration (a
    folder holding a 12-sample suite and a 36-prompt run overlap on 12 prompts) counts once,
    at its mean score (batching differs between runs, so a repeat may answer differently)."""
    groups: dict = {}
    for r in raw:
        cfg = "dense" if r["mode"] == "dense" else json.dumps(
            [r["mode"], run_config(r)], sort_keys=True)
        groups.setdefault((cfg, r["task"], r["length"], r["depth"], r["seed"]), []).append(r)
    return [dict(rs[0], score=sum(r["score"] for r in rs) / len(rs), runs=len(rs))
            for rs in groups.values()]


def pair_accuracy(raw: list[dict]) -> list[dict]:
    """Mean score over seeds per (task, length, depth), dense vs each minference config."""
    def key(r):
        return (r["task"], r["length"], r["depth"])
    dense = defaultdict(list)
    for r in raw:
        if r["mode"] == "dense":
            dense[key(r)].append(r["score"])
    cfgs = defaultdict(lambda: defaultdict(list))
    for r in raw:  # the row's mode is what the plugin ran (its default may have changed)
        if r["mode"] != "dense":
            cfgs[(r["mode"], json.dumps(run_config(r), sort_keys=True))][key(r)].append(
                r["score"])
    out = []
    for (mode, cfg), scores in cfgs.items():
        c = json.loads(cfg)
        for k, v in sorted(scores.items(), key=lambda kv: (kv[0][0], kv[0][1], kv[0][2] or 0)):
            if k not in dense:
                continue
            out.append(dict(task=k[0], length=k[1], depth=k[2],
                            dense=round(100 * sum(dense[k]) / len(dense[k]), 1),
                            minference=round(100 * sum(v) / len(v), 1), mode=mode,
                            gamma=c.get("gamma", 0.95) if mode == "adaptive" else None,
                            budget_scale=c.get("budget_scale", 1.0),
                            min_sparse_len=c.get("min_sparse_len"), n=len(v),
                            label=config_label(mode, c)))
    return out


def unpaired_scores(raw: list[dict]) -> list[dict]:
    """Mean score per configuration, task and length, for a folder without the dense rows to
    pair with (they were measured in an earlier session): reported, not compared."""
    cells = defaultdict(list)
    for r in raw:
        label = "dense" if r["mode"] == "dense" else config_label(r["mode"], run_config(r))
        cells[(label, r["task"], r["length"])].append(r["score"])
    return [dict(label=k[0], task=k[1], length=k[2], score=round(100 * sum(v) / len(v), 1),
                 prompts=len(v)) for k, v in sorted(cells.items())]


def paired_changes(raw: list[dict]) -> list[dict]:
    """Per configuration, task and length: prompts (same task, length, depth and seed) that
    scored higher / lower than dense.  With 12 samples a cell moves by one answer in 12, so
    the count says whether a cell's difference is one answer or a trend."""
    def key(r):
        return (r["task"], r["length"], r["depth"], r["seed"])
    dense = {key(r): r["score"] for r in raw if r["mode"] == "dense"}
    counts = defaultdict(lambda: [0, 0, 0])
    for r in raw:
        if r["mode"] == "dense" or key(r) not in dense:
            continue
        c = counts[(config_label(r["mode"], run_config(r)), r["task"], r["length"])]
        c[0] += r["score"] > dense[key(r)] + 1e-9
        c[1] += r["score"] < dense[key(r)] - 1e-9
        c[2] += 1
    return [dict(label=k[0], task=k[1], length=k[2], better=v[0], worse=v[1], prompts=v[2])
            for k, v in sorted(counts.items())]


def sign_test_p(higher: int, lower: int) -> float:
    """Two-sided exact sign test: how likely a split this uneven is when neither side is
    better (ties left out).  With 12 prompts a cell, one or two answers apart is ~1.0."""
    n = higher + lower
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, k) for k in range(min(higher, lower) + 1)) / 2 ** n
    return min(1.0, 2 * tail)


def overall_changes(changes: list[dict]) -> list[dict]:
    """Per configuration, all its tasks and lengths together (one sign test over them)."""
    total = defaultdict(lambda: [0, 0, 0])
    for c in changes:
        t = total[c["label"]]
        t[0] += c["better"]
        t[1] += c["worse"]
        t[2] += c["prompts"]
    return [dict(label=k, better=v[0], worse=v[1], prompts=v[2], p=sign_test_p(v[0], v[1]))
            for k, v in sorted(total.items())]


def accuracy_table(rows: list[dict]) -> str:
    cfgs = sorted({r["label"] for r in rows})
    by = defaultdict(lambda: defaultdict(list))
    dense_by = defaultdict(lambda: defaultdict(list))
    for r in rows:
        by[(r["task"], r["length"])][r["label"]].append(r["minference"])
        dense_by[(r["task"], r["length"])][r["label"]].append(r["dense"])
    # the dense score of a cell, from the first configuration that has the cell (a run cut
    # short may lack some)
    dense = {cell: next(v for c in cfgs if (v := per.get(c))) for cell, per in dense_by.items()}
    head = " | ".join(cfgs)
    lines = [f"| task | length | dense | {head} |", "|---|---|---|" + "---|" * len(cfgs)]
    for (task, n), per in sorted(by.items()):
        d = dense[(task, n)]
        cells = []
        for c in cfgs:
            v = per.get(c)
            cells.append(f"{sum(v) / len(v):.1f}" if v else "")
        lines.append(f"| {task} | {fmt_len(n)} | {sum(d) / len(d):.1f} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def sparse_start_note(rows: list[dict]) -> str:
    """Where the sparse runs began (``min_sparse_len``), for the plot title: the runs of
    2026-11-25/26 forced sparse from 4K; later ones kept the default (64K)."""
    starts = {r.get("min_sparse_len") for r in rows}
    if starts == {None}:
        return "minference with its default min_sparse_len (sparse from 64K keys)"
    if len(starts) == 1:
        return f"minference forced sparse from {fmt_len(int(starts.pop()))} tokens"
    return "minference sparse from 4K (forced) or 64K (default) keys, per configuration"


def plot_accuracy(rows: list[dict], path: str) -> None:
    """Heatmap: task@length (rows) x configuration (columns), % correct, dense first."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    if not rows:
        return
    cfgs = sorted({r["label"] for r in rows})
    cells = sorted({(r["task"], r["length"]) for r in rows})
    grid = np.full((len(cells), len(cfgs) + 1), np.nan)
    acc = defaultdict(list)
    for r in rows:
        acc[(r["task"], r["length"], r["label"])].append(r["minference"])
        acc[(r["task"], r["length"], "dense")].append(r["dense"])
    for i, (t, n) in enumerate(cells):
        for j, c in enumerate(["dense"] + cfgs):
            v = acc.get((t, n, c))
            if v:
                grid[i, j] = sum(v) / len(v)
    fig, ax = plt.subplots(figsize=(2 + 1.3 * (len(cfgs) + 1), 0.35 * len(cells) + 1.5))
    ax.imshow(grid, vmin=0, vmax=100, cmap="RdYlGn", aspect="auto")
    for i in range(grid.shape[0]):
        for j in range(grid.shape[1]):
            if not np.isnan(grid[i, j]):
                ax.text(j, i, f"{grid[i, j]:.0f}", ha="center", va="center", fontsize=7)
    names = ["FLASH_ATTN"] + [short_label(c) for c in cfgs]
    ax.set_xticks(range(len(names)), names, fontsize=7, rotation=20)
    ax.set_yticks(range(len(cells)), [f"{t} @{fmt_len(n)}" for t, n in cells], fontsize=7)
    ax.set_title("Accuracy suite, Qwen2.5-Coder-0.5B (YaRN x4), % correct\n"
                 + sparse_start_note(rows), fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


# ------------------------------------------------------------------------------- main
def chunked_table(rows: list[dict]) -> str:
    """Per-step rows of bench_chunked: where each step's sparse time goes against FA3 dense on
    the same rows (efficiency = dense ms x density / sparse ms), then each prompt's total."""
    out = ["| pattern | kernel | keys | path | density (in pages) | FA3 dense ms | est ms | "
           "index ms | attn ms | of which FA3 / columns / tables ms | efficiency |",
           "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in (r for r in rows if r["kind"] == "step"):
        if "attn_ms" not in r:
            out.append(f"| {r['pattern']} | {kernel_label(r)} | {fmt_len(r['chunk_end'])} | "
                       f"{r['path']} | | {r['dense_ms']:.1f} | | | | | |")
            continue
        st = r.get("fa3_stages_ms") or {}
        stages = " / ".join(f"{st[k]:.1f}" for k in ("fa3", "columns", "tables") if k in st)
        eff = r["dense_ms"] * r["density"] / r["sparse_ms"]
        pages = f" ({r['page_density']:.3f})" if "page_density" in r else ""
        out.append(f"| {r['pattern']} | {kernel_label(r)} | {fmt_len(r['chunk_end'])} | {r['path']} | "
                   f"{r['density']:.3f}{pages} | {r['dense_ms']:.1f} | {r['estimate_ms']:.2f} | "
                   f"{r['index_ms']:.2f} | {r['attn_ms']:.1f} | {stages} | {eff:.2f} |")
    for r in (r for r in rows if r["kind"] == "prompt"):
        out.append(f"| {r['pattern']} | {kernel_label(r)} | prompt {fmt_len(r['seq_len'])} in "
                   f"{fmt_len(r['chunk'])} chunks | {r['sparse_steps']}/{r['steps']} steps sparse "
                   f"| | {r['dense_ms']:.1f} | | | {r['total_ms']:.1f} | | "
                   f"{r['speedup']:.2f}x |")
    return "\n".join(out)


def estimate_table(rows: list[dict]) -> str:
    """tune_estimate rows: the estimate's parts per (package, shape, keys, launch option)."""
    out = ["| package | shape | keys | option | pass 1 ms | pass 2 ms | both passes ms | "
           "FA3 row stats ms | top-k selection ms | adaptive selection ms |",
           "|---|---|---|---|---|---|---|---|---|---|"]
    def opt(r: dict, key: str) -> str:  # a column older packages' rows lack
        return f"{r[key]:.2f}" if r.get(key) is not None else ""

    extra = [r for r in rows if r.get("kind") == "extra_tiles"]
    block_sparse = [r for r in rows if r.get("kind") == "block_sparse_lists"]
    for r in rows:
        if r.get("kind") in ("extra_tiles", "block_sparse_lists"):
            continue
        fa3, ada = opt(r, "fa3_row_stats_ms"), opt(r, "adaptive_select_ms")
        out.append(f"| {r['label']} | {r['q_heads']}/{r['kv_heads']} d{r['head_dim']} | "
                   f"{fmt_len(r['seq_len'])} | {r['option']} | {r['pass1_ms']:.2f} | "
                   f"{r['pass2_ms']:.2f} | {r['both_passes_ms']:.2f} | {fa3} | "
                   f"{r['select_ms']:.2f} | {ada} |")
    if extra:
        out += ["", "| package | shape | keys | prefill chunk | extra tiles per block | "
                    "extra tiles ms | pooling ms | scores ms | top-k ms | "
                    "extra tiles ms, other slice limits |",
                "|---|---|---|---|---|---|---|---|---|---|"]
        out += [f"| {r['label']} | {r['q_heads']}/{r['kv_heads']} d{r['head_dim']} | "
                f"{fmt_len(r['seq_len'])} | {fmt_len(r['chunk'])} | {r['per_block']} | "
                f"{r['extra_tiles_ms']:.2f} | {opt(r, 'pooling_ms')} | {_extra_scores(r)} | "
                f"{_extra_topk(r)} | {_extra_slices(r)} |" for r in extra]
    if block_sparse:
        out += ["", "| package | shape | keys | prefill chunk | Block-Sparse heads | tiles per "
                    "block | from every score ms | ranked ms |", "|---|---|---|---|---|---|---|---|"]
        out += [f"| {r['label']} | {r['q_heads']}/{r['kv_heads']} d{r['head_dim']} | "
                f"{fmt_len(r['seq_len'])} | {fmt_len(r['chunk'])} | {r['heads']} | {r['k_max']} | "
                f"{r['full_scores_ms']:.2f} | {opt(r, 'ranked_ms')} |" for r in block_sparse]
    return "\n".join(out)


# thirteenth session, leases 1 and 3: packages that ranked 4-tile sub-bucket maxima and
# scored the best sub-buckets' tiles again (commits 17f549b, 367a522, c7afe2b with SUB=4)
SUB_BUCKET_LABELS = ("three-level", "sub4")


def _extra_scores(r: dict) -> str:
    """Scores column of an extra-tiles row: every block against every tile (eleventh
    session), the best score per bucket of 16 tiles (the two-level ranking), or both (the
    far scores kept, thirteenth session)."""
    if "scores_ms" in r:
        return f"{r['scores_ms']:.2f}"
    if "rank_kernel_ms" in r and r["label"] in SUB_BUCKET_LABELS:
        return f"{r['bucket_max_ms']:.2f} (bucket and 4-tile sub-bucket maxima)"
    if "rank_kernel_ms" in r:
        return f"{r['bucket_max_ms']:.2f} (far scores and bucket maxima)"
    if "bucket_max_ms" in r:
        return f"{r['bucket_max_ms']:.2f} (bucket maxima)"
    return ""


def _extra_topk(r: dict) -> str:
    if "topk_ms" in r:
        return f"{r['topk_ms']:.2f}"
    if "rank_kernel_ms" in r:  # far scores kept (thirteenth session)
        return (f"{r['rank_ms']:.2f} (top buckets {r['bucket_topk_ms']:.2f}, "
                f"ranking kernel {r['rank_kernel_ms']:.2f}, the rest slices)")
    if "rank_ms" in r:
        return f"{r['rank_ms']:.2f} (top buckets, their tiles, top tiles)"
    return ""


def _extra_slices(r: dict) -> str:
    """``extra_tiles_ms_<N>mb``: the whole call with the far scores held <= N MB at a time."""
    mbs = sorted(int(k[len("extra_tiles_ms_"):-2]) for k in r
                 if k.startswith("extra_tiles_ms_") and k.endswith("mb"))
    return ", ".join(f"{mb} MB: {r[f'extra_tiles_ms_{mb}mb']:.2f}" for mb in mbs)


def chunked_rows(path: str) -> list[dict]:
    """bench_chunked rows, each tagged with its file's source of the row statistics."""
    d = load(path)
    return [dict(r, estimate_stats=d.get("estimate_stats", "triton")) for r in d["rows"]]


def kernel_label(r: dict) -> str:
    return r["kernel"] + (", FA3 row stats" if r.get("estimate_stats") == "fa3" else "")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("raw", help="folder with the raw JSON of the device calls")
    ap.add_argument("--device", default="h100")
    ap.add_argument("--exclude-mode", action="append", default=[],
                    help="leave a minference mode out of the published TTFT/accuracy tables "
                         "(e.g. a run known to be invalid; the raw JSON keeps it)")
    args = ap.parse_args()
    os.makedirs(RESULTS, exist_ok=True)
    md = []
    dev = args.device

    kpaths = sorted(glob.glob(os.path.join(args.raw, "*kernels*.json")))
    if kpaths:
        ks = [load(p) for p in kpaths]
        several = len({lease_of(p) for p in kpaths}) > 1
        k = dict(ks[0], rows=[dict(r, lease=lease_of(p)) if several else r
                              for p, kk in zip(kpaths, ks) for r in kk["rows"]])
        with open(os.path.join(RESULTS, f"kernels-{dev}.json"), "w") as f:
            json.dump(k, f, indent=1)
        plot_kernels(k["rows"], os.path.join(RESULTS, f"kernels-{dev}.png"))
        md += [f"### Kernels ({k['device']}, torch {k['torch']})", "", kernel_table(k["rows"]), ""]
        stages = stage_table(k["rows"])
        if stages:
            md += ["Where the FA3 page-list time goes (one call timed stage by stage with CUDA "
                   "events; speed = FA3 dense ms x key share in pages / FA3 stage ms):", "",
                   stages, ""]

    raw_ttft = []
    for p in sorted(glob.glob(os.path.join(args.raw, "*ttft*.json")) +
                    glob.glob(os.path.join(args.raw, "*decode*.json"))):
        raw_ttft += load_tagged(p)
    if raw_ttft:
        rows = [r for r in pair_ttft(raw_ttft) if r["mode"] not in args.exclude_mode]
        agree = output_agreement(raw_ttft)
        with open(os.path.join(RESULTS, f"ttft-{dev}.json"), "w") as f:
            json.dump(dict(rows=rows, output_agreement=agree, raw=raw_ttft), f, indent=1)
        plot_ttft(rows, os.path.join(RESULTS, f"ttft-{dev}.png"), dev)
        md += ["### TTFT through vLLM", "",
               "| model | tp | tokens | prefill chunk | mode | FLASH_ATTN s | minference s | "
               "speedup |", "|---|---|---|---|---|---|---|---|"]
        for r in sorted((r for r in rows if r["kind"] == "ttft"),
                        key=lambda r: (r["model"] != "real", r["tp"], r["mode"],
                                       r.get("max_num_batched_tokens") or 0, r["seq_len"])):
            chunk = r.get("max_num_batched_tokens")
            md.append(f"| {r['model']} | {r['tp']} | {fmt_len(r['seq_len'])} | "
                      f"{fmt_len(chunk) if chunk else 'default'} | {r['mode']}"
                      f"{' ' + json.dumps(r['config']) if r['config'] else ''}"
                      f"{' (build ' + r['build'] + ')' if r.get('build') else ''} | "
                      f"{r['dense_s']:.3f} | {r['minference_s']:.3f} | {r['speedup']:.2f}x"
                      f"{other_lease(r)}{engines_note(r)} |")
        for r in (r for r in rows if r["kind"] == "decode"):
            md.append(f"\nDecode at {fmt_len(r['seq_len'])} context: FLASH_ATTN "
                      f"{r['dense_tokens_per_s']} tok/s, minference {r['minference_tokens_per_s']} "
                      f"tok/s ({r['ratio']:.3f}x).")
        if agree:
            md += ["", "| greedy outputs | vs | prompt tokens | identical | first divergence |",
                   "|---|---|---|---|---|"]
            md += [f"| {a['a']} | {a['b']} | {a['prompt_tokens']} | {a['identical']} | "
                   f"{a['first_divergence']} |" for a in agree]
        md.append("")

    apaths = sorted(glob.glob(os.path.join(args.raw, "*accuracy*.json")))
    raw_accuracy = prompt_means([r for p in apaths for r in load(p)])
    rows = [r for r in pair_accuracy(raw_accuracy) if r["mode"] not in args.exclude_mode]
    if raw_accuracy and not rows:  # no dense rows here: scores alone, no table to pair
        md += ["### Accuracy (% correct; no FLASH_ATTN rows in this folder to pair with)", "",
               "| configuration | task | length | score | prompts |", "|---|---|---|---|---|"]
        md += [f"| {c['label']} | {c['task']} | {fmt_len(c['length'])} | {c['score']} | "
               f"{c['prompts']} |" for c in unpaired_scores(raw_accuracy)]
        md.append("")
    elif rows:
        with open(os.path.join(RESULTS, f"accuracy-qwen2.5-coder-0.5b-{dev}.json"), "w") as f:
            json.dump(rows, f, indent=0)
        plot_accuracy(rows, os.path.join(RESULTS, f"accuracy-qwen2.5-coder-0.5b-{dev}.png"))
        md += ["### Accuracy (% correct, mean over depths and seeds)", "", accuracy_table(rows), ""]
        all_changes = paired_changes(raw_accuracy)
        changes = [c for c in all_changes if c["better"] or c["worse"]]
        if changes:
            md += ["Prompts that scored higher / lower than dense (same prompt, greedy; p: "
                   "two-sided sign test, the chance of a split this uneven if neither were "
                   "better):", "",
                   "| configuration | task | length | higher | lower | prompts | p |",
                   "|---|---|---|---|---|---|---|"]
            md += [f"| {c['label']} | {c['task']} | {fmt_len(c['length'])} | {c['better']} | "
                   f"{c['worse']} | {c['prompts']} | {sign_test_p(c['better'], c['worse']):.2f} |"
                   for c in changes]
            md += [f"| {c['label']} | all | | {c['better']} | {c['worse']} | {c['prompts']} | "
                   f"{c['p']:.2f} |" for c in overall_changes(all_changes)]
            md.append("")

    cpaths = sorted(glob.glob(os.path.join(args.raw, "*chunked*.json")))
    if cpaths:
        md += ["### A long prompt step by step (kernel level, one layer, bench_chunked.py)", "",
               chunked_table([r for p in cpaths for r in chunked_rows(p)]), ""]
    epaths = sorted(glob.glob(os.path.join(args.raw, "*tune_estimate*.json")))
    if epaths:
        md += ["### The Vertical-Slash estimate, part by part (tune_estimate.py, random Q/K, "
               "the last 64 queries against every key)", "",
               estimate_table([r for p in epaths for r in load(p)]), ""]
    for p in sorted(glob.glob(os.path.join(args.raw, "*trace*.jsonl"))):
        prompt = trace_steps.prompts_of(trace_steps.steps_of(trace_steps.load(p)))[-1]
        md += [f"Trace `{os.path.basename(p)}` (last prompt; ms of all layers per step, one "
               "host wait per step):", "",
               trace_steps.markdown([trace_steps.step_row(st) for st in prompt]), ""]

    # check_serving.py files: serving.json, or L<n>-<lane>-...serving*.json (one per run)
    # (a file named *leftover* was answered by another run's server: not a measurement of
    # its own settings, left out)
    spaths = sorted(p for p in glob.glob(os.path.join(args.raw, "*serving*.json"))
                    if "leftover" not in os.path.basename(p))
    if spaths:
        runs = {os.path.basename(p): load(p) for p in spaths}
        with open(os.path.join(RESULTS, f"serving-{dev}.json"), "w") as f:
            json.dump(runs, f, indent=1)
        md += ["### Serving under load (32 concurrent requests, 1K-31K tokens)", "",
               "| file | backend (settings) | answered | errors | wall s | req/s | TTFT p50 s | "
               "TTFT p99 s | GPU MiB start → end |", "|---|---|---|---|---|---|---|---|---|"]
        for fname, s in runs.items():
            for name, e in s.items():
                if not isinstance(e, dict) or "load" not in e:
                    continue
                ld = e["load"]
                label = name + (f" {json.dumps(e['settings'])}" if e.get("settings") else "")
                md.append(f"| {fname} | {label} | {ld['answered']}/{ld['requests']} | "
                          f"{len(ld['errors'])} | {ld['wall_s']:.2f} | "
                          f"{ld['requests_per_s']:.2f} | {ld['ttft_p50_s']:.2f} | "
                          f"{ld['ttft_p99_s']:.2f} | "
                          f"{e.get('mem_mib_start')} → {e.get('mem_mib_end')} |")
        md.append("")
    with open(os.path.join(RESULTS, f"RESULTS-{dev}.md"), "w") as f:
        f.write("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
