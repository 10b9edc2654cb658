"""The ``minference`` attention backend: vLLM's FlashAttention, with sparse long prefills.

Built on vLLM's FlashAttention classes, so the KV-cache layout, the cache writes and every
decode stay vLLM's own.  Per step the metadata builder sorts the batch's requests into two
kinds, from host-side lengths only:

* **sparse**: prefill chunks of at least one 64-row block whose sequence (cached context +
  chunk) reaches ``min_sparse_len``; all of them go through one batched launch of the
  sparse kernels, reading keys from the paged cache through the block table;
* **dense**: everything else (decodes, speculative tokens, short prefills); consecutive
  dense requests form runs, each one call of vLLM's FlashAttention.

A batch without sparse requests (every decode step, CUDA-graph capture) is exactly the
parent's metadata and path.  Mixed and prefill batches run eagerly (piecewise graphs), since
the builder declares ``UNIFORM_BATCH`` CUDA-graph support: decode-only batches keep full
graphs.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch
from vllm.config import get_current_vllm_config_or_none
from vllm.logger import init_logger
from vllm.v1.attention.backend import AttentionCGSupport, AttentionType, CommonAttentionMetadata
from vllm.v1.attention.backends.flash_attn import (FlashAttentionBackend, FlashAttentionImpl,
                                                   FlashAttentionMetadata,
                                                   FlashAttentionMetadataBuilder)

from vllm_minference.kernels import SeqLayout
from vllm_minference.kernels.layout import host_to_device
from vllm_minference.kernels.page_lists import PageGeometry

from .config import LONG_CONTEXT, LONG_PROMPT_CHUNK
from .layer_plan import PREFERRED_PAGE_SIZE, LayerPlanner, resolve_settings, unsupported_reason

logger = init_logger(f"vllm.{__name__}")  # under "vllm": vLLM configures that logger tree

MIN_SPARSE_QUERY = 64  # a chunk shorter than one 64-row block has nothing to skip


@dataclass
class DenseRun:
    """Consecutive requests served by one FlashAttention call."""

    token_start: int
    token_end: int
    metadata: FlashAttentionMetadata


@dataclass
class SparseBatch:
    """The sparse requests of a step: where their rows are, their lengths, their pages."""

    req_ids: list[int]
    layout: SeqLayout  # their query rows in the step's token order, query and key lengths
    block_table: torch.Tensor  # [n_sparse, max_pages] rows of the step's block table
    dense_runs: list[DenseRun]  # the other requests
    sparse_runs: list[DenseRun]  # the sparse requests, for a layer that falls back to dense
    tail_runs: list[DenseRun] = field(default_factory=list)  # each sparse chunk's last rows,
    # attending to every key after the sparse pass (``dense_tail``)
    _geometry: dict[tuple[int, int], PageGeometry] = field(default_factory=dict)

    def page_geometry(self, num_heads: int, rows_per_group: int) -> PageGeometry:
        """FA3 page-list geometry of the step (built by the first layer that asks)."""
        key = (num_heads, rows_per_group)
        if key not in self._geometry:
            self._geometry[key] = PageGeometry.build(self.layout, num_heads, rows_per_group)
        return self._geometry[key]


@dataclass
class MInferenceMetadata(FlashAttentionMetadata):
    """FlashAttention metadata plus the step's sparse requests (``None``: all dense)."""

    minference: SparseBatch | None = None


def classify_requests(q_lens: list[int], seq_lens: list[int], min_sparse_len: int) -> list[bool]:
    """Which requests take the sparse path (True) and which the dense one."""
    return [ql >= MIN_SPARSE_QUERY and sl >= min_sparse_len for ql, sl in zip(q_lens, seq_lens)]


def runs_of(flags: list[bool], want: bool) -> list[tuple[int, int]]:
    """Maximal ranges ``[r0, r1)`` of consecutive requests whose flag equals ``want``."""
    runs, start = [], None
    for r, f in enumerate(flags + [not want]):
        if f == want and start is None:
            start = r
        elif f != want and start is not None:
            runs.append((start, r))
            start = None
    return runs


class MInferenceMetadataBuilder(FlashAttentionMetadataBuilder):
    # Mixed/prefill batches must not be captured in full CUDA graphs (data-dependent sparse
    # path); decode-only batches keep full graphs.
    _cudagraph_support = AttentionCGSupport.UNIFORM_BATCH

    def __init__(self, kv_cache_spec, layer_names, vllm_config, device):
        super().__init__(kv_cache_spec, layer_names, vllm_config, device)
        self.settings = resolve_settings(vllm_config)
        warn_dense_layers(vllm_config, layer_names)
        chunk_hint(vllm_config, self.settings.mode)

    def use_cascade_attention(self, *args, **kwargs) -> bool:
        return False

    def build(self, common_prefix_len: int, common_attn_metadata: CommonAttentionMetadata,
              fast_build: bool = False) -> FlashAttentionMetadata:
        md = super().build(common_prefix_len, common_attn_metadata, fast_build)
        cam = common_attn_metadata
        if cam.max_query_len < MIN_SPARSE_QUERY or cam.max_seq_len < self.settings.min_sparse_len:
            return md  # nothing can be sparse: the parent's metadata, untouched
        n = cam.num_reqs
        qsl = cam.query_start_loc_cpu[: n + 1].tolist()
        q_lens = [qsl[i + 1] - qsl[i] for i in range(n)]
        seq_upper = cam.seq_lens_cpu_upper_bound
        seq_lens = (seq_upper[:n] if seq_upper is not None else cam.seq_lens.cpu()[:n]).tolist()
        sparse = classify_requests(q_lens, seq_lens, self.settings.min_sparse_len)
        if not any(sparse):
            return md
        ids = [r for r in range(n) if sparse[r]]
        rows = host_to_device(torch.tensor(ids), md.block_table.device)
        batch = SparseBatch(
            req_ids=ids,
            layout=SeqLayout.from_lengths([q_lens[r] for r in ids], [seq_lens[r] for r in ids],
                                          self.device, q_starts=[qsl[r] for r in ids]),
            block_table=md.block_table[rows],
            dense_runs=[self._run(md, qsl, q_lens, seq_lens, r0, r1)
                        for r0, r1 in runs_of(sparse, False)],
            sparse_runs=[self._run(md, qsl, q_lens, seq_lens, r0, r1)
                         for r0, r1 in runs_of(sparse, True)],
            tail_runs=[self._tail_run(md, qsl, seq_lens, r, min(tail, q_lens[r]))
                       for r in ids] if (tail := self.settings.dense_tail) else [],
        )
        fields = {f.name: getattr(md, f.name) for f in dataclasses.fields(md)}
        return MInferenceMetadata(**fields, minference=batch)

    @staticmethod
    def _run(md: FlashAttentionMetadata, qsl: list[int], q_lens: list[int],
             seq_lens: list[int], r0: int, r1: int) -> DenseRun:
        """FlashAttention metadata of requests ``[r0, r1)`` alone (rows rebased to 0)."""
        t0, t1 = qsl[r0], qsl[r1]
        return DenseRun(t0, t1, _sub_metadata(md, t0, t1, r0, r1,
                                              md.query_start_loc[r0:r1 + 1] - t0,
                                              max(q_lens[r0:r1]), max(seq_lens[r0:r1])))

    @staticmethod
    def _tail_run(md: FlashAttentionMetadata, qsl: list[int], seq_lens: list[int], r: int,
                  rows: int) -> DenseRun:
        """FlashAttention metadata of the last ``rows`` query rows of request ``r`` alone: a
        chunk's end rows against all its keys (causal from the bottom right, as for any
        chunk of a longer sequence)."""
        t1 = qsl[r + 1]
        t0 = t1 - rows
        end = md.query_start_loc[r + 1:r + 2] - t0  # [rows], on the device like the rest
        starts = torch.cat([torch.zeros_like(end), end])
        return DenseRun(t0, t1, _sub_metadata(md, t0, t1, r, r + 1, starts, rows, seq_lens[r]))


def _sub_metadata(md: FlashAttentionMetadata, t0: int, t1: int, r0: int, r1: int,
                  query_start_loc: torch.Tensor, max_query_len: int,
                  max_seq_len: int) -> FlashAttentionMetadata:
    """``md`` for query rows ``[t0, t1)`` of requests ``[r0, r1)``, rebased to row 0."""
    return dataclasses.replace(
        md,
        num_actual_tokens=t1 - t0,
        max_query_len=max_query_len,
        query_start_loc=query_start_loc,
        max_seq_len=max_seq_len,
        seq_lens=md.seq_lens[r0:r1],
        block_table=md.block_table[r0:r1],
        slot_mapping=md.slot_mapping[t0:t1],
        use_cascade=False,
        common_prefix_len=0,
        scheduler_metadata=None,
        prefix_scheduler_metadata=None,
        max_num_splits=0,
    )


class MInferenceImpl(FlashAttentionImpl):
    """FlashAttention for dense rows; sparse kernels for the step's long prefills."""

    def __init__(self, num_heads, head_size, scale, num_kv_heads, alibi_slopes, sliding_window,
                 kv_cache_dtype, logits_soft_cap=None, attn_type=AttentionType.DECODER,
                 kv_sharing_target_layer_name=None, sinks=None):
        super().__init__(num_heads, head_size, scale, num_kv_heads, alibi_slopes,
                         sliding_window, kv_cache_dtype, logits_soft_cap, attn_type,
                         kv_sharing_target_layer_name, sinks)
        self.dense_reason = unsupported_reason(
            head_size=head_size, kv_cache_dtype=kv_cache_dtype,
            sliding_window=sliding_window, alibi=alibi_slopes is not None,
            logits_soft_cap=logits_soft_cap, attn_type=attn_type, sinks=sinks is not None,
            dcp_world_size=self.dcp_world_size)
        self.planner: LayerPlanner | None = None
        if self.dense_reason is None:
            self.planner = LayerPlanner.for_current_model(
                get_current_vllm_config_or_none(), num_heads, num_kv_heads,
                fa_version=self.vllm_flash_attn_version)

    def process_weights_after_loading(self, act_dtype: torch.dtype) -> None:
        super().process_weights_after_loading(act_dtype)
        if self.planner is not None:
            self.planner.warm_up(self.head_size, act_dtype, self.scale)

    def forward(self, layer, query, key, value, kv_cache, attn_metadata, output,
                output_scale=None, output_block_scale=None):
        batch = getattr(attn_metadata, "minference", None)
        if (batch is None or self.planner is None or attn_metadata.causal is not True
                or output_scale is not None or output_block_scale is not None):
            return super().forward(layer, query, key, value, kv_cache, attn_metadata, output,
                                   output_scale, output_block_scale)
        trace = self.planner.trace
        start = trace.begin(query.device) if trace is not None else None
        for run in batch.dense_runs:
            self._dense(layer, query, key, value, kv_cache, run, output)
        done = self.planner.run(layer, query, kv_cache, batch, self.scale, output)
        if not done:  # the layer's work lists were too dense: FlashAttention is faster
            for run in batch.sparse_runs:
                self._dense(layer, query, key, value, kv_cache, run, output)
        else:  # each sparse chunk's last rows (the prompt's question) again, over every key
            for run in batch.tail_runs:
                self._dense(layer, query, key, value, kv_cache, run, output)
        if trace is not None:
            layout = batch.layout
            trace.end(start, self.planner.layer_index(layer), seqs=layout.num_seqs,
                      rows=sum(layout.q_lens_host), kv_len=layout.max_kv_len,
                      dense_rows=sum(r.token_end - r.token_start for r in batch.dense_runs),
                      **self.planner.last_step)
        return output

    def _dense(self, layer, query, key, value, kv_cache, run: DenseRun, output):
        t0, t1 = run.token_start, run.token_end
        super().forward(layer, query[t0:t1], key[t0:t1], value[t0:t1], kv_cache, run.metadata,
                        output[t0:t1])


class MInferenceBackend(FlashAttentionBackend):
    """Registered as vLLM's CUSTOM backend; selected with ``--attention-backend minference``."""

    @staticmethod
    def get_name() -> str:
        return "CUSTOM"  # must be an AttentionBackendEnum member name

    @classmethod
    def get_preferred_block_size(cls, default_block_size: int) -> int:
        """64-token KV pages unless ``--block-size`` says otherwise.

        A 64-key chunk of the sparse kernel then spans at most two pages, found with two
        scalar block-table loads instead of one load per key: with vLLM's default 16-token
        pages the sparse kernel ran 5-20% slower on the H100 (benchmarks/tune_kernels.py,
        dense-like lists the most).
        FlashAttention (dense rows, decode) takes any multiple of 16.
        """
        return max(default_block_size, PREFERRED_PAGE_SIZE)

    @staticmethod
    def get_kv_cache_stride_order(include_num_layers_dimension: bool = False
                                  ) -> tuple[int, ...]:
        """Always HND (``[pages, kv_heads, page_size, 2 * head_size]`` in memory).

        The FA3 page lists address 16-key sub-pages of one KV head, which needs a head's keys
        of a page contiguous; vLLM's FlashAttention reads either order through strides.
        """
        if include_num_layers_dimension:
            return (1, 2, 0, 3, 4)  # (num_blocks, num_kv_heads, num_layers, block_size, 2D)
        return (0, 1, 2, 3)

    @staticmethod
    def get_impl_cls() -> type[MInferenceImpl]:
        return MInferenceImpl

    @staticmethod
    def get_builder_cls() -> type[MInferenceMetadataBuilder]:
        return MInferenceMetadataBuilder


_warned: set[str] = set()


def warn_dense_layers(vllm_config, layer_names: list[str]) -> list[str]:
    """One start-up warning per reason, naming the layers that will always run dense.

    Returns the warnings issued now (a message already given in this process is not
    repeated: each KV-cache group's builder calls this).
    """
    ctx = vllm_config.compilation_config.static_forward_context
    by_reason: dict[str, list[str]] = {}
    for name in layer_names:
        impl = getattr(ctx.get(name), "impl", None)
        reason = getattr(impl, "dense_reason", None)
        if reason is not None:
            by_reason.setdefault(reason, []).append(name)
    issued = []
    for reason, names in by_reason.items():
        msg = (f"minference: {len(names)} attention layer(s) use dense FlashAttention only "
               f"({reason}): {', '.join(names[:4])}{' ...' if len(names) > 4 else ''}")
        if msg not in _warned:
            _warned.add(msg)
            logger.warning(msg)
            issued.append(msg)
    return issued


def chunk_hint(vllm_config, mode: str = "adaptive") -> str | None:
    """One start-up hint when long prompts would prefill in small chunks (adaptive mode).

    Every prefill chunk pays one Vertical-Slash estimate over all earlier keys, so a 1M-token
    prompt in vLLM's default 16K chunks pays 64 of them (H100, adaptive mode: TTFT 8.2 s;
    with 64K chunks 5.0 s, FLASH_ATTN 109 s and 103 s).  The chunk is vLLM's scheduler
    setting, shared with every other request, so this only says so once.
    """
    sched = getattr(vllm_config, "scheduler_config", None)
    model = getattr(vllm_config, "model_config", None)
    if sched is None or model is None or mode != "adaptive":
        return None  # fixed budgets: no gain measured (H100, 1M: 2.4x in 64K chunks, 3.3x
        # in 16K chunks in an earlier lease)
    chunk = sched.max_num_batched_tokens
    if model.max_model_len < LONG_CONTEXT or chunk >= min(LONG_PROMPT_CHUNK,
                                                          model.max_model_len):
        return None
    msg = (f"minference: prefill chunks of {chunk} tokens; long prompts prefill faster with "
           f"--max-num-batched-tokens {LONG_PROMPT_CHUNK} (fewer sparse-pattern estimates: a "
           f"1M-token prompt took 5.0 s instead of 8.2 s on an H100 in adaptive mode)")
    if msg in _warned:
        return None
    _warned.add(msg)
    logger.info(msg)
    return msg
