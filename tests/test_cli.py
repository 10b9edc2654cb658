"""The command line: quickstart's serve command and the CPU demo."""

import json

import pytest

from vllm_fixtures import ENGINE_ARGS_ON_CPU, run_python
from vllm_minference import cli


def test_quickstart_serves_the_default_model_long_enough_to_be_sparse(monkeypatch, capsys):
    """At its native 32K the default model never reaches min_sparse_len (64K): quickstart
    serves it at 128K with YaRN x4 in 64K chunks; the user's arguments come last."""
    import torch
    ran = {}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(cli.os, "execvp", lambda f, cmd: ran.setdefault("cmd", cmd))
    cli.main(["quickstart", "--port", "8001"])
    cmd = ran["cmd"]
    import shlex
    assert shlex.split(capsys.readouterr().out.split("+ ", 1)[1]) == cmd  # printed runnable
    assert cmd[:6] == ["vllm", "serve", cli.DEFAULT_MODEL, "--attention-backend", "minference",
                       "--max-model-len"]
    assert int(cmd[6]) >= 2 * 65536  # past the default min_sparse_len
    rope = json.loads(cmd[cmd.index("--hf-overrides") + 1])
    assert rope["rope_parameters"]["rope_type"] == "yarn"
    assert rope["rope_parameters"]["factor"] * 32768 == int(cmd[6])
    assert rope["max_position_embeddings"] == int(cmd[6])
    assert cmd[cmd.index("--max-num-batched-tokens") + 1] == "65536"
    assert cmd[-2:] == ["--port", "8001"]


def test_quickstart_leaves_other_models_as_they_are(monkeypatch):
    import torch
    ran = {}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(cli.os, "execvp", lambda f, cmd: ran.setdefault("cmd", cmd))
    cli.main(["quickstart", "org/other-model", "--max-model-len", "65536"])
    assert ran["cmd"] == ["vllm", "serve", "org/other-model", "--attention-backend",
                          "minference", "--max-model-len", "65536"]


@pytest.mark.parametrize("seq_len", [512])
def test_cpu_demo_is_sparse_and_close_to_dense(seq_len):
    r = cli.demo(seq_len)
    assert r["seq_len"] == seq_len and 0 < r["density"] < 1
    assert r["relative_error"] < 0.2  # sparse, so not exact; a broken kernel is far off


def test_quickstart_without_a_gpu_runs_the_cpu_demo(monkeypatch, capsys):
    import torch
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(cli.os, "execvp", lambda *a: pytest.fail("must not serve"))
    monkeypatch.setattr(cli, "demo", lambda seq_len=2048: dict(
        seq_len=seq_len, heads=4, device="cpu", density=0.25, relative_error=1e-4))
    assert cli.main(["quickstart", "--port", "8001"]) == 0
    out = capsys.readouterr().out
    assert "no GPU found" in out and "computes 25% of the causal attention tiles" in out


SERVE_CHECK = ENGINE_ARGS_ON_CPU + """
from vllm_minference import cli
flags = cli.serve_command(cli.DEFAULT_MODEL, [])[3:]  # what follows `vllm serve MODEL`
args = parser.parse_args(["--model", sys.argv[1], "--skip-tokenizer-init", *flags])
config = EngineArgs.from_cli_args(args).create_engine_config()
print("SERVE", config.attention_config.backend.name, config.model_config.max_model_len,
      config.scheduler_config.max_num_batched_tokens,
      config.model_config.hf_config.rope_parameters["rope_type"])
"""


def test_quickstart_flags_pass_vllms_own_checks(tmp_path):
    """vLLM itself parses quickstart's flags and accepts 128K for a 32K-native Qwen2 config
    with YaRN x4 (its derived length is original x factor: no VLLM_ALLOW_LONG_MAX_MODEL_LEN)."""
    cfg = {"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "hidden_size": 128,
           "intermediate_size": 256, "num_attention_heads": 2, "num_key_value_heads": 1,
           "num_hidden_layers": 1, "max_position_embeddings": 32768, "rms_norm_eps": 1e-6,
           "vocab_size": 1000, "torch_dtype": "bfloat16", "rope_theta": 1000000.0}
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    run = run_python(SERVE_CHECK, {"VLLM_PLUGINS": "minference",
                                   "VLLM_ALLOW_LONG_MAX_MODEL_LEN": "0"}, str(tmp_path))
    assert "SERVE CUSTOM 131072 65536 yarn" in run.stdout, run.stderr[-3000:]
