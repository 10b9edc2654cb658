"""NumPy fast paths for two reductions the Triton interpreter runs element by element.

Why: under ``TRITON_INTERPRET=1`` a ``tl.reduce`` / ``tl.associative_scan`` whose combine
function the interpreter does not know (it knows sum, min, max, argmin, argmax) falls back
to ``generic_reduce`` / ``generic_scan``: one Python call of the combine function per
element, through the whole ``tl`` semantic layer.  ``tl.topk`` and ``tl.sort`` swap pairs
with ``xor_sum`` (``tl.standard._xor_combine``), and the Vertical-Slash index builder takes a
running maximum with its own ``_max_combine``; profiled on this CI's CPU, the extra tiles'
``tl.topk`` took 250 of one test's 318 seconds.  Both operations are exact on integers
(xor and max are associative and commutative, no rounding), so NumPy's
``bitwise_xor.reduce`` and ``maximum.accumulate`` give the same bits as the interpreter's
own loop; ``tests/test_interpreter_fast_paths.py`` checks that against the interpreter's
generic code on random inputs.  Everything else (floats, other combine functions) keeps the
interpreter's path.  Test-only: the GPU compiles the kernels as written.
"""

from __future__ import annotations

import numpy as np


def _is_int(t) -> bool:
    return np.issubdtype(t.handle.data.dtype, np.integer)


def _is_max_combine(fn) -> bool:
    """The Vertical-Slash index builder's ``_max_combine`` (compared by where it is
    defined: importing the kernels here would import them before the test session's
    settings are in place)."""
    inner = getattr(fn, "fn", fn)
    return (getattr(inner, "__name__", "") == "_max_combine"
            and getattr(inner, "__module__", "").endswith("kernels.vertical_slash.index"))


def install() -> None:
    """Patch ``ReduceOps`` / ``ScanOps`` of Triton's interpreter (idempotent: the
    interpreter's own code, kept as ``generic_apply_impl``, marks it done)."""
    import triton.language as tl
    from triton.runtime import interpreter
    if hasattr(interpreter.ReduceOps, "generic_apply_impl"):
        return

    reduce_impl = interpreter.ReduceOps.apply_impl
    scan_impl = interpreter.ScanOps.apply_impl

    def reduce_apply_impl(self, input):
        if (self.combine_fn == tl.standard._xor_combine and len(input) == 1
                and _is_int(input[0])):
            x = input[0]
            out = np.bitwise_xor.reduce(x.handle.data, axis=self.axis, keepdims=self.keep_dims)
            return self.to_tensor(out, x.dtype)
        return reduce_impl(self, input)

    def scan_apply_impl(self, input):
        if _is_max_combine(self.combine_fn) and len(input) == 1 and _is_int(input[0]):
            data = input[0].handle.data
            if self.reverse:
                data = np.flip(data, axis=self.axis)
            out = np.maximum.accumulate(data, axis=self.axis)
            if self.reverse:
                out = np.flip(out, axis=self.axis)
            return [self.to_tensor(np.ascontiguousarray(out), input[0].dtype)]
        return scan_impl(self, input)

    interpreter.ReduceOps.apply_impl = reduce_apply_impl
    interpreter.ScanOps.apply_impl = scan_apply_impl
    interpreter.ReduceOps.generic_apply_impl = reduce_impl  # for the equivalence test
    interpreter.ScanOps.generic_apply_impl = scan_impl
