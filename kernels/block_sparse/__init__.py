from .index import block_sparse_scores, build_block_sparse_worklist

__all__ = ["block_sparse_scores", "build_block_sparse_worklist"]
