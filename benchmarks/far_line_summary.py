"""Far-line recall of each rule of a recall study, weighted by each head's far-line mass, and
what pinning the heads of most far-line mass would make of it.

    python benchmarks/far_line_summary.py STUDY.json [STUDY2.json ...] --mass MASS.json \
        [--pin 16 32 64]

``STUDY.json``: ``recall_study.py --prompt variable_tracking`` output (per layer and rule, each
head's far-line recall: the share of the chain lines' far-line attention its lists keep).
``MASS.json``: a study run over every layer (its ``far_line_mass``: how much of the chain
lines' attention each head pays to far lines).  A head that reads far lines more weighs more.

Pinning replaces the chosen heads' recall by that of the pinned rule: ``fixed 1000/6096``
(what a profile's ``"fixed": true`` gives those heads) or 1.0 (dense).  Heads are ranked by
``MASS.json`` over all layers, as ``recall_study.py --retrieval-profile`` ranks them, so
the numbers describe the profiles that lanes run; only the study's sampled layers count.
"""

from __future__ import annotations

import argparse
import json

FIXED = "fixed 1000/6096"


def rank_heads(mass: dict[int, list[float]]) -> list[tuple[int, int]]:
    """(layer, head) pairs, most far-line mass first: the order in which
    ``recall_study.py --retrieval-profile`` takes its heads, so that both name the same set."""
    ranked = sorted(((m, li, h) for li, ms in mass.items() for h, m in enumerate(ms)),
                    reverse=True)
    return [(li, h) for _, li, h in ranked]


def top_heads(mass: dict[int, list[float]], n: int) -> set[tuple[int, int]]:
    """The ``n`` (layer, head) pairs of most far-line mass."""
    return set(rank_heads(mass)[:n])


def weighted_recall(layers: dict[int, dict], mass: dict[int, list[float]], rule: str,
                    pinned: set[tuple[int, int]] = frozenset(),
                    pinned_as: str | None = FIXED) -> float:
    """Mass-weighted far-line recall of ``rule`` over the study's layers, the ``pinned``
    heads taking ``pinned_as``'s recall (None: dense, recall 1)."""
    num = den = 0.0
    for li, rules in layers.items():
        for h, r in enumerate(rules[rule]["far_line_recall"]):
            if (li, h) in pinned:
                r = 1.0 if pinned_as is None else rules[pinned_as]["far_line_recall"][h]
            num += mass[li][h] * r
            den += mass[li][h]
    return num / den


def mass_of(study: dict) -> dict[int, list[float]]:
    """A study JSON's far-line mass per head, by integer layer."""
    return {int(li): m for li, m in study["far_line_mass"].items()}


def load_mass(path: str) -> dict[int, list[float]]:
    with open(path) as f:
        return mass_of(json.load(f))


def summary(study: dict, mass: dict[int, list[float]], pins: list[int]) -> list[dict]:
    """One row per rule: mass-weighted far-line recall alone and with each pin count."""
    layers = {int(li): rules for li, rules in study["layers"].items()}
    tops = {n: top_heads(mass, n) for n in pins}
    rows = []
    for rule in next(iter(layers.values())):
        row = {"rule": rule, "recall": weighted_recall(layers, mass, rule)}
        for n, top in tops.items():
            row[f"{n} pinned"] = weighted_recall(layers, mass, rule, top, FIXED)
            row[f"{n} dense"] = weighted_recall(layers, mass, rule, top, None)
        rows.append(row)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("studies", nargs="+")
    ap.add_argument("--mass", required=True)
    ap.add_argument("--pin", type=int, nargs="*", default=[16, 32, 64])
    args = ap.parse_args()
    mass = load_mass(args.mass)
    for path in args.studies:
        with open(path) as f:
            rows = summary(json.load(f), mass, args.pin)
        cols = list(rows[0])
        print(f"\n{path}\n\n| " + " | ".join(cols) + " |\n|" + "---|" * len(cols))
        for r in rows:
            print("| " + " | ".join(f"{v:.3f}" if isinstance(v, float) else v
                                    for v in r.values()) + " |")


if __name__ == "__main__":
    main()
