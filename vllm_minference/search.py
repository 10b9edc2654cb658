"""Offline, kernel-aware per-head pattern search: a profile for any (Llama/Qwen2-style) model.

    python -m vllm_minference.search MODEL --out PROFILE.json      # or
    vllm-minference search MODEL --out PROFILE.json

One calibration prompt (by default a synthetic key-value retrieval prompt, fixed seed, as
long as the model's context or ``--length``) runs through the model once.  For every layer
and query head, each candidate pattern and budget is *planned with the real kernels*
(:func:`vllm_minference.kernels.plan_layer`: the same online estimate, selection and index
builders the backend runs), and scored by

* **cost**: the 64-key tiles the work list computes (``WorkList.tiles()``) over the tiles of
  dense causal attention: exactly what the sparse attention kernel will spend;
* **recall**: the attention probability mass (fp32 softmax of the true scores) that falls on
  the keys the work list names, averaged over the rows of a sample of 64-row query blocks
  spread over the prompt, with the last two blocks (where a prompt asks its question)
  weighted ``final_weight`` (default one half).  Without that weight the spread blocks,
  whose attention is mostly local, made a static A-shape look as good as a dynamic pattern
  for retrieval heads: the first searched profile for the 0.5B model (260 of 336 heads
  A-shape) lost passkeys the default profile at the same density kept.

Each head gets the candidate with the best recall among those whose cost is within
``--target-density`` (a near-tie, within ``recall_tolerance``, goes to the cheaper one); when
no candidate fits, the cheapest.  The chosen budget is written verbatim, in the project's
profile format (:mod:`vllm_minference.profiles`), which the backend loads as is.

Why transformers and not vLLM: one forward of the Hugging Face model with a wrapped
attention function hands over every layer's post-RoPE queries and keys (Q/K-norms, biases
and rope scaling applied by the model's own code), one layer at a time, without vLLM's
engine; under vLLM the keys live in the paged cache, and the backend would have to dump
them.  The forward uses ``attn_implementation="sdpa"`` (FlashAttention/efficient kernels,
no 32K x 32K score matrix) and the base model only (no 32K x vocabulary logits); each
layer's candidates are evaluated inside the wrapped attention call and its Q/K dropped
before the next layer, so memory stays at one layer's activations.
"""

from __future__ import annotations

import argparse
import datetime
import math
import os
import random
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import torch

if not torch.cuda.is_available():  # the Triton kernels run in the interpreter on a CPU
    os.environ.setdefault("TRITON_INTERPRET", "1")

from vllm_minference.kernels import (  # noqa: E402
    A_SHAPE, BLOCK_SPARSE, VERTICAL_SLASH, HeadPattern, KVSource, LayerPatterns, SeqLayout,
    WorkList, plan_layer)
from vllm_minference.kernels.layout import BLOCK_M, BLOCK_N  # noqa: E402
from vllm_minference.kernels.plan import MIN_SLASH, MIN_VERTICAL  # noqa: E402
from vllm_minference.profiles import (HeadSpec, Profile, ProfileMetadata,  # noqa: E402
                                      save_profile)

SUPPORTED_MODEL_TYPES = ("llama", "qwen2", "qwen3", "mistral")
SUPPORTED_HEAD_DIMS = (64, 128)
MIN_LENGTH = 2 * BLOCK_M
DEFAULT_LENGTH = 32768

# MInference's search space (A-shape = StreamingLLM; Vertical-Slash; Block-Sparse top-k), and
# cheaper dynamic candidates: at 32K only A-shape 128/1024 and Vertical-Slash 3500/100 fit a
# density of 0.1 among MInference's, which left retrieval heads no dynamic choice
DEFAULT_A_SHAPE = ((128, 1024), (128, 2048), (128, 3968))
DEFAULT_VERTICAL_SLASH = ((30, 800), (100, 800), (500, 700), (1000, 6096), (3500, 100),
                          (1000, 2000), (100, 300), (500, 300), (1000, 300), (2000, 150))
DEFAULT_BLOCK_SPARSE = (25, 50, 100)


class SearchError(RuntimeError):
    """A search that cannot run as asked (model, prompt length, settings); says why."""


def tool_version() -> str:
    try:
        from importlib.metadata import version
        return version("vllm-minference")
    except Exception:  # noqa: BLE001 - not installed, e.g. run from a source checkout
        return "0.1.0"


# ------------------------------------------------------------------------------ settings
@dataclass
class SearchSettings:
    """What the search tries and how it chooses."""

    target_density: float = 0.1  # cost (computed / dense causal tiles) a head may spend
    a_shape: Sequence[tuple[int, int]] = DEFAULT_A_SHAPE  # (sink tokens, local window)
    vertical_slash: Sequence[tuple[int, int]] = DEFAULT_VERTICAL_SLASH  # (columns, diagonals)
    block_sparse: Sequence[int] = DEFAULT_BLOCK_SPARSE  # top-k 64x64 blocks per query block
    sample_blocks: int = 16  # 64-row query blocks whose recall is measured
    recall_tolerance: float = 1e-3  # recalls this close count as a tie (cheaper wins)
    final_weight: float = 0.5  # share of the recall from the last two blocks (the question)
    progress: bool = True

    def candidates(self) -> list[HeadPattern]:
        out = [HeadPattern(A_SHAPE, int(s), int(w)) for s, w in self.a_shape]
        out += [HeadPattern(VERTICAL_SLASH, int(v), int(s)) for v, s in self.vertical_slash]
        out += [HeadPattern(BLOCK_SPARSE, int(k), 0) for k in self.block_sparse]
        return out

    def validate(self) -> None:
        if not 0.0 < self.target_density <= 1.0:
            raise SearchError(f"target density must be in (0, 1], got {self.target_density}")
        if not 0.0 <= self.final_weight <= 1.0:
            raise SearchError(f"final_weight must be in [0, 1], got {self.final_weight}")
        if self.sample_blocks < 1:
            raise SearchError(f"sample_blocks must be >= 1, got {self.sample_blocks}")
        cands = self.candidates()
        if not cands:
            raise SearchError("no candidate patterns to search")
        for c in cands:
            # the kernels raise budgets below these floors: the profile must say what runs
            if c.kind == VERTICAL_SLASH and (c.a < MIN_VERTICAL or c.b < MIN_SLASH):
                raise SearchError(f"Vertical-Slash candidate ({c.a}, {c.b}): needs at least "
                                  f"{MIN_VERTICAL} columns and {MIN_SLASH} diagonals")
            if c.kind == A_SHAPE and c.b < BLOCK_N:
                raise SearchError(f"A-shape candidate ({c.a}, {c.b}): the local window must be "
                                  f">= {BLOCK_N} tokens")
            if c.kind == BLOCK_SPARSE and c.a < 1:
                raise SearchError(f"Block-Sparse candidate top-k {c.a}: must be >= 1")


@dataclass
class LayerResult:
    """One layer's search: per candidate and head cost and recall, and each head's choice."""

    cost: torch.Tensor  # [C, H] computed tiles / dense causal tiles
    recall: torch.Tensor  # [C, H] attention mass inside the work list, sampled blocks
    choice: list[int] = field(default_factory=list)  # candidate index per head


# ------------------------------------------------------------------ work lists, sampled
def sample_blocks(num_blocks: int, n: int) -> list[int]:
    """``n`` query blocks spread over the sequence, the last two always included."""
    if n >= num_blocks:
        return list(range(num_blocks))
    chosen = {num_blocks - 1}
    if n >= 2:
        chosen.add(num_blocks - 2)
    k = n - len(chosen)
    for i in range(1, k + 1):  # evenly over (0, num_blocks - 2): block 0 says nothing
        chosen.add(round(i * (num_blocks - 2) / (k + 1)))
    return sorted(chosen)


def worklist_block_keys(wl: WorkList, layout: SeqLayout, blocks: torch.Tensor) -> torch.Tensor:
    """Key sets (before causality) the work list names for a few flat query blocks.

    Returns ``[H, S, max_kv_len]`` bool for the ``S`` blocks in ``blocks``: reads only those
    blocks' descriptors, chunks and columns (vectorised, on the list's device), so it costs
    O(S x list size of a block), not O(q_len x kv_len) like the full mask.
    """
    dev = wl.desc.device
    blocks = blocks.to(device=dev, dtype=torch.long)
    W = layout.max_kv_len
    d = wl.desc[:, blocks].long()  # [H, S, 5]
    H, S = d.shape[:2]
    kv_len = layout.kv_len.to(dev).long()[layout.blk_seq.to(dev).long()[blocks]]  # [S]
    out = torch.zeros(H * S, W + 1, dtype=torch.bool, device=dev)  # column W: discard slot
    base = d[..., 2]
    n_chunks = int(d[..., 1].max()) if d.numel() else 0
    if n_chunks:
        j = torch.arange(n_chunks, device=dev)
        valid = j < d[..., 1, None]  # [H, S, C]
        idx = (d[..., 0, None] + j).clamp(0, wl.chunks.shape[0] - 1)
        start, lo = wl.chunks[idx, 0].long(), wl.chunks[idx, 1].long()
        offs = torch.arange(BLOCK_N, device=dev)
        rel = start[..., None] + offs  # [H, S, C, 64]
        key = base[..., None, None] + rel
        keep = (valid[..., None] & (rel >= lo[..., None]) & (key >= 0)
                & (key < kv_len[None, :, None, None]))
        out.scatter_(1, torch.where(keep, key, W).reshape(H * S, -1), True)
    n_cols = int(d[..., 4].max()) if d.numel() else 0
    if n_cols:
        j = torch.arange(n_cols, device=dev)
        valid = j < d[..., 4, None]
        idx = (d[..., 3, None] + j).clamp(0, wl.cols.shape[0] - 1)
        key = wl.cols[idx].long()
        keep = valid & (key >= 0) & (key < kv_len[None, :, None])
        out.scatter_(1, torch.where(keep, key, W).reshape(H * S, -1), True)
    return out[:, :W].reshape(H, S, W)


def worklist_block_masks(wl: WorkList, layout: SeqLayout, blocks: torch.Tensor) -> torch.Tensor:
    """``[H, S, BLOCK_M, max_kv_len]`` bool: keys each row of the sampled blocks computes.

    The key sets of :func:`worklist_block_keys` AND causality; rows past the end of their
    sequence are all False.  Equals ``worklist_mask(...) & causal_mask(...)`` on those rows.
    """
    dev = wl.desc.device
    blocks = blocks.to(device=dev, dtype=torch.long)
    keys = worklist_block_keys(wl, layout, blocks)
    first = layout.block_first_pos().to(dev)[blocks]  # [S]
    last = layout.block_last_pos().to(dev)[blocks]
    pos = first[:, None] + torch.arange(BLOCK_M, device=dev)  # [S, 64]
    k_idx = torch.arange(layout.max_kv_len, device=dev)
    causal = (k_idx[None, None, :] <= pos[..., None]) & (pos <= last[:, None])[..., None]
    return keys[:, :, None, :] & causal[None]


# ------------------------------------------------------------------------- one layer
def weighted_recall(per_block: torch.Tensor, final_weight: float, n_final: int = 2
                    ) -> torch.Tensor:
    """``[C, H]`` from ``[C, H, S]``: the last ``n_final`` blocks weigh ``final_weight``
    together, the others the rest (a plain mean when every block is a final one)."""
    S = per_block.shape[-1]
    if S <= n_final:
        return per_block.mean(dim=-1)
    return ((1.0 - final_weight) * per_block[..., :-n_final].mean(dim=-1)
            + final_weight * per_block[..., -n_final:].mean(dim=-1))


def block_recalls(q: torch.Tensor, k: torch.Tensor, scale: float, layout: SeqLayout,
                  blocks: list[int], keys: torch.Tensor, per_row: bool = False) -> torch.Tensor:
    """Attention mass inside each candidate's key set per sampled block, ``[C, H, S]``.

    ``q`` ``[N, H, D]`` and ``k`` ``[N, Hkv, D]`` of one sequence (``q_len == kv_len``);
    ``keys`` ``[C, H, S, N]`` the candidates' key sets of the sampled blocks.  True scores
    in fp32, causal softmax, one 64-row block at a time.  ``per_row``: each row's own mass,
    ``[C, H, S, BLOCK_M]`` (NaN past a short last block), since a block's mean hides the
    few rows whose needed keys were dropped.
    """
    N, H, D = q.shape
    Hkv = k.shape[1]
    G = H // Hkv
    C = keys.shape[0]
    kf = k.float().transpose(0, 1)  # [Hkv, N, D]
    first = layout.block_first_pos().tolist()
    last = layout.block_last_pos().tolist()
    out = torch.zeros(C, H, len(blocks), device=q.device)
    rows_out = (torch.full((C, H, len(blocks), BLOCK_M), float("nan"), device=q.device)
                if per_row else None)
    for s, blk in enumerate(blocks):
        r0, r1 = first[blk], last[blk] + 1
        rows = r1 - r0
        qb = q[r0:r1].float().transpose(0, 1).reshape(Hkv, G, rows, D)
        sc = torch.matmul(qb, kf[:, None, :r1].transpose(-1, -2)).reshape(H, rows, r1) * scale
        causal = torch.arange(r1, device=q.device)[None, :] <= (
            r0 + torch.arange(rows, device=q.device))[:, None]
        p = torch.softmax(sc.masked_fill(~causal, float("-inf")), dim=-1)
        m = keys[:, :, s, :r1].permute(1, 2, 0).float()  # [H, r1, C]
        row_mass = torch.bmm(p, m)  # [H, rows, C]
        out[:, :, s] = row_mass.mean(dim=1).T  # [C, H]
        if per_row:
            rows_out[:, :, s, :rows] = row_mass.permute(2, 0, 1)
        del sc, p, m
    return (rows_out if per_row else out).clamp(0.0, 1.0)


def choose(cost: torch.Tensor, recall: torch.Tensor, target: float,
           tolerance: float = 0.0) -> list[int]:
    """Per head: best recall among candidates with cost <= target (near-ties: cheaper);
    if none fits, the cheapest (ties: better recall)."""
    cost, recall = cost.double().cpu(), recall.double().cpu()
    C, H = cost.shape
    out = []
    for h in range(H):
        fits = [c for c in range(C) if cost[c, h] <= target + 1e-9]
        if fits:
            best = max(float(recall[c, h]) for c in fits)
            near = [c for c in fits if recall[c, h] >= best - tolerance]
            out.append(min(near, key=lambda c: (float(cost[c, h]), -float(recall[c, h]), c)))
        else:
            out.append(min(range(C), key=lambda c: (float(cost[c, h]), -float(recall[c, h]), c)))
    return out


@torch.no_grad()
def search_layer(q: torch.Tensor, k: torch.Tensor, scale: float,
                 candidates: list[HeadPattern], settings: SearchSettings) -> LayerResult:
    """Cost and recall of every candidate for every head of one layer, and the choices.

    ``q`` ``[N, H, D]``, ``k`` ``[N, Hkv, D]``: post-RoPE queries and keys of one prompt.
    One :func:`plan_layer` per candidate (the candidate on all heads at once).
    """
    N, H, _ = q.shape
    dev = q.device
    q, k = q.contiguous(), k.contiguous()
    layout = SeqLayout.from_lengths([N], [N], dev)
    kv = KVSource.contiguous(k, k, [N])  # planning never reads values
    dense = layout.dense_tiles().sum().float()
    blocks = sample_blocks(layout.num_blocks, settings.sample_blocks)
    blk_t = torch.tensor(blocks, dtype=torch.long, device=dev)
    costs, keysets = [], []
    for cand in candidates:
        wl = plan_layer(q, kv, layout, LayerPatterns.from_heads([cand] * H, dev), sm_scale=scale)
        costs.append(wl.tiles().sum(dim=1).float() / dense)
        keysets.append(worklist_block_keys(wl, layout, blk_t))
        del wl
    cost = torch.stack(costs)
    recall = weighted_recall(block_recalls(q, k, scale, layout, blocks, torch.stack(keysets)),
                             settings.final_weight)
    return LayerResult(cost=cost.cpu(), recall=recall.cpu(),
                       choice=choose(cost, recall, settings.target_density,
                                     settings.recall_tolerance))


# ---------------------------------------------------------------------- the model run
def check_model(config, num_tokens: int | None = None) -> None:
    """Raise ``SearchError`` unless the search supports this model (and prompt length)."""
    mtype = getattr(config, "model_type", None)
    if mtype not in SUPPORTED_MODEL_TYPES:
        raise SearchError(f"model type {mtype!r} is not supported by the pattern search "
                          f"(supported: {', '.join(SUPPORTED_MODEL_TYPES)})")
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    if head_dim not in SUPPORTED_HEAD_DIMS:
        raise SearchError(f"head_dim {head_dim}: the sparse kernels support "
                          f"{' or '.join(map(str, SUPPORTED_HEAD_DIMS))}")
    if num_tokens is not None:
        ctx = int(config.max_position_embeddings)
        if num_tokens > ctx:
            raise SearchError(
                f"calibration prompt of {num_tokens} tokens is longer than the model's context "
                f"({ctx} tokens, max_position_embeddings); use a shorter --length or extend "
                f"the context with --yarn-factor")
        if num_tokens < MIN_LENGTH:
            raise SearchError(f"calibration prompt of {num_tokens} tokens is too short "
                              f"(at least {MIN_LENGTH})")


@contextmanager
def capture_attention(on_layer: Callable[[torch.nn.Module, torch.Tensor, torch.Tensor, float],
                                         None], attend: Callable | None = None):
    """Route transformers' ``sdpa`` attention through ``on_layer(module, q, k, scale)``.

    ``q`` ``[B, H, L, D]`` and ``k`` ``[B, Hkv, L, D]`` are what the attention receives:
    after projections, norms and rotary embedding.  The attention itself is then computed by
    ``attend(module, query, key, value, attention_mask, scale)`` when given (e.g. a
    memory-lean one for long prompts on a CPU), else by transformers' own.  Restored on exit.
    """
    try:
        from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
    except ImportError as e:  # pragma: no cover - transformers < 4.48
        raise SearchError("the pattern search needs transformers >= 4.48 (AttentionInterface)"
                          ) from e
    local = ALL_ATTENTION_FUNCTIONS._local_mapping
    had, prev = "sdpa" in local, local.get("sdpa")
    orig = ALL_ATTENTION_FUNCTIONS["sdpa"]

    def attention(module, query, key, value, attention_mask, *args, **kwargs):
        if kwargs.get("sliding_window") is not None:
            raise SearchError(f"layer {getattr(module, 'layer_idx', '?')} uses sliding-window "
                              "attention, which the sparse backend does not cover")
        scale = kwargs.get("scaling")
        if scale is None:
            scale = getattr(module, "scaling", query.shape[-1] ** -0.5)
        on_layer(module, query, key, float(scale))
        if attend is not None:
            return attend(module, query, key, value, attention_mask, float(scale))
        return orig(module, query, key, value, attention_mask, *args, **kwargs)

    ALL_ATTENTION_FUNCTIONS["sdpa"] = attention
    try:
        yield
    finally:
        if had:
            local["sdpa"] = prev
        else:
            local.pop("sdpa", None)


def _progress(total: int, enabled: bool):
    """A tqdm bar on a terminal; None (one printed line per layer) in logs or without tqdm."""
    if not enabled or not sys.stderr.isatty():
        return None
    try:
        from tqdm.auto import tqdm
        return tqdm(total=total, desc="pattern search", unit="layer")
    except ImportError:  # pragma: no cover
        return None


def _is_oom(e: BaseException) -> bool:
    return isinstance(e, torch.OutOfMemoryError) or "out of memory" in str(e).lower()


@torch.no_grad()
def search_model(model, input_ids: torch.Tensor | Sequence[int],
                 settings: SearchSettings | None = None, *, model_name: str | None = None,
                 calibration: dict | None = None, extra_search: dict | None = None) -> Profile:
    """Search every layer and head of a loaded transformers causal LM on one prompt.

    ``input_ids``: the calibration prompt (1-D).  Returns the profile (not yet saved).
    Raises ``SearchError`` for unsupported models, prompts longer than the context, or a
    forward that runs out of GPU memory.
    """
    settings = settings or SearchSettings()
    settings.validate()
    config = model.config
    ids = torch.as_tensor(input_ids, dtype=torch.long).reshape(-1)
    n = ids.numel()
    check_model(config, n)
    num_layers, num_heads = config.num_hidden_layers, config.num_attention_heads
    candidates = settings.candidates()
    if getattr(config, "_attn_implementation", None) != "sdpa":
        model.set_attn_implementation("sdpa")
    device = next(model.parameters()).device
    base = getattr(model, getattr(model, "base_model_prefix", "model"), model)

    results: dict[int, LayerResult] = {}
    bar = _progress(num_layers, settings.progress)
    t0 = time.time()

    def on_layer(module, query, key, scale):
        layer = getattr(module, "layer_idx", None)
        if layer is None or layer in results:
            raise SearchError(f"unexpected attention call (layer {layer}): the search needs one "
                              "call per decoder layer")
        q = query[0].transpose(0, 1).contiguous()  # [N, H, D]
        k = key[0].transpose(0, 1).contiguous()  # [N, Hkv, D]
        results[layer] = search_layer(q, k, scale, candidates, settings)
        del q, k
        if bar is not None:
            bar.update(1)
        elif settings.progress:
            r = results[layer]
            picks = [candidates[c] for c in r.choice]
            rec = sum(float(r.recall[c, h]) for h, c in enumerate(r.choice)) / len(r.choice)
            dens = sum(float(r.cost[c, h]) for h, c in enumerate(r.choice)) / len(r.choice)
            kinds = {p.kind: sum(x.kind == p.kind for x in picks) for p in picks}
            print(f"layer {layer + 1}/{num_layers}: recall {rec:.3f}, density {dens:.3f}, "
                  f"{kinds} ({time.time() - t0:.1f} s)", flush=True)

    try:
        with capture_attention(on_layer):
            base(input_ids=ids[None].to(device), use_cache=False)
    except SearchError:
        raise
    except (RuntimeError, torch.OutOfMemoryError) as e:
        if _is_oom(e):
            raise SearchError(f"model does not fit on the GPU: out of memory during the "
                              f"{n}-token forward ({e.__class__.__name__}); try a shorter "
                              f"--length") from e
        raise
    finally:
        if bar is not None:
            bar.close()
    if sorted(results) != list(range(num_layers)):
        raise SearchError(f"captured attention of layers {sorted(results)}, the model has "
                          f"{num_layers}: this architecture does not route its attention "
                          "through transformers' attention interface")

    layers, recall, density, chosen = [], [], [], []
    for i in range(num_layers):
        r = results[i]
        heads = []
        for h, c in enumerate(r.choice):
            p = candidates[c]
            heads.append(HeadSpec(pattern=p.kind, a=p.a, b=p.b,
                                  score=round(float(r.recall[c, h]), 6)))
        layers.append(heads)
        recall.append([round(float(r.recall[c, h]), 6) for h, c in enumerate(r.choice)])
        density.append([round(float(r.cost[c, h]), 6) for h, c in enumerate(r.choice)])
        chosen.append(list(r.choice))
    kinds: dict[str, int] = {}
    for layer in layers:
        for hs in layer:
            kinds[hs.pattern] = kinds.get(hs.pattern, 0) + 1
    flat_r = [x for row in recall for x in row]
    flat_d = [x for row in density for x in row]
    search = dict(
        method="kernel-aware per-head search (vllm_minference.search): cost = work-list tiles "
               "/ dense causal tiles, recall = attention mass inside the work list (the last "
               "two sampled blocks weighted final_weight)",
        calibration=dict(calibration or {"kind": "input_ids"}, length=n),
        target_density=settings.target_density,
        recall_tolerance=settings.recall_tolerance,
        final_weight=settings.final_weight,
        candidates=[dict(pattern=p.kind, a=p.a, b=p.b) for p in candidates],
        sample_blocks=sample_blocks((n + BLOCK_M - 1) // BLOCK_M, settings.sample_blocks),
        dtype=str(next(model.parameters()).dtype).replace("torch.", ""),
        device=str(device),
        seconds=round(time.time() - t0, 1),
        summary=dict(mean_recall=round(sum(flat_r) / len(flat_r), 6),
                     min_recall=min(flat_r), mean_density=round(sum(flat_d) / len(flat_d), 6),
                     max_density=max(flat_d), patterns=kinds),
        chosen=chosen, recall=recall, density=density,
        # every candidate's numbers, [layer][candidate][head]: re-choose without re-running
        candidate_recall=[[[round(float(x), 4) for x in row] for row in results[i].recall]
                          for i in range(num_layers)],
        candidate_density=[[[round(float(x), 4) for x in row] for row in results[i].cost]
                           for i in range(num_layers)],
        **(extra_search or {}),
    )
    meta = ProfileMetadata(model=model_name or getattr(config, "_name_or_path", None) or None,
                           num_layers=num_layers, num_heads=num_heads,
                           source="vllm-minference search", search=search,
                           created=datetime.datetime.now(datetime.timezone.utc)
                           .isoformat(timespec="seconds"),
                           tool_version=tool_version())
    return Profile(metadata=meta, layers=layers)


# ------------------------------------------------------------------ calibration prompt
def kv_retrieval_prompt(tokenizer, length: int, seed: int = 0) -> tuple[list[int], dict]:
    """Exactly ``length`` token ids: many ``key <uuid>: value <number>`` lines, then a
    question asking for one key's value.  Deterministic for a tokenizer and seed."""
    rng = random.Random(seed)
    bos = getattr(tokenizer, "bos_token_id", None)
    head = ([bos] if bos is not None else []) + tokenizer.encode(
        "Below is a list of keys with their values. Remember them: a question about one key "
        "follows the list.\n\n", add_special_tokens=False)

    def uuid() -> str:
        h = f"{rng.getrandbits(128):032x}"
        return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"

    def ask(key: str) -> list[int]:
        return tokenizer.encode(f"\nQuestion: what is the value of key {key}?\nAnswer: the "
                                f"value of key {key} is", add_special_tokens=False)

    body, keys = [], []
    q_reserve = len(ask("0" * 8 + "-0000-0000-0000-" + "0" * 12)) + 16  # kept for the question
    need = length - len(head)
    budget = need - q_reserve  # a queried line must end before this
    if budget < BLOCK_M:
        raise SearchError(f"--length {length} is too short for the calibration prompt")
    while len(body) < need:
        key, value = uuid(), rng.randrange(10 ** 6, 10 ** 7)
        line = tokenizer.encode(f"key {key}: value {value}\n", add_special_tokens=False)
        if len(body) + len(line) <= budget:
            keys.append((key, value))
        body += line
    if not keys:
        raise SearchError(f"--length {length} is too short for the calibration prompt")
    key, value = keys[rng.randrange(len(keys))]
    question = ask(key)
    if len(question) > q_reserve:
        raise SearchError(f"calibration question of {len(question)} tokens (at most {q_reserve})")
    body = body[:need - len(question)]
    ids = head + body + question
    if len(ids) != length:
        raise SearchError(f"could not build a {length}-token calibration prompt "
                          f"(question of {len(question)} tokens)")
    return ids, dict(kind="kv_retrieval", seed=seed, lines=len(keys), answer=value)


# -------------------------------------------------------------------------------- CLI
def apply_yarn(config, factor: float) -> dict:
    """Set YaRN rope scaling by ``factor`` on a transformers config; returns the override."""
    if factor <= 1.0:
        raise SearchError(f"--yarn-factor must be > 1, got {factor}")
    params = dict(getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None)
                  or {})
    orig = int(params.get("original_max_position_embeddings") or config.max_position_embeddings)
    params.setdefault("rope_theta", getattr(config, "rope_theta", 10000.0))
    params.update(rope_type="yarn", factor=float(factor), original_max_position_embeddings=orig)
    params.pop("type", None)
    if hasattr(config, "rope_parameters"):  # transformers >= 5
        config.rope_parameters = params
    else:  # pragma: no cover - transformers 4.x
        config.rope_scaling = params
    config.max_position_embeddings = int(orig * factor)
    return dict(rope_type="yarn", factor=float(factor), original_max_position_embeddings=orig)


def resolve_length(config, length: int | None) -> int:
    """The calibration length: ``--length`` if it fits the context, else the context (<= 32K)."""
    ctx = int(config.max_position_embeddings)
    if length is None:
        return min(ctx, DEFAULT_LENGTH)
    if length > ctx:
        raise SearchError(f"--length {length} is longer than the model's context ({ctx} "
                          f"tokens, max_position_embeddings); pass --yarn-factor "
                          f"{2 ** math.ceil(math.log2(length / ctx))} to extend it with YaRN "
                          f"(and serve the model with the same rope scaling)")
    if length < MIN_LENGTH:
        raise SearchError(f"--length {length} is too short (at least {MIN_LENGTH} tokens)")
    return length


def _pairs(text: str) -> list[tuple[int, int]]:
    try:
        return [tuple(int(x) for x in item.split(",")) for item in text.split()]  # type: ignore
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected 'A,B A,B ...', got {text!r}") from None


def _ints(text: str) -> list[int]:
    try:
        return [int(x) for x in text.replace(",", " ").split()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected 'K K ...', got {text!r}") from None


def build_parser() -> argparse.ArgumentParser:
    s = SearchSettings()
    ap = argparse.ArgumentParser(
        prog="vllm-minference search",
        description="Offline, kernel-aware per-head pattern search: writes a profile for MODEL.")
    ap.add_argument("model", help="Hugging Face model id or local folder")
    ap.add_argument("--out", required=True, help="profile JSON to write")
    ap.add_argument("--model-name", default=None,
                    help="model name recorded in the profile (default: MODEL as given)")
    ap.add_argument("--length", type=int, default=None,
                    help=f"calibration prompt tokens (default: min(context, {DEFAULT_LENGTH}))")
    ap.add_argument("--prompt-file", default=None,
                    help="calibration text instead of the synthetic key-value retrieval prompt")
    ap.add_argument("--seed", type=int, default=0, help="seed of the synthetic prompt")
    ap.add_argument("--target-density", type=float, default=s.target_density,
                    help="cost (computed/dense causal tiles) each head may spend (default 0.1)")
    ap.add_argument("--yarn-factor", "--rope-scaling-factor", dest="yarn_factor", type=float,
                    default=None, help="extend the context with YaRN rope scaling by this factor")
    ap.add_argument("--sample-blocks", type=int, default=s.sample_blocks,
                    help="64-row query blocks whose recall is measured (default 16)")
    ap.add_argument("--final-weight", type=float, default=s.final_weight,
                    help="share of the recall from the prompt's last two 64-row blocks, where "
                         "it asks its question (default %(default)s)")
    ap.add_argument("--a-shape", type=_pairs, default=list(s.a_shape),
                    help="A-shape candidates 'SINK,WINDOW ...' (default: %(default)s)")
    ap.add_argument("--vertical-slash", type=_pairs, default=list(s.vertical_slash),
                    help="Vertical-Slash candidates 'COLUMNS,DIAGONALS ...'")
    ap.add_argument("--block-sparse", type=_ints, default=list(s.block_sparse),
                    help="Block-Sparse candidates 'TOPK ...' (empty string: none)")
    ap.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    ap.add_argument("--no-progress", action="store_true")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        path = run_search(args)
    except SearchError as e:
        print(f"vllm-minference search: error: {e}", file=sys.stderr)
        return 1
    print(f"profile written to {path}")
    return 0


def run_search(args: argparse.Namespace) -> str:
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    settings = SearchSettings(target_density=args.target_density, a_shape=args.a_shape,
                              vertical_slash=args.vertical_slash, block_sparse=args.block_sparse,
                              sample_blocks=args.sample_blocks, final_weight=args.final_weight,
                              progress=not args.no_progress)
    settings.validate()
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    config = AutoConfig.from_pretrained(args.model)
    check_model(config)
    rope_override = apply_yarn(config, args.yarn_factor) if args.yarn_factor else None
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    if args.prompt_file:
        text = Path(args.prompt_file).read_text()
        ids = tokenizer.encode(text, add_special_tokens=True)
        if args.length is not None:
            ids = ids[:args.length]
        calibration = dict(kind="file", file=str(args.prompt_file))
        check_model(config, len(ids))
    else:
        length = resolve_length(config, args.length)
        ids, calibration = kv_retrieval_prompt(tokenizer, length, args.seed)
    print(f"calibration prompt: {calibration['kind']}, {len(ids)} tokens; "
          f"{len(settings.candidates())} candidates per head, target density "
          f"{settings.target_density}; {device} {str(dtype).replace('torch.', '')}", flush=True)
    try:
        model = AutoModelForCausalLM.from_pretrained(args.model, config=config, dtype=dtype,
                                                     attn_implementation="sdpa")
        model = model.to(device).eval()
    except (RuntimeError, torch.OutOfMemoryError) as e:
        if _is_oom(e):
            raise SearchError(f"model does not fit on the GPU (out of memory while loading "
                              f"{args.model})") from e
        raise
    extra = {"rope_override": rope_override} if rope_override else {}
    profile = search_model(model, ids, settings, model_name=args.model_name or args.model,
                           calibration=calibration, extra_search=extra)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    save_profile(profile, args.out)
    summ = profile.metadata.search["summary"]
    print(f"{profile.num_layers} layers x {profile.num_heads} heads: mean recall "
          f"{summ['mean_recall']:.3f} (min {summ['min_recall']:.3f}), mean density "
          f"{summ['mean_density']:.3f}, patterns {summ['patterns']}", flush=True)
    return str(args.out)


if __name__ == "__main__":
    sys.exit(main())
