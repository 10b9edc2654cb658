"""Per-layer sparse prefill inside vLLM: which heads use which pattern, and the launch.

``LayerPlanner`` is created once per attention layer (in the impl's constructor, while the
model is built): it resolves the profile once per process, maps this rank's local heads to
global heads (tensor parallelism), and on each sparse step plans the layer's work lists and
runs the sparse kernel over all the step's sparse requests in one launch.
"""

from __future__ import annotations

from functools import lru_cache

import torch
from vllm.logger import init_logger
from vllm.model_executor.models.utils import extract_layer_index
from vllm.v1.attention.backend import AttentionType

from vllm_minference.kernels import KVSource, LayerPatterns, plan_layer, sparse_attention

from .config import MInferenceSettings
from .profiles import Profile, resolve_profile
from .warmup import warm_up_kernels

logger = init_logger(f"vllm.{__name__}")  # under "vllm": vLLM configures that logger tree

SPARSE_HEAD_SIZES = (64, 128)
SPARSE_KV_DTYPES = ("auto", "float16", "bfloat16", "half")


def unsupported_reason(*, head_size: int, kv_cache_dtype: str, sliding_window, alibi: bool,
                       logits_soft_cap, attn_type, sinks: bool, dcp_world_size: int) -> str | None:
    """Why a layer cannot take the sparse path (it then stays dense), or None."""
    if attn_type != AttentionType.DECODER:
        return f"{attn_type} attention (only causal decoder self-attention is sparse)"
    if head_size not in SPARSE_HEAD_SIZES:
        return f"head size {head_size} (sparse kernels support {SPARSE_HEAD_SIZES})"
    if kv_cache_dtype not in SPARSE_KV_DTYPES:
        return f"KV cache dtype {kv_cache_dtype} (sparse kernels read fp16/bf16 caches)"
    if sliding_window is not None:
        return "sliding-window attention"
    if alibi:
        return "ALiBi"
    if logits_soft_cap:
        return "logits soft-cap"
    if sinks:
        return "attention sinks"
    if dcp_world_size > 1:
        return "decode context parallelism"
    return None


def tp_rank_and_size() -> tuple[int, int]:
    try:
        from vllm.distributed import (get_tensor_model_parallel_rank,
                                      get_tensor_model_parallel_world_size)
        return get_tensor_model_parallel_rank(), get_tensor_model_parallel_world_size()
    except AssertionError:  # no distributed group (unit tests)
        return 0, 1


def global_heads(rank: int, num_local_heads: int, tp_size: int, total_heads: int) -> list[int]:
    """Global query heads of a rank: vLLM's QKV projection gives each rank a contiguous slice."""
    if num_local_heads * tp_size != total_heads:
        raise ValueError(f"{num_local_heads} query heads per rank x tp {tp_size} != "
                         f"{total_heads} heads in the model")
    return [rank * num_local_heads + i for i in range(num_local_heads)]


@lru_cache(maxsize=None)
def _profile_for(profile_setting: str | None, model_names: tuple[str, ...], num_layers: int,
                 num_heads: int) -> Profile:
    profile, description = resolve_profile(profile_setting, list(model_names), num_layers,
                                           num_heads)
    logger.info("minference: %s", description)
    return profile


_first_step_logged = False


class LayerPlanner:
    """Profile lookup and sparse launch for one attention layer."""

    def __init__(self, settings: MInferenceSettings, profile: Profile, head_ids: list[int],
                 num_kv_heads: int, page_size: int = 16):
        self.settings = settings
        self.page_size = page_size
        self.profile = profile
        self.head_ids = head_ids
        self.num_kv_heads = num_kv_heads
        self._patterns: LayerPatterns | None = None
        self._layer_index: int | None = None

    @staticmethod
    def for_current_model(vllm_config, num_heads: int, num_kv_heads: int) -> "LayerPlanner":
        settings = MInferenceSettings.from_sources(
            vllm_config.additional_config if vllm_config is not None else None)
        page_size = 16
        if vllm_config is None:  # constructed outside a vLLM engine (tests)
            total_layers, total_heads, names = None, num_heads, ()
        else:
            page_size = vllm_config.cache_config.block_size or page_size
            mc = vllm_config.model_config
            text = mc.hf_text_config
            total_layers, total_heads = text.num_hidden_layers, text.num_attention_heads
            names = tuple(dict.fromkeys(
                str(n) for n in (mc.model, mc.served_model_name,
                                 getattr(mc.hf_config, "_name_or_path", None)) if n))
        rank, tp = tp_rank_and_size()
        heads = global_heads(rank, num_heads, tp, total_heads)
        if total_layers is None:
            from .profiles import default_profile
            profile = default_profile(1, total_heads)
        else:
            profile = _profile_for(settings.profile, names, total_layers, total_heads)
        return LayerPlanner(settings, profile, heads, num_kv_heads, page_size)

    def warm_up(self, head_size: int, dtype: torch.dtype, scale: float) -> None:
        """Compile the sparse kernels now (model load) rather than in the first long prefill.

        Never fatal: if it fails, the kernels compile on first use as they would anyway.
        """
        if not torch.cuda.is_available():
            return
        try:
            if warm_up_kernels(len(self.head_ids), self.num_kv_heads, head_size, dtype,
                               self.page_size, scale, **self.settings.plan_options()):
                logger.info("minference: sparse kernels compiled for %d/%d heads, head size %d, "
                            "%s, page %d", len(self.head_ids), self.num_kv_heads, head_size,
                            dtype, self.page_size)
        except Exception as e:  # noqa: BLE001 - a warm-up must not stop start-up
            logger.warning("minference: kernel warm-up failed (%s: %s); the kernels will "
                           "compile on the first sparse prefill", type(e).__name__, e)

    def patterns(self, layer, device: torch.device) -> LayerPatterns:
        if self._patterns is None:
            index = extract_layer_index(layer.layer_name)
            if index >= len(self.profile.layers):  # default profile built without a model
                index = 0
            self._layer_index = index
            self._patterns = LayerPatterns.from_heads(
                self.profile.layer_patterns(index, self.head_ids, self.settings.budget_scale),
                device, **self.settings.plan_options())
        return self._patterns

    def run(self, layer, query: torch.Tensor, key_cache: torch.Tensor,
            value_cache: torch.Tensor, batch, scale: float, output: torch.Tensor) -> bool:
        """Sparse attention of the batch's sparse requests into ``output``.

        Returns False (having written nothing) when the work lists cover more than
        ``max_density`` of the causal area: dense FlashAttention is then faster.  This is the
        one host synchronisation of the sparse path, once per layer.
        """
        layout = batch.layout
        kv = KVSource.paged(key_cache, value_cache, batch.block_table)
        wl = plan_layer(query, kv, layout, self.patterns(layer, query.device), scale,
                        max_density=1.0)
        dense_tiles = layout.dense_tiles().sum() * query.shape[1]
        density = float(wl.tiles().sum() / dense_tiles)
        global _first_step_logged
        if not _first_step_logged:  # one line per process, not one per layer
            _first_step_logged = True
            logger.info("minference: first sparse prefill step (%d request(s), longest %d "
                        "tokens, %s mode): density of the first layer %.3f, %s",
                        layout.num_seqs, layout.max_kv_len, self.settings.mode, density,
                        "dense" if density > self.settings.max_density else "sparse")
        if density > self.settings.max_density:
            return False
        sparse_attention(query, kv, layout, wl, scale, out=output)
        return True
