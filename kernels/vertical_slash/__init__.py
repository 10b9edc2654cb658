from .estimate import estimate_vertical_slash, select_vertical_slash
from .index import build_vertical_slash_worklist, merge_diagonals
from .row_stats import estimate_row_lse

__all__ = ["estimate_vertical_slash", "select_vertical_slash", "build_vertical_slash_worklist",
           "merge_diagonals", "estimate_row_lse"]
