"""Per-model head profiles: which sparse pattern and budget each (layer, query head) uses.

Two file formats load into one ``Profile``:

* MInference's: a JSON list with one object per layer mapping the query head index (as a
  string) to ``[pattern, a, b, score]`` — the 14 bundled profiles;
* this project's: ``{"format": "vllm-minference/profile-v1", "metadata": {...},
  "layers": [[{"pattern", "a", "b", "score"}, ...], ...]}``, which adds what the offline
  search knew (model, counts, search settings, provenance).

Patterns and their two numbers: ``vertical_and_slash`` (columns, diagonals),
``stream_llm`` (sink tokens, local window; the A-shape), ``block_sparse`` (top-k 64x64
blocks, unused), ``dense``.  In the project's format a ``vertical_and_slash`` head may add
``"fixed": true``: it keeps MInference's fixed top-k in the adaptive and antidiagonal modes
(a retrieval head among heads with cheaper per-block lists).  Its metadata may carry
``"settings"``: the plugin settings the profile was measured with (a mode whose lists it was
made for), which serving takes when the user does not choose a ``mode`` (see
``MInferenceSettings.with_profile_settings``).  Every problem is a
``ProfileError`` that names the file, the layer/head and the expected vs found value: a
profile never half-loads.
"""

from __future__ import annotations

import datetime
import json
from functools import lru_cache
from importlib import resources
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from vllm_minference.kernels import (A_SHAPE, BLOCK_SPARSE, DENSE, PATTERNS, VERTICAL_SLASH,
                                     HeadPattern)
from vllm_minference.kernels.plan import MIN_SLASH, MIN_VERTICAL

from .config import MInferenceSettings

FORMAT = "vllm-minference/profile-v1"
DEFAULT_BUDGET = (1000, 6096)
BUNDLED_PACKAGE = "vllm_minference.pattern_profiles"


class ProfileError(ValueError):
    """A profile that does not parse or does not fit the model."""


class HeadSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    pattern: str
    a: int = Field(0, ge=0)
    b: int = Field(0, ge=0)
    score: float | None = None
    fixed: bool | None = None  # a Vertical-Slash head pinned to fixed top-k in every mode

    @model_validator(mode="after")
    def _fixed_is_vertical_slash(self) -> "HeadSpec":
        if self.fixed and self.pattern != VERTICAL_SLASH:
            raise ValueError(f"'fixed' applies to {VERTICAL_SLASH} heads only, not {self.pattern}")
        return self


class ProfileMetadata(BaseModel):
    model_config = ConfigDict(extra="allow")

    model: str | None = None
    num_layers: int | None = None
    num_heads: int | None = None
    source: str | None = None
    search: dict | None = None
    created: str | None = None
    tool_version: str | None = None
    # plugin settings this profile was measured with; serving uses them unless the user
    # chooses a mode (keys and values of MInferenceSettings, checked when the profile loads)
    settings: dict | None = None


class Profile(BaseModel):
    metadata: ProfileMetadata = ProfileMetadata()
    layers: list[list[HeadSpec]]
    path: str | None = Field(None, exclude=True)  # where it was read from, for messages

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    @property
    def num_heads(self) -> int:
        return len(self.layers[0]) if self.layers else 0

    def check_fits(self, num_layers: int, num_heads: int) -> None:
        """Raise unless the profile has exactly the model's layers and query heads."""
        where = self.path or "profile"
        if self.num_layers != num_layers:
            raise ProfileError(f"{where}: has {self.num_layers} layers, the model has {num_layers}")
        for i, layer in enumerate(self.layers):
            if len(layer) != num_heads:
                raise ProfileError(f"{where}: layer {i} has {len(layer)} query heads, "
                                   f"the model has {num_heads}")

    def layer_patterns(self, layer: int, head_ids: list[int], budget_scale: float = 1.0
                       ) -> list[HeadPattern]:
        """Kernel patterns of the given global query heads of ``layer``, budgets scaled."""
        out = []
        for h in head_ids:
            spec = self.layers[layer][h]
            a, b = spec.a * budget_scale, spec.b * budget_scale
            if spec.pattern == VERTICAL_SLASH:
                out.append(HeadPattern(VERTICAL_SLASH, max(MIN_VERTICAL, round(a)),
                                       max(MIN_SLASH, round(b)), fixed=bool(spec.fixed)))
            elif spec.pattern == A_SHAPE:
                out.append(HeadPattern(A_SHAPE, max(0, round(a)), max(64, round(b))))
            elif spec.pattern == BLOCK_SPARSE:
                out.append(HeadPattern(BLOCK_SPARSE, max(1, round(a))))
            else:
                out.append(HeadPattern(DENSE))
        return out


def _fail(path, msg: str) -> ProfileError:
    return ProfileError(f"{path}: {msg}")


def _parse_minference(data: list, path) -> list[list[HeadSpec]]:
    layers = []
    for i, layer in enumerate(data):
        if not isinstance(layer, dict):
            raise _fail(path, f"layer {i}: expected an object of heads, found {type(layer).__name__}")
        heads = []
        for h in range(len(layer)):
            entry = layer.get(str(h))
            if entry is None:
                raise _fail(path, f"layer {i}: head {h} missing (heads must be 0..{len(layer) - 1}, "
                            f"found keys {sorted(layer)[:8]})")
            if not isinstance(entry, list) or len(entry) not in (3, 4):
                raise _fail(path, f"layer {i} head {h}: expected [pattern, a, b, score], found {entry!r}")
            heads.append(_head(path, i, h, dict(pattern=entry[0], a=entry[1], b=entry[2],
                                                score=entry[3] if len(entry) == 4 else None)))
        layers.append(heads)
    return layers


def _head(path, layer: int, head: int, fields: dict) -> HeadSpec:
    if fields.get("pattern") not in PATTERNS:
        raise _fail(path, f"layer {layer} head {head}: unknown pattern {fields.get('pattern')!r} "
                    f"(expected one of {', '.join(PATTERNS)})")
    try:
        return HeadSpec(**fields)
    except ValidationError as e:
        err = e.errors()[0]
        field = "".join(f"{x}: " for x in err["loc"])  # none for a check across fields
        raise _fail(path, f"layer {layer} head {head}: {field}{err['msg']} "
                    f"(found {err.get('input')!r})") from None


def load_profile(path: str | Path) -> Profile:
    """Read a profile in either format; raises ``ProfileError`` on any problem."""
    path = str(path)
    try:
        with open(path) as f:
            data = json.load(f)
    except OSError as e:
        raise _fail(path, f"cannot read: {e.strerror}") from None
    except json.JSONDecodeError as e:
        raise _fail(path, f"not valid JSON: {e.msg} at line {e.lineno}") from None
    if isinstance(data, list):
        layers, meta = _parse_minference(data, path), ProfileMetadata(source="MInference")
    elif isinstance(data, dict) and data.get("format") == FORMAT:
        raw_layers = data.get("layers")
        if not isinstance(raw_layers, list):
            raise _fail(path, "'layers' must be a list of layers")
        layers = []
        for i, layer in enumerate(raw_layers):
            if not isinstance(layer, list):
                raise _fail(path, f"layer {i}: expected a list of heads")
            layers.append([_head(path, i, h, e if isinstance(e, dict) else {"pattern": e})
                           for h, e in enumerate(layer)])
        try:
            meta = ProfileMetadata(**data.get("metadata", {}))
        except (ValidationError, TypeError) as e:
            raise _fail(path, f"bad metadata: {e}") from None
        _check_settings(path, meta.settings)
    else:
        raise _fail(path, f"unknown profile format (expected a list of layers or "
                    f"{{'format': '{FORMAT}', ...}})")
    if not layers or not layers[0]:
        raise _fail(path, "no layers or no heads")
    for i, layer in enumerate(layers):
        if len(layer) != len(layers[0]):
            raise _fail(path, f"layer {i} has {len(layer)} heads, layer 0 has {len(layers[0])}")
    if meta.num_layers is not None and meta.num_layers != len(layers):
        raise _fail(path, f"metadata says {meta.num_layers} layers, the data has {len(layers)}")
    if meta.num_heads is not None and meta.num_heads != len(layers[0]):
        raise _fail(path, f"metadata says {meta.num_heads} heads, the data has {len(layers[0])}")
    return Profile(metadata=meta, layers=layers, path=path)


# what a profile may not set for its user: which profile, and diagnostics
_NOT_PROFILE_SETTINGS = ("profile", "trace")


def _check_settings(path, settings: dict | None) -> None:
    """A profile's ``settings`` must be valid plugin settings, including a mode (they apply
    only when the user chooses none) and nothing about the profile itself."""
    if settings is None:
        return
    if "mode" not in settings:
        raise _fail(path, "metadata.settings must name the 'mode' they were measured in")
    bad = [k for k in settings if k in _NOT_PROFILE_SETTINGS]
    if bad:
        raise _fail(path, f"metadata.settings may not set {', '.join(bad)}")
    try:
        MInferenceSettings.from_sources({"minference": settings}, environ={})
    except ValueError as e:
        raise _fail(path, f"metadata.settings: {e}") from None


def save_profile(profile: Profile, path: str | Path) -> None:
    """Write ``profile`` in the project's format (counts filled in)."""
    meta = profile.metadata.model_copy(update=dict(num_layers=profile.num_layers,
                                                   num_heads=profile.num_heads))
    data = {"format": FORMAT, "metadata": meta.model_dump(exclude_none=True),
            "layers": [[h.model_dump(exclude_none=True) for h in layer]
                       for layer in profile.layers]}
    Path(path).write_text(json.dumps(data, indent=1))


def default_profile(num_layers: int, num_heads: int) -> Profile:
    """Every head Vertical-Slash with MInference's default budget."""
    head = HeadSpec(pattern=VERTICAL_SLASH, a=DEFAULT_BUDGET[0], b=DEFAULT_BUDGET[1])
    return Profile(metadata=ProfileMetadata(source="default", num_layers=num_layers,
                                            num_heads=num_heads,
                                            created=datetime.date.today().isoformat()),
                   layers=[[head] * num_heads for _ in range(num_layers)])


def bundled_dir() -> Path:
    return Path(str(resources.files(BUNDLED_PACKAGE)))


def bundled_index() -> dict[str, str]:
    return dict(_read_index())


@lru_cache(maxsize=1)
def _read_index() -> dict[str, str]:
    """INDEX.json, read once: it ships with the package, and the settings and the profile
    of every layer look a model up in it at start-up."""
    with open(bundled_dir() / "INDEX.json") as f:
        return json.load(f)["models"]


def _match_bundled(model_names: list[str]) -> tuple[str, str] | None:
    """(model key, file) of the bundled profile for the first name that matches."""
    index = bundled_index()
    by_base = {k.rsplit("/", 1)[-1].lower(): k for k in index}
    for name in model_names:
        if name in index:
            return name, index[name]
    for name in model_names:
        key = by_base.get(str(name).rstrip("/").rsplit("/", 1)[-1].lower())
        if key is not None:
            return key, index[key]
    return None


def locate_profile(name: str | Path) -> Path:
    """A profile file: ``name`` as a path if it exists, else the bundled profile of that name
    if there is one, else ``name`` as given (loading it then names the missing file)."""
    path = Path(name)
    if not path.exists() and (bundled_dir() / name).exists():
        return bundled_dir() / name
    return path


def _chosen_file(explicit: str | None, model_names: list[str]) -> tuple[Path, str] | None:
    """The profile file to read (the explicit one, else a bundled match) and why, or None
    for the built-in default profile."""
    if explicit:
        path = locate_profile(explicit)
        return path, f"profile {path} (explicitly chosen)"
    match = _match_bundled(model_names)
    if match is None:
        return None
    key, file = match
    return bundled_dir() / file, f"bundled profile {file} (matches model {key})"


def profile_file(explicit: str | None, model_names: list[str]) -> Path | None:
    """The file ``resolve_profile`` reads, or None for the built-in default profile."""
    chosen = _chosen_file(explicit, model_names)
    return chosen[0] if chosen is not None else None


def resolve_profile(explicit: str | None, model_names: list[str], num_layers: int,
                    num_heads: int) -> tuple[Profile, str]:
    """Pick the profile: explicit choice, then a bundled match, then the default.

    Returns the profile and one line saying which was chosen and why.  An explicit or
    matched profile that does not fit the model raises (never a silent fallback).
    """
    chosen = _chosen_file(explicit, model_names)
    if chosen is not None:
        path, why = chosen
        profile = load_profile(path)
        profile.check_fits(num_layers, num_heads)
        return profile, why
    return (default_profile(num_layers, num_heads),
            f"default profile: every head Vertical-Slash {DEFAULT_BUDGET[0]}/{DEFAULT_BUDGET[1]}"
            f" (no profile given and none bundled for {', '.join(model_names) or 'this model'})")
