"""Per-layer sparse prefill inside vLLM: which heads use which pattern, and the launch.

``LayerPlanner`` is created once per attention layer (in the impl's constructor, while the
model is built): it resolves the profile once per process, maps this rank's local heads to
global heads (tensor parallelism), and on each sparse step plans the layer's work lists and
runs the sparse kernel over all the step's sparse requests in one launch.
"""

from __future__ import annotations

from collections import deque
from dataclasses import replace
from functools import lru_cache
from pathlib import Path

import torch
from vllm.logger import init_logger
from vllm.model_executor.models.utils import extract_layer_index
from vllm.v1.attention.backend import AttentionType

from vllm_minference.kernels import (BLOCK_M, BLOCK_N, BLOCK_SPARSE, VERTICAL_SLASH, KVSource,
                                     LayerPatterns, plan_layer, sparse_attention)
from vllm_minference.kernels.block_sparse.index import block_sparse_ranked, ranking_width
from vllm_minference.kernels.page_lists import group_rows, hnd_cache_ok, page_list_attention
from vllm_minference.kernels.vertical_slash import estimate_row_lse

from .config import MInferenceSettings
from .profiles import Profile, load_profile, profile_file, resolve_profile
from .trace import trace_for
from .warmup import SMALL_BS_BUDGET, SMALL_VS_BUDGET, warm_up_kernels

logger = init_logger(f"vllm.{__name__}")  # under "vllm": vLLM configures that logger tree

SPARSE_HEAD_SIZES = (64, 128)
SPARSE_KV_DTYPES = ("auto", "float16", "bfloat16", "half")
PREFERRED_PAGE_SIZE = 64  # KV page size the backend asks vLLM for (see the backend)


def planned_page_size(cache_config) -> int:
    """The KV page size this engine will run with, known already while the model is built.

    vLLM applies a backend's preferred block size only after the model is loaded, so at
    construction ``block_size`` may still be unset or the generic default.
    """
    if cache_config is None:
        return PREFERRED_PAGE_SIZE
    if getattr(cache_config, "user_specified_block_size", False) and cache_config.block_size:
        return int(cache_config.block_size)
    return max(int(cache_config.block_size or 16), PREFERRED_PAGE_SIZE)


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


def model_names(vllm_config) -> tuple[str, ...]:
    """The names a bundled profile may match: the model, its served name, its HF path."""
    mc = vllm_config.model_config
    return tuple(dict.fromkeys(
        str(n) for n in (mc.model, mc.served_model_name,
                         getattr(mc.hf_config, "_name_or_path", None)) if n))


_settings_logged: set[str] = set()


def _log_settings_once(log, msg: str) -> None:
    """``log(msg)`` the first time this process sees ``msg``: the builder and every layer
    resolve the settings, and one line says what was resolved."""
    if msg not in _settings_logged:
        _settings_logged.add(msg)
        log(msg)


def resolve_settings(vllm_config) -> MInferenceSettings:
    """The plugin settings of this engine: the user's (``additional_config``, then
    ``MINFERENCE_*``), completed by the profile's measured settings where the user chose no
    mode.  The metadata builder and every layer call this, so they agree on the mode and on
    ``min_sparse_len``.  Profile settings that this engine's KV page size cannot run (an
    antidiagonal stride that does not divide ``--block-size``) are not taken, with one
    warning: the user's settings and the plugin defaults run instead."""
    if vllm_config is None:
        return MInferenceSettings.from_sources(None)
    settings = MInferenceSettings.from_sources(vllm_config.additional_config)
    chosen, path, recommended = with_model_profile(settings, model_names(vllm_config))
    if chosen is settings:
        return settings
    page_size = planned_page_size(vllm_config.cache_config)
    stride = chosen.antidiagonal_stride if chosen.mode == "antidiagonal" else 1
    if page_size % stride:
        msg = (f"minference: the profile {path.name} was measured with "
               f"{_describe(recommended)}, which needs KV pages of a multiple of {stride} "
               f"tokens (this engine's: {page_size}); running mode={settings.mode} instead")
        _log_settings_once(logger.warning, msg)
        return settings
    msg = (f"minference: settings from the profile {path.name}: {_describe(recommended)} "
           f"(what it was measured with; set the mode to choose your own)")
    _log_settings_once(logger.info, msg)
    return chosen


def with_model_profile(settings: MInferenceSettings, names: tuple[str, ...] | list[str]
                       ) -> tuple[MInferenceSettings, Path | None, dict | None]:
    """``settings`` completed by the settings of the profile they select for a model of
    these names (``resolve_settings`` without the engine's page-size check; benchmarks label
    their rows with it), the profile file and its settings."""
    if "mode" in settings.model_fields_set:
        return settings, None, None
    path = profile_file(settings.profile, list(names))
    recommended = _profile_settings(str(path)) if path is not None else None
    return settings.with_profile_settings(recommended), path, recommended


@lru_cache(maxsize=None)
def _profile_settings(path: str) -> dict | None:
    return load_profile(path).metadata.settings


def _describe(settings: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in settings.items())


_first_step_logged = False
_warned_kernel = False

# FA3 page lists pay once each (head, row group) virtual sequence holds enough keys to hide
# FA3's set-up per tile row.  H100, real Qwen2.5-Coder-0.5B lists (bench_kernels.py,
# 2026-11-26), FA3 lists over the Triton kernel, keys per query row in brackets: 128K fixed
# budgets 1.30-1.33x faster (~22K), 1M fixed 1.08-1.24x faster (~42K); 128K adaptive
# 1.4-1.8x slower (~2.4K), 1M adaptive 1.2-1.4x slower (~5K).
FA3_MIN_KEYS = 8192
# the density guard's growth of kept keys with seen keys for antidiagonal mode's share-based
# lists (see DensityGuard)
SHARE_KEYS_GROWTH = 0.5


def resolve_kernel(setting: str, fa_version: int | None) -> str:
    """``fa3`` or ``triton``: what computes the sparse tiles (``auto`` picks FA3 when vLLM
    runs FlashAttention 3; asking for FA3 without it falls back to Triton, warned once)."""
    global _warned_kernel
    if setting == "triton":
        return "triton"
    if fa_version == 3:
        return "fa3"
    if setting == "fa3" and not _warned_kernel:
        _warned_kernel = True
        logger.warning("minference: attention_kernel=fa3 needs vLLM's FlashAttention 3 "
                       "(Hopper GPUs); this engine runs FlashAttention %s, so the sparse "
                       "tiles use the Triton kernel", fa_version)
    return "triton"


_warned_extra = False
_warned_pages = False  # KV pages the antidiagonal stride does not divide, at run time


def _warn_extra_without_fa3(extra_blocks: int, kernel: str) -> None:
    """``extra_blocks`` is read by the FA3 page lists only: say so once if a user set it and
    they are off (the mode's default is not warned about)."""
    global _warned_extra
    if extra_blocks > 0 and kernel != "fa3" and not _warned_extra:
        _warned_extra = True
        logger.warning("minference: extra_blocks=%d needs the FA3 page lists (Hopper, vLLM's "
                       "FlashAttention 3); the Triton kernel computes the lists without the "
                       "extra tiles", extra_blocks)


def mean_causal_keys(layout) -> float:
    """Keys a query row of the batch sees under dense causal attention, on average."""
    return layout.causal_keys() / max(1, sum(layout.q_lens_host))


class DensityGuard:
    """Dense or sparse for one layer, mostly decided without stopping the host for the GPU.

    The work lists' density (computed tiles over dense causal tiles) is known only on the
    device, and reading it stalls the host until the layer's planning is done, serialising
    the launches with the GPU work.  So the guard predicts it: a profile's budgets fix the
    keys each query row computes, not the density, so this step's density is about the
    latest step's keys per row over the keys this step's rows see (chunked prefill of a long
    prompt sees more keys every chunk, and a layer too dense on its first 64K chunk is
    sparse a few chunks later).  The step's own lists go to the host in the background and
    refine the next prediction.

    A prediction is trusted only where it cannot be far off: it comes from a step of this
    layer whose rows saw nearly as many keys as this step's (within ``max_ratio``, set so
    that whatever the true growth of kept keys between 0 and 1, the prediction is off by at
    most ``max_error``), and it lies more than ``margin`` from ``max_density``.  That step
    is the latest one where it qualifies (this prompt's previous chunk), else the most
    recent qualifying step of the layer's recent history, an earlier prompt's step at about
    this length: a new prompt's first sparse chunk, or a chunk that sees many more keys than
    the one before (64K chunks of a 1M prompt), need not wait.  Otherwise (a layer's first
    steps, a length not seen lately, or a close call) the step waits for its own density,
    which stalls the host until the layer's planning is done (a 128K prompt after a 70K one
    on an H200: 26 waits instead of 61; its time to first token did not change measurably,
    0.951 vs 0.943 s).  Random-like attention, whose keys per row grow in proportion to the
    keys it sees, is caught that way: its falling predictions reach the margin, or a large
    jump, before they can pass below it.  (A fitted growth exponent did that job before;
    fitted on a warm-up prompt's short last chunk it kept 6 of 24 real layers dense for a
    whole 1M prompt: H100, 39.0 s instead of 23.7 s.)  A prediction from another prompt is
    trusted on the same terms: a prompt whose layer is much denser than the last one's at
    that length costs at most one step per layer, whose own density then arrives for the
    next prediction.  A layer expected clearly too dense skips planning and re-measures
    every ``reprobe_steps`` steps or when its prediction comes within the margin; only this
    prompt's own latest step (or the rule below) skips planning.

    Across prompts one rule holds without a prediction: a layer found clearly too dense where
    its rows saw K keys is too dense wherever they see at most K, in any prompt (fixed budgets
    cover a larger share of fewer keys; random-like lists cover about the same share at any
    length).  Such steps skip planning from the start of every new prompt (the first 16K-64K
    of each long prompt, and in serving every request of that size): planning and waiting
    for the density cost a layer 1.7 ms per step there (H100, ``vllm serve`` load test at
    16K-31K tokens), for a step that then runs dense anyway.  A sparse finding at fewer keys
    withdraws the rule for that layer.

    ``keys_growth``: how the keys a row keeps grow with the keys it sees between steps of
    a prompt, ``keys ~ causal ** keys_growth``.  0 for budget-bounded lists (fixed and
    adaptive modes).  Antidiagonal mode keeps a share of each block's attention, whatever
    its length: random-like lists keep about ``tau`` of everything (growth 1) and real heads
    fall between, so it predicts with 0.5.  With 0 there, a random-like layer's predictions
    fell into the margin every chunk or two, and each such step paid the antidiagonal
    estimate (0.14-0.28 of the dense step) for lists that then ran dense.
    """

    def __init__(self, max_density: float, margin: float = 0.1, max_error: float = 1.5,
                 reprobe_steps: int = 16, keys_growth: float = 0.0, history: int = 32):
        self.max_density = max_density
        self.margin = margin
        # a prediction over a ratio r of keys seen is off by r ** (growth - keys_growth) for
        # a true growth in [0, 1]: at most max_error within these ratios (1.5 for budget
        # lists, 2.25 for share-based ones)
        self.max_ratio = max_error ** (1.0 / max(keys_growth, 1.0 - keys_growth))
        self.reprobe_steps = reprobe_steps
        self.keys_growth = keys_growth
        # (keys a row could see, keys per row) of the latest steps on the host, this
        # prompt's and earlier ones', newest last
        self.history: deque[tuple[float, float]] = deque(maxlen=history)
        self.expected: float | None = None  # the latest step's prediction (for the trace)
        # keys per row of the step the latest decision came from (its own where it waited)
        self.basis_keys: float | None = None
        self.waited = 0  # steps that waited for their own density
        self._host: torch.Tensor | None = None
        self._pending_causal = 0.0
        self._event = None
        self._dense_steps = 0
        self.dense_up_to = 0.0  # keys a row saw where this layer was found clearly too dense

    @property
    def known_keys(self) -> float | None:
        """Keys per query row of the latest step on the host (None before the first)."""
        return self.history[-1][1] if self.history else None

    @property
    def known_causal(self) -> float:
        """Keys a row of that step could see (dense causal); 0 before the first."""
        return self.history[-1][0] if self.history else 0.0

    def _observe(self, keys: float, causal: float) -> None:
        self.history.append((causal, keys))
        density = keys / causal
        if density > self.max_density + self.margin:
            self.dense_up_to = max(self.dense_up_to, causal)
        elif density <= self.max_density and causal <= self.dense_up_to:
            self.dense_up_to = 0.0  # sparse with fewer keys: this layer is not monotone here

    def _collect(self) -> None:
        if self._event is not None and self._event.query():
            self._observe(float(self._host[0]), self._pending_causal)
            self._event = None

    def expected_density(self, layout) -> float | None:
        """This step's density, from the latest known step's keys per row."""
        return self._expected(mean_causal_keys(layout))

    def _expected(self, causal: float) -> float | None:
        self._collect()
        if self.known_keys is None:
            return None
        return self._predict(causal, self.known_causal, self.known_keys)

    def _predict(self, causal: float, seen: float, keys: float) -> float:
        """Density where rows see ``causal`` keys, from a step whose rows kept ``keys`` of
        ``seen``."""
        return keys * (causal / seen) ** self.keys_growth / causal

    def _trusted(self, causal: float) -> tuple[float, float] | None:
        """A prediction of this step's density that the step may act on without waiting for
        its own, with the keys per row of the step it comes from, or None: from the newest
        step of the history whose rows saw within ``max_ratio`` of ``causal`` keys, clear of
        ``max_density`` by the margin (a close call there waits, whatever older steps say).
        Where that step is an earlier prompt's and this prompt has one of its own (the
        latest, seeing fewer keys), the prediction from this prompt's step, however far, must
        fall clear on the same side: a layer much denser in this prompt than in the last is
        not trusted past its own evidence."""
        self._collect()
        comparable = next((i for i in range(len(self.history) - 1, -1, -1)
                           if 1.0 / self.max_ratio <= causal / self.history[i][0]
                           <= self.max_ratio), None)
        if comparable is None:
            return None
        basis_seen, basis_keys = self.history[comparable]
        expected = self._predict(causal, basis_seen, basis_keys)
        if not self._clear(expected):
            return None
        seen, keys = self.history[-1]
        if comparable != len(self.history) - 1 and causal >= seen:  # this prompt's own step
            own = self._predict(causal, seen, keys)
            if not self._clear(own) or (own <= self.max_density) != (
                    expected <= self.max_density):
                return None
        return expected, basis_keys

    def _clear(self, expected: float) -> bool:
        return abs(expected - self.max_density) > self.margin

    def should_plan(self, layout) -> bool:
        """False: run this step dense without planning (the layer is expected too dense)."""
        causal = mean_causal_keys(layout)
        expected = self.expected = self._expected(causal)
        if causal > self.dense_up_to and (
                expected is None or expected <= self.max_density + self.margin
                or causal < self.known_causal):  # a new prompt
            return True
        self._dense_steps += 1
        if self._dense_steps >= self.reprobe_steps:
            self._dense_steps = 0
            return True  # plan once more to re-measure
        return False

    def decide(self, density: torch.Tensor, layout) -> bool:
        """True: take the sparse path.  ``density`` is a 0-d tensor of this step's lists."""
        causal = mean_causal_keys(layout)
        trusted = self._trusted(causal)
        if trusted is None:
            own = float(density)  # waits for this layer's planning
            self._event = None  # an older step still on its way must not overwrite this
            self._observe(own * causal, causal)
            self.basis_keys = own * causal
            self.waited += 1
            return own <= self.max_density
        self.expected, self.basis_keys = trusted
        self._post(density * causal, causal)
        return self.expected <= self.max_density

    def _post(self, keys: torch.Tensor, causal: float) -> None:
        """Send this step's keys per row to the host in the background (at once off the GPU)."""
        if keys.device.type != "cuda":
            self._observe(float(keys), causal)
            return
        if self._host is None:
            self._host = torch.empty(1, dtype=torch.float32, pin_memory=True)
        self._host.copy_(keys.reshape(1), non_blocking=True)
        self._pending_causal = causal
        self._event = torch.cuda.Event()
        self._event.record()


class LayerPlanner:
    """Profile lookup and sparse launch for one attention layer."""

    def __init__(self, settings: MInferenceSettings, profile: Profile, head_ids: list[int],
                 num_kv_heads: int, page_size: int = PREFERRED_PAGE_SIZE,
                 fa_version: int | None = None):
        self.settings = settings
        self.kernel = resolve_kernel(settings.attention_kernel, fa_version)
        _warn_extra_without_fa3(settings.extra_blocks or 0, self.kernel)
        self.page_size = page_size
        self.profile = profile
        self.head_ids = head_ids
        self.num_kv_heads = num_kv_heads
        self._patterns: LayerPatterns | None = None
        self._layer_index: int | None = None
        self.guard = DensityGuard(settings.max_density,
                                  keys_growth=SHARE_KEYS_GROWTH
                                  if settings.mode == "antidiagonal" else 0.0)
        # the plan options are built from the settings here, at model load, so a setting
        # only they check (an antidiagonal launch option) stops start-up with its error
        # instead of the first long prefill (the warm-up would swallow it)
        self.plan_options()
        stride = self._stride_misfit(page_size)
        if stride:
            raise ValueError(
                f"minference: antidiagonal_stride={stride} needs KV pages of a multiple "
                f"of {stride} tokens, and this engine's are {page_size} (--block-size): "
                f"pick a stride that divides the page size, or a larger --block-size")
        self._dense_logged = False
        self.trace = trace_for(settings.trace, len(profile.layers))
        # what the latest step did: the trace's fields (a GPU density tensor is read late)
        self.last_step: dict = {}

    @staticmethod
    def for_current_model(vllm_config, num_heads: int, num_kv_heads: int,
                          fa_version: int | None = None) -> "LayerPlanner":
        settings = resolve_settings(vllm_config)
        page_size = PREFERRED_PAGE_SIZE
        if vllm_config is None:  # constructed outside a vLLM engine (tests)
            total_layers, total_heads, names = None, num_heads, ()
        else:
            page_size = planned_page_size(vllm_config.cache_config)
            text = vllm_config.model_config.hf_text_config
            total_layers, total_heads = text.num_hidden_layers, text.num_attention_heads
            names = model_names(vllm_config)
        rank, tp = tp_rank_and_size()
        heads = global_heads(rank, num_heads, tp, total_heads)
        if total_layers is None:
            from .profiles import default_profile
            profile = default_profile(1, total_heads)
        else:
            profile = _profile_for(settings.profile, names, total_layers, total_heads)
        return LayerPlanner(settings, profile, heads, num_kv_heads, page_size, fa_version)

    @property
    def row_lse_fn(self):
        """FA3's log-sum-exp for the estimate rows where chosen and FA3 serves this layer."""
        if self.settings.estimate_stats == "fa3" and self.kernel == "fa3":
            return estimate_row_lse
        return None

    def warm_up(self, head_size: int, dtype: torch.dtype, scale: float) -> None:
        """Compile the sparse kernels now (model load) rather than in the first long prefill.

        Never fatal: if it fails, the kernels compile on first use as they would anyway.
        If only the FA3 page lists fail (an FA3 build that rejects them), the layer keeps
        the Triton kernel rather than failing in the middle of serving.
        """
        if not torch.cuda.is_available():
            return
        try:
            vs, bs = self.vs_budgets(), self.bs_budgets()
            ran = [warm_up_kernels(len(self.head_ids), self.num_kv_heads, head_size, dtype,
                                   self.page_size, scale, kernel=self.kernel,
                                   fa3_min_run=self.settings.fa3_min_run,
                                   fa3_min_blocks=self.settings.fa3_min_blocks,
                                   row_lse_fn=self.row_lse_fn, vs_budget=vs[min(i, len(vs) - 1)],
                                   bs_budget=bs[min(i, len(bs) - 1)], **self.plan_options())
                   for i in range(max(len(vs), len(bs)))]
            if any(ran):
                logger.info("minference: sparse kernels compiled for %d/%d heads, head size %d, "
                            "%s, page %d, key tiles on %s", len(self.head_ids),
                            self.num_kv_heads, head_size, dtype, self.page_size, self.kernel)
            return
        except Exception as e:  # noqa: BLE001 - a warm-up must not stop start-up
            failed = e
        if self.kernel == "fa3":
            self.kernel = "triton"  # also takes the estimate statistics back to Triton
            logger.warning("minference: FA3 page lists failed at warm-up (%s: %s); the sparse "
                           "key tiles use the Triton kernel", type(failed).__name__, failed)
            self.warm_up(head_size, dtype, scale)
            return
        logger.warning("minference: kernel warm-up failed (%s: %s); the kernels will "
                       "compile on the first sparse prefill", type(failed).__name__, failed)

    def plan_options(self) -> dict:
        """The settings' plan options, without extra tiles where this layer's tiles run on the
        Triton kernel (only the FA3 page lists read them: computing them would be waste)."""
        options = self.settings.plan_options()
        if self.kernel != "fa3":
            options["extra_blocks"] = 0
            if options.get("antidiagonal") is not None:  # one list per block on Triton
                options["antidiagonal"] = replace(options["antidiagonal"], fa3_groups=False)
        return options

    def vs_budgets(self) -> list[tuple[int, int]]:
        """The distinct (columns, diagonals) maxima of this planner's Vertical-Slash heads
        over the profile's layers (budgets scaled): what the warm-up must cover."""
        pairs = {(max(p.a for p in vs), max(p.b for p in vs))
                 for vs in self._layer_heads(VERTICAL_SLASH)}
        return sorted(pairs) or [SMALL_VS_BUDGET]

    def bs_budgets(self) -> list[int]:
        """The distinct tile-budget maxima of this planner's Block-Sparse heads over the
        profile's layers (scaled), one per ranking-kernel width (the kernel's variants)."""
        widths: dict[int, int] = {}
        for bs in self._layer_heads(BLOCK_SPARSE):
            k = max(p.a for p in bs)
            width = ranking_width(block_sparse_ranked(k))
            widths[width] = max(widths.get(width, 0), k)
        return sorted(widths.values()) or [SMALL_BS_BUDGET]

    def _layer_heads(self, kind: str):
        """Per profile layer with heads of ``kind`` among this planner's: those heads'
        patterns (budgets scaled)."""
        for index in range(len(self.profile.layers)):
            heads = [p for p in self.profile.layer_patterns(index, self.head_ids,
                                                            self.settings.budget_scale)
                     if p.kind == kind]
            if heads:
                yield heads

    def layer_index(self, layer) -> int:
        """This layer's row in the profile."""
        if self._layer_index is None:
            index = extract_layer_index(layer.layer_name)
            if index >= len(self.profile.layers):  # default profile built without a model
                index = 0
            self._layer_index = index
        return self._layer_index

    def patterns(self, layer, device: torch.device) -> LayerPatterns:
        if self._patterns is None:
            index = self.layer_index(layer)
            self._patterns = LayerPatterns.from_heads(
                self.profile.layer_patterns(index, self.head_ids, self.settings.budget_scale),
                device, **self.plan_options())
        return self._patterns

    def tile_kernel(self, kv_cache: torch.Tensor, head_size: int, extra: bool = False) -> str:
        """The kernel for this step: FA3 page lists where chosen, the cache is HND and the
        lists the guard decided from (this step's own where it waited, else the step it
        predicted from, of this prompt or at about this length of an earlier one) give each
        query row at least ``FA3_MIN_KEYS`` keys on average, so that they pay, or the step's
        lists carry ``extra`` tiles (only the page lists read those)."""
        if self.kernel == "fa3" and hnd_cache_ok(kv_cache, head_size) and (
                extra or (self.guard.basis_keys is not None
                          and self.guard.basis_keys >= FA3_MIN_KEYS)):
            return "fa3"
        return "triton"

    def run(self, layer, query: torch.Tensor, kv_cache: torch.Tensor, batch, scale: float,
            output: torch.Tensor) -> bool:
        """Sparse attention of the batch's sparse requests into ``output``.

        ``kv_cache`` is the layer's packed cache (``[pages, kv_heads, page, 2 * head_size]``).

        Returns False (having written nothing) when this layer's work lists lately covered
        more than ``max_density`` of the causal area: dense FlashAttention is then faster
        (see :class:`DensityGuard`).
        """
        layout = batch.layout
        if self._stride_misfit(kv_cache.shape[2], warn=True):
            self.last_step = dict(expected=None, density=None, path="dense (pages)", kernel=None)
            return False
        planned = self.guard.should_plan(layout)
        self.last_step = dict(expected=self.guard.expected, density=None,
                              path="planned" if planned else "dense (expected)", kernel=None)
        if not planned:
            return False
        head_size = query.shape[-1]
        kv = KVSource.packed(kv_cache, batch.block_table)
        if self.trace is not None:
            self.last_step["_plan_start"] = self.trace.begin(query.device)
        wl = plan_layer(query, kv, layout, self.patterns(layer, query.device), scale,
                        row_lse_fn=self.row_lse_fn)
        if self.trace is not None:
            self.last_step["_plan_stop"] = self.trace.begin(query.device)
        dense_tiles = layout.total_dense_tiles() * wl.num_heads  # every head's causal tiles
        density = wl.tiles().sum() / dense_tiles
        waited = self.guard.waited
        sparse = self.guard.decide(density, layout)
        self.last_step.update(density=density, path="sparse" if sparse else "dense (lists)",
                              waited=self.guard.waited > waited, expected=self.guard.expected)
        global _first_step_logged
        if not _first_step_logged:  # one line per process, not one per layer
            _first_step_logged = True
            logger.info("minference: first sparse prefill step (%d request(s), longest %d "
                        "tokens, %s mode): density of the first layer %.3f, %s",
                        layout.num_seqs, layout.max_kv_len, self.settings.mode,
                        self.guard.known_keys / mean_causal_keys(layout),
                        "sparse" if sparse else "dense")
        if not sparse:
            self._log_dense_once(layout)
            return False
        self.last_step["kernel"] = self.tile_kernel(kv_cache, head_size,
                                                    extra=wl.extra is not None)
        if self.last_step["kernel"] == "fa3":
            geometry = batch.page_geometry(query.shape[1], group_rows(head_size))
            stats = {} if self.trace is not None else None
            page_list_attention(query, kv_cache, batch.block_table, layout, wl, scale,
                                out=output, geometry=geometry,
                                min_run=self.settings.fa3_min_run,
                                min_blocks=self.settings.fa3_min_blocks, stats=stats,
                                stage_times=False)
            if stats and "key_rows" in stats:  # what FA3 computes: its page lists hold each
                # row group's union of its blocks' tiles (with fa3_min_blocks > 1, those
                # enough blocks list), so this exceeds ``density`` by the tiles one block
                # lists and its group's others do not
                self.last_step["computed"] = stats["key_rows"] / (dense_tiles * BLOCK_M * BLOCK_N)
        else:
            sparse_attention(query, kv, layout, wl, scale, out=output)
        return True

    def _stride_misfit(self, page_size: int, warn: bool = False) -> int:
        """The antidiagonal stride where KV pages of ``page_size`` tokens do not hold whole
        groups of it (its lists read a group from one page), else 0.  Start-up refuses such a
        page size as vLLM is expected to use it; should vLLM run with another, ``warn``
        (the step's check) says so once per process, and the layer stays dense instead of
        failing mid-serve."""
        global _warned_pages
        stride = self.settings.antidiagonal_stride if self.settings.mode == "antidiagonal" else 1
        if page_size % stride == 0:
            return 0
        if warn and not _warned_pages:
            _warned_pages = True
            logger.warning("minference: KV pages of %d tokens do not hold whole groups of "
                           "antidiagonal_stride=%d; the sparse layers run dense (choose a "
                           "stride that divides the page size)", page_size, stride)
        return stride

    def _log_dense_once(self, layout) -> None:
        """Say (once per layer and process) that a layer fell back to dense, and why."""
        if self._dense_logged:
            return
        self._dense_logged = True
        logger.info("minference: layer %s runs dense at %d keys: its lists would compute "
                    "%.2f of the causal area (max_density %.2f); it is sparse again once "
                    "prompts are long enough for its budgets", self._layer_index,
                    layout.max_kv_len, self.guard.expected_density(layout),
                    self.settings.max_density)
