"""vllm-minference: MInference-style sparse prefill as a vLLM V1 attention backend."""

import os as _os

__version__ = "0.1.0"

# kernels/ and pattern_profiles/ sit at the top of the repository and install as
# vllm_minference.kernels / vllm_minference.pattern_profiles.  When this package is
# imported straight from a source checkout (its folder first on sys.path, e.g. a command
# started in the repository root), let those two resolve from the checkout as well.
_root = _os.path.dirname(_os.path.dirname(_os.path.abspath(__file__)))
if not _os.path.isdir(_os.path.join(_os.path.dirname(__file__), "kernels")) and _os.path.isfile(
        _os.path.join(_root, "kernels", "__init__.py")):
    __path__.append(_root)  # type: ignore[name-defined]
