"""Offline pattern search (vllm_minference.search) on a tiny random Qwen2, on the CPU.

The Triton kernels run under the interpreter (conftest), so shapes stay tiny: 2 layers,
2 query heads / 1 KV head of dimension 64, prompts of a few hundred tokens.
"""

from __future__ import annotations

import json

import pytest
import torch

from vllm_minference.kernels import (HeadPattern, KVSource, LayerPatterns, SeqLayout,
                                     plan_layer)
from vllm_minference.kernels.attention.reference import causal_mask, worklist_mask
from vllm_minference.kernels.layout import BLOCK_M
from vllm_minference.profiles import load_profile
from vllm_minference.search import (SearchError, SearchSettings, apply_yarn, capture_attention,
                                    check_model, choose, kv_retrieval_prompt, main,
                                    resolve_length, sample_blocks, search_model,
                                    weighted_recall, worklist_block_keys,
                                    worklist_block_masks)

transformers = pytest.importorskip("transformers")

SMALL = SearchSettings(target_density=0.75, a_shape=[(64, 128), (128, 1024)],
                       vertical_slash=[(30, 64), (64, 128), (1000, 6096)], block_sparse=[3, 50],
                       sample_blocks=4, progress=False)


def tiny_config(**kw):
    args = dict(hidden_size=128, num_attention_heads=2, num_key_value_heads=1,
                intermediate_size=256, vocab_size=128, max_position_embeddings=4096,
                num_hidden_layers=2)
    args.update(kw)
    return transformers.Qwen2Config(**args)


def tiny_model(seed: int = 0):
    torch.manual_seed(seed)
    return transformers.Qwen2ForCausalLM(tiny_config()).eval()


def char_tokenizer():
    """A character-level fast tokenizer built offline (printable ASCII and newline)."""
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers
    vocab = {"<unk>": 0, "<s>": 1}
    for c in [chr(i) for i in range(32, 127)] + ["\n"]:
        vocab[c] = len(vocab)
    tk = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Split(Regex("[\\s\\S]"), behavior="isolated")
    return transformers.PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<s>",
                                                unk_token="<unk>")


# ------------------------------------------------------------------- sampled-block masks
def test_sampled_block_masks_match_reference(device):
    """Key sets read for a few blocks == the element-by-element reading of the whole list,
    for a batch that mixes every pattern and a sequence with cached context."""
    g = torch.Generator().manual_seed(0)
    q_lens, kv_lens = [320, 128], [320, 300]
    H, Hkv, D = 4, 2, 64
    layout = SeqLayout.from_lengths(q_lens, kv_lens, device)
    q = torch.randn(sum(q_lens), H, D, generator=g).to(device)
    k = torch.randn(sum(kv_lens), Hkv, D, generator=g).to(device)
    kv = KVSource.contiguous(k, k, kv_lens)
    pats = [HeadPattern("vertical_and_slash", 30, 64), HeadPattern("stream_llm", 40, 128),
            HeadPattern("block_sparse", 3), HeadPattern("dense")]
    wl = plan_layer(q, kv, layout, LayerPatterns.from_heads(pats, device))
    blocks = torch.tensor([0, 2, 4, 5, 6])  # seq 0: blocks 0, 2, 4; seq 1: blocks 0, 1
    masks = worklist_block_masks(wl, layout, blocks).cpu()
    keys = worklist_block_keys(wl, layout, blocks).cpu()
    assert masks.shape == (H, 5, BLOCK_M, max(kv_lens))
    first_blk = [0, 5]
    for s, blk in enumerate(blocks.tolist()):
        b = 0 if blk < 5 else 1
        m = blk - first_blk[b]
        ql, kl = q_lens[b], kv_lens[b]
        r0, r1 = m * BLOCK_M, min(ql, (m + 1) * BLOCK_M)
        causal = causal_mask(ql, kl)[r0:r1]
        for h in range(H):
            ref = worklist_mask(wl, layout, b, h)
            assert torch.equal(keys[h, s, :kl], ref[r0]), (h, blk)
            assert not keys[h, s, kl:].any()
            assert torch.equal(masks[h, s, :r1 - r0, :kl], ref[r0:r1] & causal), (h, blk)
            assert not masks[h, s, r1 - r0:].any() and not masks[h, s, :, kl:].any()


def test_sample_blocks_spread_and_last():
    assert sample_blocks(6, 16) == list(range(6))
    s = sample_blocks(512, 16)
    assert len(s) == 16 and s[-2:] == [510, 511] and s[0] > 0 and s == sorted(set(s))
    assert sample_blocks(10, 1) == [9]


def test_choose_rule():
    cost = torch.tensor([[0.05, 0.3], [0.08, 0.2], [0.5, 0.25]])
    recall = torch.tensor([[0.90, 0.5], [0.95, 0.9], [0.99, 0.7]])
    # head 0: best recall within 0.1 is candidate 1; head 1: none fits -> cheapest (1)
    assert choose(cost, recall, 0.1) == [1, 1]
    # near-tie within the tolerance goes to the cheaper candidate
    assert choose(cost, torch.tensor([[0.9495, 0.], [0.95, 0.], [0., 0.]]), 0.1, 1e-3)[0] == 0


# ------------------------------------------------------------------------ the search
def _check_rule(profile, settings):
    meta = profile.metadata.search
    cands = [(c["pattern"], c["a"], c["b"]) for c in meta["candidates"]]
    assert cands == [(p.kind, p.a, p.b) for p in settings.candidates()]
    for i, layer in enumerate(profile.layers):
        for h, spec in enumerate(layer):
            c = meta["chosen"][i][h]
            assert (spec.pattern, spec.a, spec.b) == cands[c]
            rec, dens = meta["recall"][i][h], meta["density"][i][h]
            assert 0.0 <= rec <= 1.0 and spec.score == rec
            all_d = [meta["candidate_density"][i][j][h] for j in range(len(cands))]
            if any(d <= settings.target_density for d in all_d):
                assert dens <= settings.target_density + 1e-6
                fit_r = [meta["candidate_recall"][i][j][h] for j in range(len(cands))
                         if all_d[j] <= settings.target_density]
                assert rec >= max(fit_r) - settings.recall_tolerance - 1e-3
            else:
                assert dens <= min(all_d) + 1e-4  # the cheapest


def test_search_tiny_qwen2(tmp_path):
    model = tiny_model()
    ids = torch.randint(0, 128, (384,), generator=torch.Generator().manual_seed(1))
    profile = search_model(model, ids, SMALL, model_name="tiny-qwen2",
                           calibration={"kind": "random"})
    path = tmp_path / "tiny.json"
    from vllm_minference.profiles import save_profile
    save_profile(profile, path)
    loaded = load_profile(path)
    loaded.check_fits(2, 2)
    assert loaded.metadata.model == "tiny-qwen2" and loaded.metadata.tool_version
    assert loaded.metadata.search["calibration"] == {"kind": "random", "length": 384}
    assert loaded.metadata.search["target_density"] == 0.75
    for i in range(2):  # what the backend asks of it
        assert len(loaded.layer_patterns(i, [0, 1])) == 2
    _check_rule(loaded, SMALL)
    # at 384 tokens A-shape 64/128 and Block-Sparse top-3 cost 15/21 tiles: they fit 0.75,
    # Vertical-Slash 30/64 (16/21) and the larger budgets do not
    dens = [d for row in loaded.metadata.search["density"] for d in row]
    assert all(d <= 0.75 for d in dens)
    assert {h.pattern for layer in loaded.layers for h in layer} <= {"stream_llm", "block_sparse"}
    json.dumps(loaded.metadata.model_dump())  # metadata stays plain JSON


def test_cli_end_to_end_default_candidates(tmp_path, capsys):
    """`vllm-minference search` on a saved tiny model + tokenizer, default candidate sets
    (at 320 tokens none reaches the default target, so every head gets the cheapest)."""
    mdir = tmp_path / "model"
    tiny_model().save_pretrained(mdir)
    char_tokenizer().save_pretrained(mdir)
    out = tmp_path / "p" / "profile.json"
    rc = main([str(mdir), "--out", str(out), "--length", "320", "--sample-blocks", "2",
               "--model-name", "org/tiny-qwen2"])
    assert rc == 0, capsys.readouterr().err
    prof = load_profile(out)
    prof.check_fits(2, 2)
    assert prof.metadata.model == "org/tiny-qwen2"
    assert "layer 2/2: recall" in capsys.readouterr().out  # per-layer progress in logs
    meta = prof.metadata.search
    assert meta["calibration"]["kind"] == "kv_retrieval" and meta["calibration"]["length"] == 320
    _check_rule(prof, SearchSettings(sample_blocks=2))


# --------------------------------------------------------------------- clear errors
def test_too_long_prompt_is_a_clear_error(tmp_path, capsys):
    model = tiny_model()
    with pytest.raises(SearchError, match="longer than the model's context"):
        search_model(model, torch.zeros(4097, dtype=torch.long), SMALL)
    cfg = tiny_config()
    with pytest.raises(SearchError, match="--yarn-factor 2"):
        resolve_length(cfg, 8000)
    assert resolve_length(cfg, None) == 4096 and resolve_length(cfg, 1000) == 1000
    # the CLI (through `vllm-minference search`) says so before loading any weights
    from vllm_minference import cli
    mdir = tmp_path / "model"
    tiny_config().save_pretrained(mdir)
    char_tokenizer().save_pretrained(mdir)
    assert cli.main(["search", str(mdir), "--out", str(tmp_path / "x.json"), "--length",
                     "5000", "--no-progress"]) == 1
    assert "longer than the model's context" in capsys.readouterr().err


def test_out_of_memory_forward_is_a_clear_error(monkeypatch):
    """A model or prompt too large for the GPU: the forward's OOM becomes a SearchError that
    says so (and suggests a shorter prompt) instead of a raw CUDA traceback."""
    model = tiny_model()

    def oom(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 64.00 GiB")
    monkeypatch.setattr(model.model, "forward", oom)
    with pytest.raises(SearchError, match="does not fit on the GPU.*shorter"):
        search_model(model, torch.zeros(384, dtype=torch.long), SMALL)


def test_yarn_override_extends_context():
    cfg = tiny_config()
    override = apply_yarn(cfg, 2.0)
    assert override == {"rope_type": "yarn", "factor": 2.0,
                        "original_max_position_embeddings": 4096}
    assert cfg.max_position_embeddings == 8192 and cfg.rope_parameters["rope_type"] == "yarn"
    assert cfg.rope_parameters["rope_theta"] == 10000.0
    assert resolve_length(cfg, 8000) == 8000
    transformers.Qwen2ForCausalLM(cfg)  # transformers accepts the override


def test_unsupported_models_fail_clearly():
    with pytest.raises(SearchError, match="not supported"):
        check_model(transformers.GPT2Config(n_embd=128, n_head=2, n_layer=1))
    with pytest.raises(SearchError, match="head_dim 32"):
        check_model(tiny_config(num_attention_heads=4, num_key_value_heads=2))
    with pytest.raises(SearchError, match="target density"):
        search_model(tiny_model(), torch.zeros(256, dtype=torch.long),
                     SearchSettings(target_density=0.0))


# ------------------------------------------------------------- capture and the prompt
def test_capture_gives_post_rope_qk():
    from transformers.models.qwen2.modeling_qwen2 import apply_rotary_pos_emb
    model = tiny_model()
    ids = torch.randint(0, 128, (1, 100), generator=torch.Generator().manual_seed(2))
    got = {}

    def grab(module, q, k, scale):
        got[module.layer_idx] = (q.clone(), k.clone(), scale)

    model.set_attn_implementation("sdpa")
    with torch.no_grad(), capture_attention(grab):
        model.model(input_ids=ids, use_cache=False)
        inner = model.model
        x = inner.embed_tokens(ids)
        attn = inner.layers[0].self_attn
        h = inner.layers[0].input_layernorm(x)
        q = attn.q_proj(h).view(1, 100, -1, 64).transpose(1, 2)
        k = attn.k_proj(h).view(1, 100, -1, 64).transpose(1, 2)
        cos, sin = inner.rotary_emb(x, torch.arange(100)[None])
        q, k = apply_rotary_pos_emb(q, k, cos, sin)
    assert sorted(got) == [0, 1]
    torch.testing.assert_close(got[0][0], q)
    torch.testing.assert_close(got[0][1], k)
    assert got[0][2] == pytest.approx(64 ** -0.5)
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
    assert "sdpa" not in ALL_ATTENTION_FUNCTIONS._local_mapping  # restored


def test_kv_retrieval_prompt_exact_and_deterministic():
    tok = char_tokenizer()
    ids, info = kv_retrieval_prompt(tok, 1000, seed=3)
    assert len(ids) == 1000 and ids[0] == tok.bos_token_id
    assert kv_retrieval_prompt(tok, 1000, seed=3)[0] == ids
    assert kv_retrieval_prompt(tok, 1000, seed=4)[0] != ids
    text = "".join(tok.convert_ids_to_tokens(ids[1:]))
    key = text.rsplit("value of key ", 1)[1].removesuffix(" is")
    assert f"key {key}: value {info['answer']}\n" in text.split("Question:")[0]
    with pytest.raises(SearchError, match="too short"):
        kv_retrieval_prompt(tok, 100)


def test_weighted_recall_weighs_the_question_blocks():
    per_block = torch.tensor([[[1.0, 1.0, 1.0, 0.2, 0.2]],    # local head: misses the question
                              [[0.6, 0.6, 0.6, 0.9, 0.9]]])   # dynamic head: finds it
    plain = weighted_recall(per_block, 0.0)
    assert torch.allclose(plain[:, 0], torch.tensor([1.0, 0.6]))
    half = weighted_recall(per_block, 0.5)
    assert torch.allclose(half[:, 0], torch.tensor([0.6, 0.75]))
    assert choose(torch.zeros(2, 1), half, 0.1) == [1]  # the choice follows the question
    assert choose(torch.zeros(2, 1), plain, 0.1) == [0]
    # as many blocks as final ones: a plain mean
    assert torch.allclose(weighted_recall(per_block[..., :2], 0.9), per_block[..., :2].mean(-1))
    with pytest.raises(SearchError, match="final_weight"):
        SearchSettings(final_weight=1.5).validate()
