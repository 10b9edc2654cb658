"""Sparse prefill kernels (installed as ``vllm_minference.kernels``).

Plan/run split: the builders turn per-head patterns and the online estimate into a
:class:`WorkList`; :func:`sparse_attention` runs any work list.  Only torch and Triton are
needed here (no vLLM), so the kernels can be tested and benchmarked on their own.
"""

from .a_shape import build_a_shape_worklist
from .attention import sparse_attention
from .block_sparse import block_sparse_scores, build_block_sparse_worklist
from .layout import BLOCK_M, BLOCK_N, KVSource, SeqLayout
from .plan import (A_SHAPE, BLOCK_SPARSE, DENSE, PATTERNS, VERTICAL_SLASH, AntidiagonalRule,
                   HeadPattern, LayerPatterns, plan_layer)
from .vertical_slash import (build_vertical_slash_worklist, estimate_vertical_slash,
                             select_vertical_slash)
from .worklist import WorkList, apply_density_guard, dense_worklist, merge_worklists

__all__ = [
    "A_SHAPE", "AntidiagonalRule", "BLOCK_M", "BLOCK_N", "BLOCK_SPARSE", "DENSE", "PATTERNS", "VERTICAL_SLASH",
    "HeadPattern", "KVSource", "LayerPatterns", "SeqLayout", "WorkList",
    "apply_density_guard", "block_sparse_scores", "build_a_shape_worklist",
    "build_block_sparse_worklist", "build_vertical_slash_worklist", "dense_worklist",
    "estimate_vertical_slash", "merge_worklists", "plan_layer", "select_vertical_slash",
    "sparse_attention",
]
