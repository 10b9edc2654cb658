"""Plugin settings: ``--additional-config.minference.*`` first, then ``MINFERENCE_*``.

vLLM hands every process the same ``additional_config`` dict (it is part of the config
hash), so the settings are identical in the API server, the engine core and the workers.
Environment variables are read as a fallback; they are named ``MINFERENCE_*`` because vLLM
warns about unknown ``VLLM_*`` variables.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

ENV_PREFIX = "MINFERENCE_"
# vLLM's --max-num-batched-tokens for long prompts: each prefill chunk pays one pattern
# estimate (README, "Prefill chunk"); the start-up hint and quickstart both use it
LONG_PROMPT_CHUNK = 65536
# a long-context deployment: quickstart serves the default model at this context, and a
# model allowed prompts this long gets the start-up chunk hint
LONG_CONTEXT = 131072
# fixed mode's far tiles per query block (extra_blocks): H100, 128K, 16K chunks, 36 multivalue
# prompts: 8 -> 59.0, 32 -> 59.7 (dense 61.1, none 56.2) at the same TTFT (1.41-1.42 s)
FIXED_EXTRA_BLOCKS = 32
# the antidiagonal estimate's strides (kernels.antidiagonal.index.STRIDES, which a test
# keeps equal: the settings load in processes that never import Triton)
ANTIDIAGONAL_STRIDES = (4, 8, 16, 32, 64)


class MInferenceSettings(BaseModel):
    """What the user can tune; the defaults are the measured ones (see README)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    profile: str | None = Field(
        None, description="profile JSON path, or the file name of a bundled profile")
    min_sparse_len: int = Field(
        65536, ge=64, description="prefills whose sequence reaches this take the sparse path "
                                  "(a profile's settings may lower it where no mode is set)")
    budget_scale: float = Field(1.0, gt=0, description="multiplies every profile budget")
    mode: Literal["fixed", "adaptive", "antidiagonal"] = Field(
        "fixed",
        description="fixed: MInference's profile budgets (the default, unless the "
                    "profile names the mode it was measured in: setting no mode then runs "
                    "the profile's `settings`, e.g. Qwen2.5-Coder-0.5B-Instruct's bundled "
                    "profile runs antidiagonal stride 32 with its 32 pinned heads); "
                    "adaptive: per prompt, the fewest columns/diagonal tiles of each "
                    "Vertical-Slash head that hold `gamma` of the estimated attention, the "
                    "profile budgets as ceilings (much faster at 128K-1M, but it lost points "
                    "on multi-needle tasks in our accuracy suite: see README); antidiagonal: "
                    "every 64-row query block of a Vertical-Slash head keeps its own fewest "
                    "64-key tiles holding `tau` of its attention, estimated from strided "
                    "antidiagonal scores of its own rows (XAttention's estimate)")
    fixed_sinks: int = Field(
        30, ge=0, description="fixed mode: first keys every Vertical-Slash head keeps, within "
                              "its column budget (MInference: 30)")
    fixed_local: int = Field(
        100, ge=1, description="fixed mode: nearest diagonals every Vertical-Slash head keeps, "
                               "within its diagonal budget (MInference: 100); the rest of the "
                               "budget goes to the estimate's top diagonals")
    gamma: float = Field(0.95, gt=0, le=1, description="attention share kept in adaptive mode")
    adaptive_sinks: int = Field(
        30, ge=0, description="adaptive mode: first keys every Vertical-Slash head keeps")
    adaptive_local: int = Field(
        100, ge=1, description="adaptive mode: nearest diagonals every Vertical-Slash head "
                               "keeps (a local window; 1024 raised recall from 0.77 to 0.86 "
                               "at 31K tokens in benchmarks/recall_study.py)")
    adaptive_floor: float = Field(
        0.0, ge=0, le=1,
        description="adaptive mode: also keep MInference's fixed top-k columns/diagonals at "
                    "this fraction of the profile budgets (recall where the estimate misjudges "
                    "other query blocks; see README)")
    tau: float = Field(
        0.98, gt=0, le=1,
        description="antidiagonal mode: attention share each block keeps (H100, 128K, "
                    "multivalue: 0.98 kept fixed mode's answers at 1.61x vs its 1.39x; 0.9 "
                    "ran 2.21x but lost 2 points more)")
    antidiagonal_stride: int = Field(
        8, description="antidiagonal mode: rows and keys per antidiagonal cell (KV pages must "
                       "hold a multiple of it); the estimate costs about 1/(2 x stride) of "
                       "dense attention (H100, 128K: 0.08 at stride 32, where TTFT was 2.14x "
                       "but 16 of 94 RULER prompts answered worse than dense, 6 better)")
    antidiagonal_local: int = Field(
        1, ge=0, description="antidiagonal mode: 64-key tiles before its own that every block "
                             "keeps (the first tile, the sinks, is kept too)")
    antidiagonal_max_tiles: int = Field(
        2048, ge=4, description="antidiagonal mode: most 64-key tiles a block keeps")
    antidiagonal_columns: int = Field(
        0, ge=0, le=8192,
        description="antidiagonal mode: columns of the Vertical-Slash estimate (each prefill "
                    "chunk's last 64 rows against every key) every block adds to its tiles.  "
                    "The antidiagonal estimate samples one key in `stride` per row, so a "
                    "context row that reads one far key is often missed; on the CPU recall "
                    "study (variable tracking, 31K) 1000 columns raised the kept share of that "
                    "attention from 0.94 to 0.98 at +0.01 density at stride 32.  Measured "
                    "(H100, 128K, stride 32): 1000 columns cost 0.12 s and lost more "
                    "variable-tracking answers, so 0 (off)")
    antidiagonal_shared: bool = Field(
        False,
        description="antidiagonal mode, FA3 key tiles: the 64-row blocks FA3 runs as one row "
                    "group (192 rows at head size 64, 128 at 128) share one selection, the "
                    "fewest tiles giving each block tau of its own attention.  FA3 computes a "
                    "row group's union of its blocks' tiles for all its rows.  Measured (H100, "
                    "stride 32, tau 0.98, 32 pinned heads): at 1M the union shrank from "
                    "1.27-1.45x to 1.04-1.11x the listed tiles and the kernels by 1.9 s, but "
                    "planning took 1.0 s more (TTFT 23.96 -> 23.27 s), and at 128K it answered "
                    "4 RULER prompts better and 7 worse than per-block lists (70 prompts): the "
                    "union's extra tiles carry answers, so off")
    antidiagonal_launch: str = Field(
        "", description="antidiagonal mode: launch option of the estimate kernel (tuning; "
                        "e.g. w8n2, r128k32w8n2, ir128k64w8n3; empty: the defaults)")
    extra_blocks: int | None = Field(
        None, ge=0, le=64,
        description="Vertical-Slash heads: far 64-key tiles each 64-row query block adds, its "
                    "own best by mean-pooled Q.K (MInference's Block-Sparse estimate).  The "
                    "lists otherwise come from the last 64 rows of each prefill chunk, which "
                    "in chunked prefill are not the prompt's question, so a block that needs a "
                    "far key those rows ignore misses it.  Read by the FA3 page lists only "
                    "(Hopper).  Default: 32 in fixed mode (multivalue at 128K 56.2 -> 59.7, "
                    "dense 61.1; TTFT 1.367 -> 1.431 s on an H100), 0 in adaptive mode (its "
                    "sparse lists run faster on the Triton kernel, and with 32 tiles it still "
                    "lost multivalue answers at 128K: 43.8 vs dense 61.1) and in antidiagonal "
                    "mode (each block's list is already its own)")
    dense_tail: int = Field(
        0, ge=0,
        description="rows at the end of each sparse prefill chunk that attend to every key "
                    "(one FlashAttention call per layer, overwriting their sparse rows).  The "
                    "prompt's last chunk ends with its question and the row that picks the "
                    "first answer token: on an H100 at 128K, every antidiagonal setting tried "
                    "changed the first answer token of a variable-tracking prompt that the "
                    "plugin's near-exact lists (tau 1.0) kept.  Costs at most dense_tail / "
                    "chunk of a dense step.  Measured (H100, 128K, stride 32): 128 and 1024 "
                    "rows did not recover those answers (the loss is in the sparse context), "
                    "so 0 (off)")
    attention_kernel: Literal["auto", "fa3", "triton"] = Field(
        "auto",
        description="what computes the sparse key tiles: fa3 = vLLM's FlashAttention-3 over "
                    "per-(head, row group) page lists (Hopper; 1.1-1.3x faster than the Triton "
                    "kernel on fixed-budget lists on an H100, slower on very sparse ones, so a "
                    "layer whose rows keep < 8192 keys on average still uses Triton), "
                    "triton = this package's kernel (any GPU); auto picks fa3 where vLLM "
                    "runs FlashAttention 3")
    fa3_min_run: int = Field(
        1, ge=1,
        description="fa3 key tiles: chunks of a diagonal run shorter than this many 64-key "
                    "chunks (isolated diagonals) stay on the Triton kernel, whose cost per row "
                    "is 64 keys where a 192-row FA3 group pays ~208; 1 = all on FA3, the "
                    "fastest measured: on an H100, a 1M prompt's layer in 64K chunks took "
                    "755 ms with 1, 797 with 2, 1117 with 3, and 2-3 were 1.1-1.4x slower "
                    "at 128K: the Triton pass computes a short run's tile at 0.2-0.25 of "
                    "FA3's dense speed)")
    fa3_min_blocks: int = Field(
        1, ge=1, le=3,
        description="fa3 key tiles: a 16-key sub-page goes to its FA3 row group's pages only "
                    "where at least this many of the group's 64-row blocks (3 at head size 64, "
                    "2 at 128) list it; each block's other sub-pages go to a second FA3 call "
                    "(one 64-row virtual sequence a block).  1 = the union (FA3 computes a "
                    "tile one block lists for all the group's rows, and each block gets the "
                    "other blocks' tiles as well).  H200, 128K, real lists, 2 against 1: fixed "
                    "Vertical-Slash lists 106.1 -> 100.5 ms at Llama-3-8B shape, the shipped "
                    "antidiagonal lists 8.7 -> 10.0 ms, time to first token unchanged; no "
                    "accuracy run with it yet, so 1")
    estimate_stats: Literal["triton", "fa3"] = Field(
        "triton",
        description="where the Vertical-Slash estimate's softmax statistics (the last 64 "
                    "queries over every key) come from: triton = the estimate's own first "
                    "pass; fa3 = one FlashAttention-3 call over the paged cache (Hopper, with "
                    "the fa3 key-tile kernel).  Measured on an H100: no gain (0.78 vs 0.84 ms "
                    "at 1M keys; TTFT of a 1M prompt 5.31 vs 5.28 s adaptive), so triton stays "
                    "the default")
    max_density: float = Field(
        0.45, gt=0, le=1,
        description="a layer whose work lists cover more of the causal area runs dense")
    trace: str | None = Field(
        None, description="diagnostics: append one JSON line per layer of every sparse "
                          "prefill step (path, kernel, density, ms; for planned layers the "
                          "planning's plan_ms, and on FA3 page lists the share FA3 computes) "
                          "to this file ('{pid}' becomes the process id); costs one wait for "
                          "the GPU per step")

    @field_validator("antidiagonal_stride")
    @classmethod
    def _known_stride(cls, stride: int) -> int:
        if stride not in ANTIDIAGONAL_STRIDES:
            raise ValueError(f"must be one of {ANTIDIAGONAL_STRIDES}")
        return stride

    def plan_options(self) -> dict:
        """Keyword arguments of ``LayerPatterns.from_heads`` for the selection mode."""
        if self.mode == "antidiagonal":
            # imported here: the settings load in processes that never import Triton
            from vllm_minference.kernels import AntidiagonalRule
            return {"antidiagonal": AntidiagonalRule(
                tau=self.tau, stride=self.antidiagonal_stride,
                local_tiles=self.antidiagonal_local, max_tiles=self.antidiagonal_max_tiles,
                launch=self.antidiagonal_launch, columns=self.antidiagonal_columns,
                fa3_groups=self.antidiagonal_shared),
                "extra_blocks": self.extra_tiles}
        if self.mode != "adaptive":
            return {"gamma": None, "keep_first": self.fixed_sinks, "keep_diag": self.fixed_local,
                    "extra_blocks": self.extra_tiles}
        return {"gamma": self.gamma, "keep_first": self.adaptive_sinks,
                "keep_diag": self.adaptive_local, "floor_scale": self.adaptive_floor,
                "extra_blocks": self.extra_tiles}

    @property
    def extra_tiles(self) -> int:
        """``extra_blocks`` with the mode's default where unset."""
        if self.extra_blocks is not None:
            return self.extra_blocks
        return FIXED_EXTRA_BLOCKS if self.mode == "fixed" else 0

    def with_profile_settings(self, recommended: Mapping | None) -> "MInferenceSettings":
        """These settings completed by a profile's measured ones (its ``metadata.settings``).

        A profile made for one mode (pinned retrieval heads among per-block antidiagonal
        lists) names that mode and what it was measured with; they apply as one bundle, and
        only where the user chose no ``mode``: whoever picks a mode gets the plugin's
        defaults for everything they leave unset, as before.  Settings the user did set win.
        """
        if not recommended or "mode" in self.model_fields_set:
            return self
        explicit = {k: getattr(self, k) for k in self.model_fields_set}
        return type(self)(**(dict(recommended) | explicit))

    @classmethod
    def from_sources(cls, additional_config: Mapping | None,
                     environ: Mapping[str, str] = os.environ) -> "MInferenceSettings":
        """Settings from vLLM's ``additional_config["minference"]`` over the environment.

        CLI values arrive as strings ("8192", "0.5"); pydantic coerces them.  Any bad key
        or value raises ``ValueError`` naming it.
        """
        values: dict[str, object] = {}
        for name in cls.model_fields:
            env = environ.get(ENV_PREFIX + name.upper())
            if env is not None and env != "":
                values[name] = env
        section = (additional_config or {}).get("minference", {})
        if not isinstance(section, Mapping):
            raise ValueError(f"additional_config['minference'] must be a mapping, got {section!r}")
        values.update(section)
        try:
            return cls(**values)
        except ValidationError as e:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in e.errors())
            raise ValueError(f"invalid minference settings ({problems})") from None
