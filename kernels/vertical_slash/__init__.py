from .estimate import estimate_vertical_slash, select_vertical_slash
from .index import build_vertical_slash_worklist, merge_diagonals

__all__ = ["estimate_vertical_slash", "select_vertical_slash", "build_vertical_slash_worklist",
           "merge_diagonals"]
