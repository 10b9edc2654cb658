"""A per-(step, layer) trace of sparse prefill steps: what each layer did and how long it took.

Why: time to first token is the sum over every prefill chunk of every layer, and when a long
prompt gains less than the kernels alone (H100, 1M tokens in 64K chunks: 4.3x through vLLM
against 6.3x for one pass of one layer) only the split says where the rest went: which
layers ran dense at which step, on which kernel, at what density, for how many ms.

Off unless the ``trace`` setting names a file; then each attention forward of a step with
sparse requests appends one JSON line.  Times come from CUDA events read once per step
(after the step's last layer), so a traced run waits for the GPU once per step; densities
are read at the same time, so the sparse path itself never waits.  A planned layer also
carries two marks around its planning (estimate, selection and list building): its record
then splits ``plan_ms`` from the rest (the attention kernels), the split a 1M prompt needs
to tell a costly estimate from a slow kernel.
"""

from __future__ import annotations

import atexit
import json
import os
import time
from typing import Any

import torch


class StepTrace:
    """Collects one record per traced forward and writes a step's records once it ends."""

    def __init__(self, path: str, num_layers: int):
        self.path = path
        self.num_layers = num_layers
        self.step = 0
        self._last_layer = -1
        self._pending: list[dict[str, Any]] = []
        atexit.register(self._flush_at_exit)

    def begin(self, device: torch.device):
        """A mark in the stream: a recorded CUDA event, or the host clock on a CPU (the start
        of a forward, or the ``_plan_start`` / ``_plan_stop`` fields of its record)."""
        if device.type == "cuda":
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        return time.perf_counter()

    def end(self, start, layer: int, **fields: Any) -> None:
        """Close the forward opened with ``start``; ``fields`` may hold 0-d GPU tensors."""
        if layer <= self._last_layer:  # a new step began without the last layer's record
            self.flush()
            self.step += 1
        self._last_layer = layer
        if isinstance(start, float):
            stop: Any = time.perf_counter()
        else:
            stop = torch.cuda.Event(enable_timing=True)
            stop.record()
        self._pending.append(dict(fields, step=self.step, layer=layer, _start=start,
                                  _stop=stop))
        if layer == self.num_layers - 1:
            self.flush()
            self.step += 1
            self._last_layer = -1

    def _flush_at_exit(self) -> None:
        """A step cut short by shutdown: write what can still be read, never fail the exit."""
        try:
            self.flush()
        except Exception:  # noqa: BLE001 - the CUDA context may already be gone
            pass

    def flush(self) -> None:
        """Write the pending records (waits for the GPU to finish their forwards)."""
        if not self._pending:
            return
        lines = []
        for rec in self._pending:
            rec["ms"] = _elapsed_ms(rec.pop("_start"), rec.pop("_stop"))
            if "_plan_start" in rec:
                rec["plan_ms"] = _elapsed_ms(rec.pop("_plan_start"), rec.pop("_plan_stop"))
            lines.append(json.dumps({k: _plain(v) for k, v in rec.items()}))
        self._pending = []
        with open(self.path, "a") as f:
            f.write("\n".join(lines) + "\n")


def _elapsed_ms(start, stop) -> float:
    if isinstance(start, float):
        return (stop - start) * 1e3
    stop.synchronize()
    return start.elapsed_time(stop)


def _plain(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return round(float(value), 5)
    if isinstance(value, float):
        return round(value, 5)
    return value


_traces: dict[str, StepTrace] = {}


def trace_for(path: str | None, num_layers: int) -> StepTrace | None:
    """The process's trace writing to ``path`` (None: tracing off)."""
    if not path:
        return None
    path = path.replace("{pid}", str(os.getpid()))
    if path not in _traces:
        _traces[path] = StepTrace(path, num_layers)
    return _traces[path]
