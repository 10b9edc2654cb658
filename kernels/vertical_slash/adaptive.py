"""Adaptive, tile-aware Vertical-Slash selection: the fewest lines that hold a mass target.

MInference keeps a fixed number of columns and diagonals per head.  Two things waste work:

* **units** — the kernel computes diagonals as 64-key chunks relative to each query block
  (see :mod:`.index`): a lone diagonal costs a whole 64x64 tile, and every other diagonal in
  that tile comes for free.  So slashes are chosen here as *chunks*: chunk ``c`` is the tile
  of keys ``qs - 64c + [0, 64)`` of the block starting at ``qs``, i.e. diagonal ``64c`` in
  the index builder's terms.  Its estimated mass is the part of each diagonal
  ``d = 64c + delta`` that falls inside it (``(64 - delta) / 64`` of the rows) plus the part
  of diagonal ``64(c-1) + delta`` that spills into it (``delta / 64``).
* **budgets** — most heads need far fewer lines than the profile budget for most prompts.
  Columns (1/64 tile per block each) and chunks (1 tile each) are ranked together by mass
  per tile, and the fewest whose summed estimated mass reaches ``gamma`` of the estimate
  rows' total are kept (FlexPrefill's cumulative-mass rule, in kernel cost units).  The
  profile budgets stay as ceilings (columns; chunks), the sinks and the nearest diagonals
  as floors.

Everything is batched over sequences and heads with fixed shapes (no host sync): the
outputs have the same form as :func:`.estimate.select_vertical_slash` and feed the same
index builder.

The selection runs once per layer and prefill chunk, so its host launch time counts: it is
four launches (the same rule in PyTorch ops, ``reference.select_adaptive_reference``, is
~90).  One Triton kernel forms the column and chunk scores and masses in one pass over the
estimate, ``torch.topk`` ranks each kind, and one Triton kernel per (sequence, head) does
the joint ranking: the two top-k lists are sorted already, so their joint order is a
bitonic merge, the threshold a cumulative sum over it; kept columns are sorted by index in
registers, kept chunks collected by a scan over the chunk slots.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..layout import BLOCK_N, SeqLayout, append_kept
from .estimate import FORCED, INVALID

# A far diagonal crosses the 64 estimate rows as 64 columns of one row each, whose mass per
# tile equals the diagonal's: but only the diagonal carries over to other query blocks.
# Columns therefore need twice a chunk's mass per tile to rank above it.
COLUMN_DISCOUNT = 0.5

CHUNKS_PER_PROGRAM = 64  # 4096 keys per program of the score kernel
SCAN_CHUNKS = 1024  # chunk slots per step of the rank kernel's collecting scan
_FROM_CHUNKS = tl.constexpr(1 << 30)  # tag bit of chunk entries in the joint ranking


def chunk_masses(slash: torch.Tensor) -> torch.Tensor:
    """Estimated mass of each relative key chunk, ``[B, H, cdiv(kv, 64) + 1]`` float32.

    The readable definition (tests, the reference); ``select_adaptive`` computes the same
    inside its score kernel.
    """
    B, H, kv = slash.shape
    n = -(-kv // BLOCK_N)
    s = torch.nn.functional.pad(slash, (0, n * BLOCK_N - kv)).view(B, H, n, BLOCK_N)
    w_in = (BLOCK_N - torch.arange(BLOCK_N, device=slash.device, dtype=slash.dtype)) / BLOCK_N
    inside = (s * w_in).sum(-1)
    spill = (s * (1.0 - w_in)).sum(-1)
    out = torch.zeros(B, H, n + 1, dtype=slash.dtype, device=slash.device)
    out[..., :n] += inside
    out[..., 1:] += spill
    return out


@triton.jit(do_not_specialize=["kv_max", "n_chunk", "n_part", "keep_first", "keep_diag",
                               "c_forced"])
def _adaptive_scores_kernel(
    VERT, SLASH, KV_LEN, V_SCORE, C_SCORE, C_MASS, C_FLAG, PART,
    kv_max, n_chunk, n_part, keep_first, keep_diag, c_forced, v_scale,
    FORCED_KEY: tl.constexpr, NC: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """Column scores, chunk scores and masses, and the partial mass total of ``NC`` chunks.

    Program (p, h, b) covers chunks ``p*NC + [0, NC)`` and the keys under them.  A chunk's
    mass needs the 64 keys before it too (their spill), read again rather than exchanged.
    It also clears the chunks' keep flags, which the rank kernel sets (no memset launch).
    """
    pid = tl.program_id(0)
    h = tl.program_id(1)
    b = tl.program_id(2)
    row = (b * tl.num_programs(1) + h).to(tl.int64)
    kv_len = tl.load(KV_LEN + b)
    c = pid * NC + tl.arange(0, NC)
    j = tl.arange(0, BLOCK_N)
    k = c[:, None] * BLOCK_N + j[None, :]
    k_ok = k < kv_max
    v = tl.load(VERT + row * kv_max + k, mask=k_ok, other=0.0)
    tl.store(PART + row * n_part + pid, tl.sum(tl.sum(v, axis=1), axis=0))

    # columns: the first keys are forced; the last keys' mass is the local band's, which the
    # forced near chunks already hold for the estimate rows (no double counting)
    counted = (k < kv_len) & (k < kv_len - BLOCK_N - keep_diag)
    score = tl.where(k < keep_first, FORCED_KEY + (keep_first - k).to(tl.float32),
                     tl.where(counted, v, 0.0) * v_scale)
    score = tl.where(k < kv_len, score, float("-inf"))
    tl.store(V_SCORE + row * kv_max + k, score, mask=k_ok)

    # chunks: what falls inside (weight (64 - delta) / 64) plus the previous chunk's spill
    w_in = (BLOCK_N - j).to(tl.float32) / BLOCK_N
    s = tl.load(SLASH + row * kv_max + k, mask=k_ok, other=0.0)
    k_prev = k - BLOCK_N
    s_prev = tl.load(SLASH + row * kv_max + k_prev, mask=(k_prev >= 0) & (k_prev < kv_max),
                     other=0.0)
    mass = tl.sum(s * w_in[None, :], axis=1) + tl.sum(s_prev * (1.0 - w_in)[None, :], axis=1)
    c_ok = c < n_chunk
    tl.store(C_MASS + row * n_chunk + c, mass, mask=c_ok)
    # the chunks holding the nearest keep_diag diagonals are forced
    score_c = tl.where(c <= c_forced, FORCED_KEY + (c_forced - c).to(tl.float32), mass)
    score_c = tl.where(c * BLOCK_N < kv_len + BLOCK_N, score_c, float("-inf"))
    tl.store(C_SCORE + row * n_chunk + c, score_c, mask=c_ok)
    tl.store(C_FLAG + row * n_chunk + c, tl.zeros([NC], tl.int8), mask=c_ok)


@triton.jit
def _indicator(n_dims: tl.constexpr, j: tl.constexpr):
    """0 for the left, 1 for the right element along axis ``j`` (innermost 0) of a hypercube."""
    return tl.reshape(tl.arange(0, 2), [1] * (n_dims - j - 1) + [2] + [1] * j)


@triton.jit
def _merge_hypercube(h, stage: tl.constexpr, order: tl.constexpr, n_dims: tl.constexpr):
    """Bitonic merge steps over the innermost ``stage`` axes (order 0 up, 1 down, 2 alternating).

    ``tl.sort``'s network, but each element finds its partner as the pair's sum minus itself
    (exact for wrapping ints) instead of an xor reduction: the same single reduction per step
    on the GPU, and a plain sum that the CPU interpreter runs ~100x faster.
    """
    if order == 2:
        flip = _indicator(n_dims, stage)
    else:
        flip = order
    for s in tl.static_range(stage):  # axes stage - 1, ..., 0 from the innermost
        partner = (tl.sum(h, axis=n_dims - stage + s, keep_dims=True) - h).to(h.dtype)
        h = tl.where((h > partner) != (flip ^ _indicator(n_dims, stage - 1 - s)), partner, h)
    return h


@triton.jit
def _sort_desc(x, LOG: tl.constexpr):
    """``x`` (int, ``2**LOG`` elements) sorted descending: a bitonic sort."""
    h = tl.reshape(x, [2] * LOG)
    for i in tl.static_range(1, LOG + 1):
        h = _merge_hypercube(h, i, 2 if i < LOG else 1, LOG)
    return tl.reshape(h, x.shape)


@triton.jit
def _merge_desc(x, LOG: tl.constexpr):
    """A bitonic ``x`` (int, ``2**LOG`` elements, up then down) sorted descending."""
    return tl.reshape(_merge_hypercube(tl.reshape(x, [2] * LOG), LOG, 1, LOG), x.shape)


@triton.jit
def _order_bits(x):
    """int32 whose signed order is the float order of ``x`` (an involution on the bits)."""
    bits = x.to(tl.int32, bitcast=True)
    return bits ^ ((bits >> 31) & 0x7FFFFFFF)


@triton.jit(do_not_specialize=["kv_max", "n_chunk", "n_part", "k_v", "k_c", "keep_first",
                               "keep_diag", "c_forced"])
def _adaptive_rank_kernel(
    V_KEY, V_IDX, C_KEY, C_IDX, VERT, C_MASS, C_FLAG, PART, KV_LEN, V_CEIL, S_CEIL,
    COLS, N_COLS, DIAGS, N_DIAGS,
    kv_max, n_chunk, n_part, k_v, k_c, keep_first, keep_diag, c_forced, gamma,
    FORCED_KEY: tl.constexpr, INVALID_IDX: tl.constexpr, LOG_V: tl.constexpr,
    LOG_C: tl.constexpr, LOG_P: tl.constexpr, PB: tl.constexpr, SCAN: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    """Joint ranking of one (sequence, head): threshold, kept lines sorted, counts.

    The column and chunk top-k lists are sorted descending; written as one bitonic sequence
    (columns reversed, then chunks) they need only a bitonic merge to be in joint order.
    Each entry is an int64 of its key's order bits and a tag that says where it came from.
    Kept columns (at most ``v_max``) are sorted by index in registers; kept chunks (up to
    thousands: a bitonic sort of 8192 took ~250 us on an H100) are flagged in their chunk
    slots and collected by one descending scan over the chunks.
    """
    h = tl.program_id(0)
    b = tl.program_id(1)
    row = (b * tl.num_programs(0) + h).to(tl.int64)
    P: tl.constexpr = 1 << LOG_P
    kv_len = tl.load(KV_LEN + b)
    # floors above a head's budget win: the budget is a ceiling on what the estimate adds
    v_ceil = tl.maximum(tl.load(V_CEIL + h), keep_first)
    s_ceil = tl.maximum(tl.load(S_CEIL + h), c_forced + 1)
    total = tl.zeros([], tl.float32)
    for q0 in range(0, n_part, PB):
        q = q0 + tl.arange(0, PB)
        total += tl.sum(tl.load(PART + row * n_part + q, mask=q < n_part, other=0.0), axis=0)

    # joint order: ascending columns then descending chunks form a bitonic sequence; the
    # beyond-ceiling entries rank as -inf
    p = tl.arange(0, P)
    in_v = p < k_v
    iv = k_v - 1 - p
    ic = p - k_v
    key_v = tl.load(V_KEY + row * k_v + iv, mask=in_v & (iv < v_ceil), other=float("-inf"))
    key_c = tl.load(C_KEY + row * k_c + ic, mask=(ic >= 0) & (ic < k_c) & (ic < s_ceil),
                    other=float("-inf"))
    tag = tl.where(in_v, p, _FROM_CHUNKS + (P - 1 - p))  # ascending, then descending
    packed = (_order_bits(tl.where(in_v, key_v, key_c)).to(tl.int64) << 32) | tag.to(tl.int64)
    packed = _merge_desc(packed, LOG_P)
    key = _order_bits((packed >> 32).to(tl.int32)).to(tl.float32, bitcast=True)
    tag = packed.to(tl.int32)  # the low 32 bits
    live = key > float("-inf")
    is_v = tag < _FROM_CHUNKS
    iv = k_v - 1 - tag
    ic = (P - 1 - (tag - _FROM_CHUNKS)) - k_v
    col = tl.load(V_IDX + row * k_v + iv, mask=live & is_v, other=0)
    counted = (col < keep_first) | (col < kv_len - BLOCK_N - keep_diag)
    mass_v = tl.load(VERT + row * kv_max + col, mask=live & is_v & counted, other=0.0)
    chunk = tl.load(C_IDX + row * k_c + ic, mask=live & ~is_v, other=0)
    mass_c = tl.load(C_MASS + row * n_chunk + chunk, mask=live & ~is_v, other=0.0)
    # the threshold key is the one where the target is reached (keep all if it never is)
    reached = tl.cumsum(tl.where(is_v, mass_v, mass_c), axis=0) >= gamma * total
    first = tl.min(tl.where(reached, p, P), axis=0)
    tau = tl.max(tl.where(p == first, key, float("-inf")), axis=0)
    tau = tl.minimum(tau, FORCED_KEY)  # floors always stay

    i = tl.arange(0, 1 << LOG_V)
    key_v = tl.load(V_KEY + row * k_v + i, mask=(i < k_v) & (i < v_ceil), other=float("-inf"))
    keep_v = (key_v >= tau) & (key_v > float("-inf"))
    col = tl.load(V_IDX + row * k_v + i, mask=keep_v, other=0).to(tl.int32)
    tl.store(COLS + row * k_v + i, _sort_desc(tl.where(keep_v, col, INVALID_IDX), LOG_V),
             mask=i < k_v)
    tl.store(N_COLS + row, tl.sum(keep_v.to(tl.int32), axis=0))

    i = tl.arange(0, 1 << LOG_C)
    key_c = tl.load(C_KEY + row * k_c + i, mask=(i < k_c) & (i < s_ceil), other=float("-inf"))
    keep_c = (key_c >= tau) & (key_c > float("-inf"))
    n_keep = tl.sum(keep_c.to(tl.int32), axis=0)
    chunk = tl.load(C_IDX + row * k_c + i, mask=keep_c, other=0)
    tl.store(C_FLAG + row * n_chunk + chunk, tl.full([1 << LOG_C], 1, tl.int8), mask=keep_c)
    tl.debug_barrier()  # the flags of every thread, before any thread scans them
    done = tl.full([], 0, tl.int32)  # chunks stored so far
    for c0 in range(0, n_chunk, SCAN):
        c = n_chunk - 1 - c0 - tl.arange(0, SCAN)
        flag = tl.load(C_FLAG + row * n_chunk + c, mask=c >= 0, other=0)
        done = append_kept(DIAGS + row * k_c, done, c * BLOCK_N, flag != 0)
    tl.store(DIAGS + row * k_c + i, tl.full([1 << LOG_C], INVALID_IDX, tl.int32),
             mask=(i >= n_keep) & (i < k_c))
    tl.store(N_DIAGS + row, n_keep)


def _log_block(n: int) -> int:
    """log2 of a power-of-two block that holds ``n`` (at least 16)."""
    return max(4, (n - 1).bit_length())


def select_adaptive(
    vertical: torch.Tensor,
    slash: torch.Tensor,
    layout: SeqLayout,
    v_ceiling: torch.Tensor,
    s_ceiling: torch.Tensor,
    v_max: int,
    s_max: int,
    gamma: float,
    keep_first: int = 30,
    keep_diag: int = 100,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Fewest columns and diagonal chunks per (sequence, head) holding ``gamma`` of the mass.

    ``v_ceiling``/``s_ceiling`` (``[H]``) cap columns and chunks; ``v_max``/``s_max`` their
    maxima.  Returns ``(cols, n_cols, diags, n_diags)`` like ``select_vertical_slash``, with
    every diagonal a multiple of 64 (one relative chunk each); the lists are as wide as the
    candidates (at most ``v_max`` columns, at most ``s_max`` chunks), not the budgets.

    Four launches: the score kernel, two ``torch.topk``, the rank kernel.
    """
    B, H, kv_max = vertical.shape
    dev = vertical.device
    vertical, slash = vertical.contiguous(), slash.contiguous()
    n_chunk = triton.cdiv(kv_max, BLOCK_N) + 1
    c_forced = (keep_diag - 1) // BLOCK_N + 1 if keep_diag > 0 else -1
    # the candidate lists: the floors always fit, the keys bound them
    k_v = min(max(v_max, keep_first), kv_max)
    k_c = min(max(s_max, c_forced + 1), n_chunk)
    cols = torch.empty(B, H, k_v, dtype=torch.int32, device=dev)
    n_cols = torch.empty(B, H, dtype=torch.int32, device=dev)
    diags = torch.empty(B, H, k_c, dtype=torch.int32, device=dev)
    n_diags = torch.empty(B, H, dtype=torch.int32, device=dev)
    if B * H == 0:
        return cols, n_cols, diags, n_diags
    kv_len = layout.kv_len.to(dev)

    n_part = triton.cdiv(n_chunk, CHUNKS_PER_PROGRAM)
    v_score = torch.empty(B, H, kv_max, dtype=torch.float32, device=dev)
    c_score = torch.empty(B, H, n_chunk, dtype=torch.float32, device=dev)
    c_mass = torch.empty_like(c_score)
    c_flag = torch.empty(B, H, n_chunk, dtype=torch.int8, device=dev)
    part = torch.empty(B, H, n_part, dtype=torch.float32, device=dev)
    _adaptive_scores_kernel[(n_part, H, B)](
        vertical, slash, kv_len, v_score, c_score, c_mass, c_flag, part,
        kv_max, n_chunk, n_part, keep_first, keep_diag, c_forced,
        BLOCK_N * COLUMN_DISCOUNT,
        FORCED_KEY=FORCED, NC=CHUNKS_PER_PROGRAM, BLOCK_N=BLOCK_N, num_warps=4)

    v_key, v_idx = torch.topk(v_score, k_v, dim=-1, sorted=True)
    c_key, c_idx = torch.topk(c_score, k_c, dim=-1, sorted=True)

    # Block sizes never follow the length, and follow the budgets only past the default
    # profile's (1000 columns / 6096 chunks): every distinct value compiles a new kernel
    # variant (seconds, inside a serving step), a long prefill passes through every length,
    # and the model-load warm-up (tiny budgets) must compile the variant serving uses.
    v_cap, c_cap = max(v_max, keep_first), max(s_max, c_forced + 1)
    log_v, log_c = max(10, _log_block(v_cap)), max(13, _log_block(c_cap))
    log_p = max(13, _log_block(v_cap + c_cap))
    _adaptive_rank_kernel[(H, B)](
        v_key, v_idx, c_key, c_idx, vertical, c_mass, c_flag, part, kv_len,
        v_ceiling.to(dev), s_ceiling.to(dev), cols, n_cols, diags, n_diags,
        kv_max, n_chunk, n_part, k_v, k_c, keep_first, keep_diag, c_forced, gamma,
        FORCED_KEY=FORCED, INVALID_IDX=INVALID, LOG_V=log_v, LOG_C=log_c,
        LOG_P=log_p, PB=64, SCAN=SCAN_CHUNKS, BLOCK_N=BLOCK_N,
        num_warps=8 if log_p >= 12 else 4)
    return cols, n_cols, diags, n_diags


def _union_sorted(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Union of two ``[B, H, *]`` index lists (descending, ``INVALID`` padding): one list of
    their combined width, descending without repeats, and its counts."""
    both = torch.cat([a, b], dim=-1).sort(dim=-1, descending=True).values
    repeat = torch.zeros_like(both, dtype=torch.bool)
    repeat[..., 1:] = both[..., 1:] == both[..., :-1]
    both = torch.where(repeat, torch.full_like(both, INVALID), both)
    both = both.sort(dim=-1, descending=True).values
    return both, (both != INVALID).sum(-1, dtype=torch.int32)


def union_selections(a: tuple, b: tuple) -> tuple[torch.Tensor, ...]:
    """The columns and diagonals of two selections together, as one selection.

    Adaptive mode with a fixed-budget floor: the fixed rule's lines (MInference's top-k, at a
    fraction of the profile budget) hold recall where the last-64-row estimate misjudges
    what other query blocks need; the adaptive lines add what the estimate is sure of.  The
    index builder merges overlapping diagonals, so a line in both costs once.  Eight torch
    ops, fixed shapes (the widths add up), no host sync.
    """
    cols, n_cols = _union_sorted(a[0], b[0])
    diags, n_diags = _union_sorted(a[2], b[2])
    return cols, n_cols, diags, n_diags
