"""Profiles: bundled files, both formats, every kind of broken file, selection order."""

import json

import pytest

from vllm_minference.kernels import A_SHAPE, BLOCK_SPARSE, VERTICAL_SLASH, HeadPattern
from vllm_minference.profiles import (HeadSpec, Profile, ProfileError, ProfileMetadata,
                                      bundled_dir, bundled_index, default_profile,
                                      load_profile, resolve_profile, save_profile)


SEARCHED = "qwen2.5-coder-0.5b-instruct-searched.json"  # made by `vllm-minference search`
RETRIEVAL = "qwen2.5-coder-0.5b-instruct-retrieval32.json"  # made by benchmarks/recall_study.py


def test_every_bundled_profile_loads_and_is_indexed():
    files = sorted(p.name for p in bundled_dir().glob("*.json")
                   if p.name not in ("INDEX.json", SEARCHED, RETRIEVAL))
    assert len(files) == 14  # MInference's
    for name in files:
        prof = load_profile(bundled_dir() / name)
        assert prof.num_layers >= 24 and prof.num_heads >= 28
        prof.check_fits(prof.num_layers, prof.num_heads)
    index = bundled_index()
    assert set(index.values()) <= set(files) | {RETRIEVAL}
    assert index["gradientai/Llama-3-8B-Instruct-262k"].startswith("Llama_3_8B")
    phi = load_profile(bundled_dir() / index["microsoft/Phi-3-mini-128k-instruct"])
    kinds = {h.pattern for layer in phi.layers for h in layer}
    assert kinds == {VERTICAL_SLASH, A_SHAPE}
    assert (bundled_dir() / "SOURCE.md").read_text().count("MIT") >= 1


def test_searched_profile_ships_and_is_chosen_only_explicitly():
    prof = load_profile(bundled_dir() / SEARCHED)
    prof.check_fits(24, 14)
    assert prof.metadata.model == "Qwen/Qwen2.5-Coder-0.5B-Instruct"
    assert prof.metadata.search["target_density"] == 0.1
    assert SEARCHED not in bundled_index().values()  # not auto-selected: accuracy not yet compared
    chosen, why = resolve_profile(SEARCHED, ["Qwen/Qwen2.5-Coder-0.5B-Instruct"], 24, 14)
    assert "explicitly chosen" in why and chosen.layers == prof.layers


def test_qwen_coder_gets_its_retrieval_heads_pinned_only_outside_fixed_mode():
    """The served Qwen2.5-Coder-0.5B (by hub name or a local folder of that name) gets the
    bundled profile whose 32 retrieval heads are pinned: in fixed mode exactly the default
    profile's lists, in antidiagonal mode those heads on MInference's fixed top-k."""
    from vllm_minference.config import MInferenceSettings
    from vllm_minference.kernels import LayerPatterns
    from vllm_minference.kernels.plan import PINNED
    for names in (["Qwen/Qwen2.5-Coder-0.5B-Instruct"], ["/tmp/kit/qwen2.5-coder-0.5b-instruct"]):
        chosen, why = resolve_profile(None, names, 24, 14)
        assert RETRIEVAL in why
    default = default_profile(24, 14)
    pinned = {"fixed": 0, "antidiagonal": 0}
    for layer in range(24):
        heads = chosen.layer_patterns(layer, list(range(14)))
        assert [(h.kind, h.a, h.b) for h in heads] == [
            (h.kind, h.a, h.b) for h in default.layer_patterns(layer, list(range(14)))]
        for mode in pinned:
            opts = MInferenceSettings(mode=mode).plan_options()
            lp = LayerPatterns.from_heads(heads, "cpu", **opts)
            pinned[mode] += len(lp.groups[PINNED]) if PINNED in lp.groups else 0
            assert sum(len(ids) for ids in lp.groups.values()) == 14
    assert pinned == {"fixed": 0, "antidiagonal": 32}


def test_profile_settings_are_checked_when_the_profile_loads(tmp_path):
    """``metadata.settings`` must be valid plugin settings that name their mode and leave
    the profile choice and diagnostics to the user; the bundled Qwen2.5-Coder profile's
    are its measured antidiagonal ones."""
    assert load_profile(bundled_dir() / RETRIEVAL).metadata.settings == {
        "mode": "antidiagonal", "antidiagonal_stride": 32, "tau": 0.98, "min_sparse_len": 32768}
    head = {"pattern": VERTICAL_SLASH, "a": 100, "b": 800}
    for settings, says in [({"tau": 0.9}, "'mode'"),
                           ({"mode": "antidiagonal", "tau": 2}, "tau"),
                           ({"mode": "fixed", "no_such": 1}, "no_such"),
                           ({"mode": "antidiagonal", "antidiagonal_stride": 24},
                            "antidiagonal_stride"),
                           ({"mode": "fixed", "profile": "x.json"}, "profile")]:
        path = tmp_path / "p.json"
        path.write_text(json.dumps({"format": "vllm-minference/profile-v1",
                                    "metadata": {"settings": settings}, "layers": [[head]]}))
        with pytest.raises(ProfileError, match=says) as err:
            load_profile(path)
        assert "p.json" in str(err.value)


def test_project_format_round_trip(tmp_path):
    prof = Profile(metadata=ProfileMetadata(model="m", search={"target_cost": 0.1}),
                   layers=[[HeadSpec(pattern=VERTICAL_SLASH, a=100, b=800, score=0.9),
                            HeadSpec(pattern=A_SHAPE, a=64, b=1024), HeadSpec(pattern="dense")],
                           [HeadSpec(pattern=BLOCK_SPARSE, a=50),
                            HeadSpec(pattern=VERTICAL_SLASH, a=1000, b=6096, fixed=True),
                            HeadSpec(pattern="dense")]])
    save_profile(prof, tmp_path / "p.json")
    again = load_profile(tmp_path / "p.json")
    assert again.layers == prof.layers
    assert again.layer_patterns(1, [1]) == [HeadPattern(VERTICAL_SLASH, 1000, 6096, fixed=True)]
    assert "fixed" not in json.dumps(json.loads((tmp_path / "p.json").read_text())["layers"][0])
    assert again.metadata.num_layers == 2 and again.metadata.num_heads == 3
    assert again.metadata.search == {"target_cost": 0.1}


def _write(tmp_path, data) -> str:
    path = tmp_path / "bad.json"
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return str(path)


GOOD = [{"0": ["vertical_and_slash", 1000, 6096, 1.0], "1": ["stream_llm", 100, 800, 0.5]}] * 2


@pytest.mark.parametrize("data,needle", [
    ("{not json", "not valid JSON"),
    ({"layers": []}, "unknown profile format"),
    ([{"0": ["vertical_and_slash", 1, 2, 3], "1": ["bogus", 1, 2, 3]}], "layer 0 head 1: unknown pattern 'bogus'"),
    ([{"0": ["vertical_and_slash", 1, 2, 3], "2": ["vertical_and_slash", 1, 2, 3]}], "layer 0: head 1 missing"),
    ([GOOD[0], {"0": ["vertical_and_slash", 1, 2, 3]}], "layer 1 has 1 heads, layer 0 has 2"),
    ([{"0": ["vertical_and_slash", -5, 2, 3]}], "layer 0 head 0: a:"),
    ([{"0": ["vertical_and_slash", 1]}], "layer 0 head 0: expected [pattern, a, b, score]"),
    ({"format": "vllm-minference/profile-v1", "metadata": {"num_layers": 3},
      "layers": [[{"pattern": "dense"}]]}, "metadata says 3 layers, the data has 1"),
    ({"format": "vllm-minference/profile-v1", "layers": [[{"pattern": "stream_llm", "a": 64,
      "b": 256, "fixed": True}]]}, "layer 0 head 0: Value error, 'fixed' applies to "
     "vertical_and_slash heads only, not stream_llm"),
])
def test_broken_files_name_file_and_place(tmp_path, data, needle):
    path = _write(tmp_path, data)
    with pytest.raises(ProfileError) as e:
        load_profile(path)
    assert path in str(e.value) and needle in str(e.value)


def test_fit_check_names_expected_and_found(tmp_path):
    prof = load_profile(_write(tmp_path, GOOD))
    with pytest.raises(ProfileError, match="has 2 layers, the model has 24"):
        prof.check_fits(24, 2)
    with pytest.raises(ProfileError, match="layer 0 has 2 query heads, the model has 14"):
        prof.check_fits(2, 14)


def test_layer_patterns_scale_floors_and_tp_subset():
    prof = Profile(layers=[[HeadSpec(pattern=VERTICAL_SLASH, a=1000, b=6096),
                            HeadSpec(pattern=A_SHAPE, a=128, b=3968),
                            HeadSpec(pattern=BLOCK_SPARSE, a=100),
                            HeadSpec(pattern=VERTICAL_SLASH, a=40, b=60)]])
    assert prof.layer_patterns(0, [0, 1, 2, 3]) == [
        HeadPattern(VERTICAL_SLASH, 1000, 6096), HeadPattern(A_SHAPE, 128, 3968),
        HeadPattern(BLOCK_SPARSE, 100), HeadPattern(VERTICAL_SLASH, 40, 60)]
    half = prof.layer_patterns(0, [2, 3], budget_scale=0.5)  # rank 1 of tp=2
    assert half == [HeadPattern(BLOCK_SPARSE, 50), HeadPattern(VERTICAL_SLASH, 30, 50)]
    assert prof.layer_patterns(0, [1], budget_scale=0.001) == [HeadPattern(A_SHAPE, 0, 64)]


def test_resolve_order(tmp_path):
    explicit = _write(tmp_path, GOOD)
    prof, why = resolve_profile(explicit, ["gradientai/Llama-3-8B-Instruct-262k"], 2, 2)
    assert prof.path == explicit and "explicitly chosen" in why
    prof, why = resolve_profile(None, ["/models/Llama-3-8B-Instruct-262k"], 32, 32)
    assert "Llama_3_8B" in why and "matches model gradientai/Llama-3-8B-Instruct-262k" in why
    prof, why = resolve_profile(None, ["my-org/unknown-model"], 3, 5)
    assert why.startswith("default profile") and prof.num_layers == 3 and prof.num_heads == 5
    assert prof.layers[2][4] == HeadSpec(pattern=VERTICAL_SLASH, a=1000, b=6096)
    bundled_name = bundled_index()["Qwen/Qwen2.5-7B-Instruct"]
    prof, why = resolve_profile(bundled_name, [], 28, 28)
    assert prof.num_layers == 28
    # an explicit or matched profile that does not fit stops start-up
    with pytest.raises(ProfileError, match="has 2 layers, the model has 24"):
        resolve_profile(explicit, [], 24, 2)
    with pytest.raises(ProfileError, match="the model has 24"):
        resolve_profile(None, ["Qwen/Qwen2.5-7B-Instruct"], 24, 14)
    with pytest.raises(ProfileError, match="cannot read"):
        resolve_profile(str(tmp_path / "missing.json"), [], 2, 2)


def test_default_profile():
    prof = default_profile(4, 3)
    assert prof.metadata.source == "default"
    assert {h.pattern for layer in prof.layers for h in layer} == {VERTICAL_SLASH}
