from .index import antidiagonal_tiles, antidiagonal_worklist

__all__ = ["antidiagonal_tiles", "antidiagonal_worklist"]
