"""Test setup: without a GPU, Triton kernels run under the interpreter (TRITON_INTERPRET=1).

This must happen before anything imports Triton kernels, hence here, at collection time.
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
if os.environ.get("TRITON_INTERPRET") == "1":
    # exact NumPy paths for the interpreter's slowest reductions (see the module)
    from interpreter_fast_paths import install as _install_fast_paths

    _install_fast_paths()
if os.environ.get("PYTEST_XDIST_WORKER"):
    # one pytest-xdist worker per core: torch's own threads would oversubscribe them
    torch.set_num_threads(1)

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def kernel_dtypes() -> list[torch.dtype]:
    """fp16/fp32 under the interpreter (its bf16 tl.dot is wrong, triton#11584); bf16 on GPU."""
    if torch.cuda.is_available():
        return [torch.float16, torch.bfloat16]
    return [torch.float16, torch.float32]
