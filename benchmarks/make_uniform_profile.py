"""A profile giving every head of a model one Vertical-Slash budget.

    python benchmarks/make_uniform_profile.py LAYERS HEADS COLUMNS DIAGONALS OUT.json

For accuracy experiments on which part of the budget matters (columns or diagonals): pass
the file to the plugin with ``--set profile=OUT.json``.
"""

import sys

from vllm_minference.profiles import default_profile, save_profile


def main() -> None:
    layers, heads, columns, diagonals = (int(x) for x in sys.argv[1:5])
    profile = default_profile(layers, heads)
    profile = profile.model_copy(update={"layers": [
        [h.model_copy(update={"a": columns, "b": diagonals}) for h in layer]
        for layer in profile.layers]})
    save_profile(profile, sys.argv[5])


if __name__ == "__main__":
    main()
