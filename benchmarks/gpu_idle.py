"""Where a profiled prefill leaves the GPU idle: busy share, gaps and host waits from a
PyTorch profiler trace.

    python benchmarks/gpu_idle.py TRACE.json[.gz] [--burst-gap-ms 5] [--min-gap-us 20]

Why: the trace (``vllm_minference.trace``) times each layer between CUDA events, which counts
the GPU's idle time inside a layer as the layer's own; when a sparse prefill gains less than
its kernels (at ``--tensor-parallel-size 2`` FLASH_ATTN got 1.74x faster at 128K and the
sparse path about 1.2x, H100, 2026-11-28) the question is whether the host keeps the GPU fed.
A vLLM worker's trace (``bench_ttft.py --profile-dir``) answers it: every GPU activity
(kernels, copies, memsets) of the device, merged over streams, gives the busy time; what
lies between them is idle, and the kernel before each gap and the host's synchronising calls
(``cudaStreamSynchronize`` and the like, which wait for the GPU) say why.  The busy time is
also summed by :data:`GROUPS` (attention, the estimate's partials and selection, the model's
own kernels, communication...), the split the twenty-sixth session's tables were made of.

Engine steps are split as *bursts*: runs of GPU activity separated by at least
``--burst-gap-ms`` of idle (the scheduler's work between steps).  Gaps shorter than
``--min-gap-us`` inside a burst are launch latency and are counted in the idle total but
not listed by cause.
"""

from __future__ import annotations

import argparse
import gzip
import json
from collections import defaultdict

GPU_CATEGORIES = ("kernel", "gpu_memcpy", "gpu_memset")
# host calls that wait for the GPU (a pageable device-to-host copy waits too: it shows up
# as cudaMemcpyAsync with a long duration)
SYNC_CALLS = ("cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaEventSynchronize",
              "cudaMemcpyAsync", "cudaMemcpy", "cudaStreamQuery")


# GPU activities by what they do, first match wins (names as CUDA and the profiler give
# them); "Triton, other" holds the plugin's smaller planning kernels and vLLM's own Triton
# kernels alike (both are named ``_*_kernel``)
GROUPS = (
    ("attention: FlashAttention", ("flash::", "FlashAttn", "flash_fwd")),  # + its scheduler
    ("attention: Triton sparse", ("_sparse_attn_fwd",)),
    ("planning: antidiagonal partials", ("_partials_kernel",)),
    ("planning: antidiagonal selection", ("_select_kernel",)),
    ("communication", ("nccl",)),
    ("model: GEMMs", ("nvjet", "gemm", "xmma", "cutlass")),
    ("model: torch.compile", ("triton_",)),
    ("copies and memsets", ("Memcpy", "Memset")),
    ("KV cache writes", ("reshape_and_cache",)),
    ("PyTorch ops", ("at::", "at_cuda_detail", "cub::")),
    ("Triton, other", ("_kernel",)),
)


def group_of(name: str) -> str:
    """The :data:`GROUPS` entry a GPU activity's name falls in (``other`` if none)."""
    for group, marks in GROUPS:
        if any(m in name for m in marks):
            return group
    return "other"


def load_events(path: str) -> list[dict]:
    """The ``traceEvents`` of a Chrome trace (``.json`` or ``.json.gz``)."""
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rt") as f:
        data = json.load(f)
    return data["traceEvents"] if isinstance(data, dict) else data


def gpu_intervals(events: list[dict]) -> list[tuple[float, float, str]]:
    """(start, end, name) of every GPU activity, in microseconds, by start."""
    out = [(float(e["ts"]), float(e["ts"]) + float(e.get("dur", 0.0)), e.get("name", "?"))
           for e in events if e.get("ph") == "X" and e.get("cat") in GPU_CATEGORIES]
    return sorted(out)


def busy_and_gaps(intervals: list[tuple[float, float, str]]
                  ) -> tuple[float, list[tuple[float, float, str, str]]]:
    """The union of the intervals' time, and the gaps between them: (start, end, name of
    the activity that ended last before the gap, name of the one after it)."""
    busy, gaps = 0.0, []
    cur_start = cur_end = None
    last_name = ""
    for start, end, name in intervals:
        if cur_end is None:
            cur_start, cur_end, last_name = start, end, name
            continue
        if start > cur_end:
            busy += cur_end - cur_start
            gaps.append((cur_end, start, last_name, name))
            cur_start, cur_end, last_name = start, end, name
        elif end >= cur_end:
            cur_end, last_name = end, name
    if cur_end is not None:
        busy += cur_end - cur_start
    return busy, gaps


def host_waits(events: list[dict]) -> dict[str, tuple[int, float]]:
    """Per synchronising runtime call: (count, total microseconds on the host)."""
    out: dict[str, list[float]] = defaultdict(lambda: [0, 0.0])
    for e in events:
        if e.get("ph") == "X" and e.get("cat") in ("cuda_runtime", "cuda_driver") \
                and e.get("name") in SYNC_CALLS:
            out[e["name"]][0] += 1
            out[e["name"]][1] += float(e.get("dur", 0.0))
    return {k: (int(v[0]), v[1]) for k, v in out.items()}


def summarize(events: list[dict], burst_gap_ms: float = 5.0, min_gap_us: float = 20.0) -> dict:
    """Busy share per burst and overall, idle time by the kernel that preceded it, the
    kernels' total time by name and by :data:`GROUPS`, and the host's waits."""
    intervals = gpu_intervals(events)
    _, gaps = busy_and_gaps(intervals)
    burst_gap = burst_gap_ms * 1000.0
    bursts, cut = [], 0
    edges = [i for i, g in enumerate(gaps) if g[1] - g[0] >= burst_gap]
    ends = [gaps[i][0] for i in edges] + [float("inf")]
    for end in ends:  # intervals up to each long gap form one burst
        members = []
        while cut < len(intervals) and intervals[cut][0] < end:
            members.append(intervals[cut])
            cut += 1
        if members:
            busy, inner = busy_and_gaps(members)
            span = max(e for _, e, _ in members) - members[0][0]
            bursts.append(dict(start_ms=members[0][0] / 1000.0, span_ms=span / 1000.0,
                               busy_ms=busy / 1000.0, idle_ms=(span - busy) / 1000.0,
                               activities=len(members),
                               gaps_over_min=sum(1 for g in inner if g[1] - g[0] >= min_gap_us)))
    idle_after: dict[str, list[float]] = defaultdict(lambda: [0, 0.0])
    for start, end, before, _ in gaps:
        if min_gap_us <= end - start < burst_gap:
            idle_after[before][0] += 1
            idle_after[before][1] += end - start
    by_kernel: dict[str, list[float]] = defaultdict(lambda: [0, 0.0])
    for start, end, name in intervals:
        by_kernel[name][0] += 1
        by_kernel[name][1] += end - start
    by_group: dict[str, list[float]] = defaultdict(lambda: [0, 0.0])
    for name, (c, t) in by_kernel.items():
        group = by_group[group_of(name)]
        group[0] += c
        group[1] += t
    span = sum(b["span_ms"] for b in bursts)
    busy = sum(b["busy_ms"] for b in bursts)
    return dict(
        bursts=bursts, span_ms=span, busy_ms=busy, busy_share=busy / span if span else 0.0,
        idle_after={k: (int(c), t / 1000.0) for k, (c, t) in idle_after.items()},
        kernels={k: (int(c), t / 1000.0) for k, (c, t) in by_kernel.items()},
        groups={k: (int(c), t / 1000.0) for k, (c, t) in by_group.items()},
        host_waits={k: (c, t / 1000.0) for k, (c, t) in host_waits(events).items()})


def _short(name: str, width: int = 70) -> str:
    return name if len(name) <= width else name[:width - 3] + "..."


def markdown(s: dict, top: int = 12) -> str:
    lines = [f"GPU busy {s['busy_ms']:.1f} of {s['span_ms']:.1f} ms inside bursts "
             f"({100 * s['busy_share']:.1f}%), {len(s['bursts'])} burst(s)", "",
             "| burst | start ms | span ms | busy ms | idle ms | activities | gaps |",
             "|---|---|---|---|---|---|---|"]
    for i, b in enumerate(s["bursts"]):
        lines.append(f"| {i} | {b['start_ms']:.1f} | {b['span_ms']:.2f} | {b['busy_ms']:.2f} | "
                     f"{b['idle_ms']:.2f} | {b['activities']} | {b['gaps_over_min']} |")
    lines += ["", "Idle inside bursts, by the GPU activity before it:", "",
              "| before the gap | gaps | idle ms |", "|---|---|---|"]
    for name, (c, t) in sorted(s["idle_after"].items(), key=lambda kv: -kv[1][1])[:top]:
        lines.append(f"| `{_short(name)}` | {c} | {t:.2f} |")
    lines += ["", "GPU time by group (an overlap of streams counts in each):", "",
              "| group | activities | ms |", "|---|---|---|"]
    for name, (c, t) in sorted(s.get("groups", {}).items(), key=lambda kv: -kv[1][1]):
        lines.append(f"| {name} | {c} | {t:.2f} |")
    lines += ["", "GPU time by activity:", "", "| activity | count | ms |", "|---|---|---|"]
    for name, (c, t) in sorted(s["kernels"].items(), key=lambda kv: -kv[1][1])[:top]:
        lines.append(f"| `{_short(name)}` | {c} | {t:.2f} |")
    lines += ["", "Host calls that wait for the GPU:", "", "| call | count | ms |",
              "|---|---|---|"]
    for name, (c, t) in sorted(s["host_waits"].items(), key=lambda kv: -kv[1][1]):
        lines.append(f"| `{name}` | {c} | {t:.2f} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("trace", help="a PyTorch profiler Chrome trace (.json or .json.gz)")
    ap.add_argument("--burst-gap-ms", type=float, default=5.0,
                    help="idle time that separates two engine steps")
    ap.add_argument("--min-gap-us", type=float, default=20.0,
                    help="shorter gaps count as idle but are not listed by cause")
    ap.add_argument("--top", type=int, default=12)
    ap.add_argument("--json", default=None, help="also write the summary here")
    args = ap.parse_args()
    s = summarize(load_events(args.trace), args.burst_gap_ms, args.min_gap_us)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(s, f, indent=1)
    print(markdown(s, args.top))


if __name__ == "__main__":
    main()
