"""Compile recorded kernel launches for Hopper (sm_90) without a GPU.

Run by ``test_compile_variants.test_every_launched_kernel_compiles_for_hopper`` in a process
without ``TRITON_INTERPRET`` (so the kernels are real ``JITFunction``s): each entry of the
JSON file names a kernel, its Triton signature, constexpr values and launch options, and is
compiled down to a cubin with Triton's own ptxas.  Prints one line per failure and
``compiled N of M``; exits 1 if any failed.
"""

import importlib
import json
import sys

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

HOPPER = GPUTarget("cuda", 90, 32)


def main(path: str) -> int:
    todo = json.load(open(path))
    ok = 0
    for t in todo:
        fn = getattr(importlib.import_module(t["module"]), t["kernel"])
        try:
            triton.compile(ASTSource(fn=fn, signature=t["signature"], constexprs=t["constexprs"]),
                           target=HOPPER, options=t["options"])
            ok += 1
        except Exception as e:  # report every failure, not just the first
            print(f"FAILED {t['module']}.{t['kernel']} {t['constexprs']}: "
                  f"{type(e).__name__}: {str(e)[:1500]}")
    print(f"compiled {ok} of {len(todo)}")
    return 0 if ok == len(todo) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
