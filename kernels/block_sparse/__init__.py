from .index import (block_sparse_scores, block_sparse_worklist, build_block_sparse_worklist,
                    extra_block_tiles)

__all__ = ["block_sparse_scores", "block_sparse_worklist", "build_block_sparse_worklist",
           "extra_block_tiles"]
