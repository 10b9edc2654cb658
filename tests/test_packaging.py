"""Packaging: every kernels/ sub-package is listed (setuptools takes the list as given)."""

import pathlib
import tomllib

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_every_kernel_subpackage_is_packaged():
    packages = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
                   ["packages"])
    found = {"vllm_minference.kernels." + p.parent.name
             for p in (ROOT / "kernels").glob("*/__init__.py")}
    assert found and found <= packages, f"not packaged: {sorted(found - packages)}"
