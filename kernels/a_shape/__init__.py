from .index import build_a_shape_worklist

__all__ = ["build_a_shape_worklist"]
