from .attention import fa3_varlen, hnd_cache_ok, page_list_attention
from .index import PageGeometry, group_rows

__all__ = ["PageGeometry", "fa3_varlen", "group_rows", "hnd_cache_ok", "page_list_attention"]
