from .index import antidiagonal_worklist, worklist_tiles

__all__ = ["antidiagonal_worklist", "worklist_tiles"]
