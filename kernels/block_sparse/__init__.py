from .index import block_sparse_scores, build_block_sparse_worklist, extra_block_tiles

__all__ = ["block_sparse_scores", "build_block_sparse_worklist", "extra_block_tiles"]
