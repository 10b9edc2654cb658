"""Plugin settings from vLLM's additional_config and MINFERENCE_* variables."""

import pytest

from vllm_minference.config import MInferenceSettings


def test_defaults():
    s = MInferenceSettings.from_sources(None, environ={})
    assert s.profile is None and s.min_sparse_len == 65536 and s.budget_scale == 1.0


def test_cli_strings_are_coerced_and_override_env():
    env = {"MINFERENCE_MIN_SPARSE_LEN": "8192", "MINFERENCE_PROFILE": "/env.json",
           "MINFERENCE_BUDGET_SCALE": "0.5"}
    s = MInferenceSettings.from_sources({"minference": {"min_sparse_len": "4096",
                                                        "max_density": "0.7"}}, environ=env)
    assert s.min_sparse_len == 4096 and s.max_density == 0.7
    assert s.profile == "/env.json" and s.budget_scale == 0.5


@pytest.mark.parametrize("section,needle", [
    ({"min_sparse_len": "lots"}, "min_sparse_len"),
    ({"min_sparse_len": 10}, "min_sparse_len"),
    ({"budget_scale": 0}, "budget_scale"),
    ({"max_density": 1.5}, "max_density"),
    ({"unknown_key": 1}, "unknown_key"),
    ({"dense_tail": -1}, "dense_tail"),
    ({"dense_tail": "last"}, "dense_tail"),
])
def test_bad_values_are_named(section, needle):
    with pytest.raises(ValueError, match=needle):
        MInferenceSettings.from_sources({"minference": section}, environ={})


def test_bad_env_value_is_named():
    with pytest.raises(ValueError, match="budget_scale"):
        MInferenceSettings.from_sources({}, environ={"MINFERENCE_BUDGET_SCALE": "-1"})


def test_mode_and_gamma():
    s = MInferenceSettings.from_sources({}, environ={})
    assert s.mode == "fixed"  # MInference's budgets, sinks and local band
    assert s.plan_options() == {"gamma": None, "keep_first": 30, "keep_diag": 100,
                                "extra_blocks": 32}
    s = MInferenceSettings.from_sources({"minference": {"mode": "adaptive"}}, environ={})
    assert s.plan_options() == {"gamma": 0.95, "keep_first": 30, "keep_diag": 100,
                                "floor_scale": 0.0, "extra_blocks": 0}
    s = MInferenceSettings.from_sources({"minference": {"gamma": "0.9", "adaptive_local": "1024"}},
                                        environ={"MINFERENCE_MODE": "adaptive",
                                                 "MINFERENCE_ADAPTIVE_FLOOR": "0.25"})
    assert s.plan_options() == {"gamma": 0.9, "keep_first": 30, "keep_diag": 1024,
                                "floor_scale": 0.25, "extra_blocks": 0}
    s = MInferenceSettings.from_sources({"minference": {"fixed_local": "4096"}},
                                        environ={"MINFERENCE_FIXED_SINKS": "64",
                                                 "MINFERENCE_EXTRA_BLOCKS": "8"})
    assert s.plan_options() == {"gamma": None, "keep_first": 64, "keep_diag": 4096,
                                "extra_blocks": 8}
    with pytest.raises(ValueError, match="extra_blocks"):
        MInferenceSettings.from_sources({"minference": {"extra_blocks": -1}}, environ={})
    with pytest.raises(ValueError, match="fixed_local"):
        MInferenceSettings.from_sources({"minference": {"fixed_local": 0}}, environ={})
    with pytest.raises(ValueError, match="adaptive_floor"):
        MInferenceSettings.from_sources({"minference": {"adaptive_floor": 1.5}}, environ={})
    with pytest.raises(ValueError, match="gamma"):
        MInferenceSettings.from_sources({}, environ={"MINFERENCE_GAMMA": "1.2"})
    with pytest.raises(ValueError, match="mode"):
        MInferenceSettings.from_sources({"minference": {"mode": "fast"}}, environ={})
    with pytest.raises(ValueError, match="adaptive_local"):
        MInferenceSettings.from_sources({"minference": {"adaptive_local": 0}}, environ={})


def test_antidiagonal_mode():
    from vllm_minference.kernels import AntidiagonalRule
    s = MInferenceSettings.from_sources({"minference": {"mode": "antidiagonal"}}, environ={})
    assert s.plan_options() == {"antidiagonal": AntidiagonalRule(0.98, 8, 1, 1, 2048),
                                "extra_blocks": 0}
    s = MInferenceSettings.from_sources(
        {"minference": {"mode": "antidiagonal", "tau": "0.95", "antidiagonal_stride": "16"}},
        environ={"MINFERENCE_ANTIDIAGONAL_LOCAL": "4", "MINFERENCE_ANTIDIAGONAL_MAX_TILES": "99"})
    assert s.plan_options()["antidiagonal"] == AntidiagonalRule(0.95, 16, 1, 4, 99)
    s = MInferenceSettings.from_sources({"minference": {"mode": "antidiagonal",
                                                        "extra_blocks": "8"}}, environ={})
    assert s.plan_options()["extra_blocks"] == 8  # set explicitly: honoured
    s = MInferenceSettings.from_sources(
        {"minference": {"mode": "antidiagonal"}},
        environ={"MINFERENCE_ANTIDIAGONAL_LAUNCH": "ir128k64w8n3"})
    assert s.plan_options()["antidiagonal"].launch == "ir128k64w8n3"
    s = MInferenceSettings.from_sources(
        {"minference": {"mode": "antidiagonal", "antidiagonal_launch": "fast"}}, environ={})
    with pytest.raises(ValueError, match="launch option"):  # refused when the plan is made
        s.plan_options()
    from vllm_minference.config import ANTIDIAGONAL_STRIDES
    from vllm_minference.kernels.antidiagonal.index import STRIDES
    assert ANTIDIAGONAL_STRIDES == STRIDES  # the settings check what the kernel supports
    for stride in STRIDES:
        s = MInferenceSettings.from_sources(
            {"minference": {"mode": "antidiagonal", "antidiagonal_stride": stride}}, environ={})
        assert s.plan_options()["antidiagonal"].stride == stride
    for bad in ({"antidiagonal_stride": 5}, {"antidiagonal_stride": 128}, {"tau": 0},
                {"tau": 1.5},
                {"antidiagonal_max_tiles": 2}, {"antidiagonal_local": -1},
                {"antidiagonal_columns": -1}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            MInferenceSettings.from_sources({"minference": bad}, environ={})
    s = MInferenceSettings.from_sources(
        {"minference": {"mode": "antidiagonal"}}, environ={"MINFERENCE_ANTIDIAGONAL_COLUMNS": "1000"})
    assert s.plan_options()["antidiagonal"].columns == 1000
    assert MInferenceSettings().antidiagonal_columns == 0  # off until measured
    s = MInferenceSettings.from_sources(
        {"minference": {"mode": "antidiagonal", "antidiagonal_shared": "true"}}, environ={})
    assert s.plan_options()["antidiagonal"].fa3_groups


def test_every_setting_is_documented_in_the_readme():
    from pathlib import Path

    from vllm_minference.config import MInferenceSettings
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    missing = [name for name in MInferenceSettings.model_fields if f"`{name}`" not in readme]
    assert not missing, f"settings missing from README: {missing}"


def test_profile_settings_complete_only_settings_without_a_mode():
    """A profile's measured settings apply as one bundle where the user set no mode (their
    own values still win); a chosen mode keeps the plugin defaults for the rest."""
    measured = {"mode": "antidiagonal", "tau": 0.9, "min_sparse_len": 32768}
    user = MInferenceSettings.from_sources({"minference": {"tau": "0.99"}}, environ={})
    got = user.with_profile_settings(measured)
    assert (got.mode, got.tau, got.min_sparse_len) == ("antidiagonal", 0.99, 32768)
    assert user.with_profile_settings(None) is user
    chose = MInferenceSettings.from_sources({}, environ={"MINFERENCE_MODE": "fixed"})
    assert chose.with_profile_settings(measured) is chose
    assert (chose.mode, chose.min_sparse_len) == ("fixed", 65536)
