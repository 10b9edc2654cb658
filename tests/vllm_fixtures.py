"""Small vLLM objects built on the CPU: a tiny model config, batches, a paged cache."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

TINY_LLAMA = {
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 256,
    "intermediate_size": 512, "num_attention_heads": 4, "num_key_value_heads": 2,
    "num_hidden_layers": 2, "head_dim": 64, "max_position_embeddings": 4096,
    "rms_norm_eps": 1e-5, "vocab_size": 1000, "torch_dtype": "float16", "rope_theta": 10000.0,
}


# Prologue of a fresh-interpreter script that parses vLLM CLI flags on a CPU machine: the
# CPU platform, the general plugins (this one) loaded, EngineArgs' own parser in `parser`.
ENGINE_ARGS_ON_CPU = """
import sys
import vllm.platforms
from vllm.platforms.cpu import CpuPlatform
vllm.platforms.current_platform = CpuPlatform()
from vllm.engine.arg_utils import EngineArgs
from vllm.utils.argparse_utils import FlexibleArgumentParser
from vllm.plugins import load_general_plugins
load_general_plugins()
parser = EngineArgs.add_cli_args(FlexibleArgumentParser())
"""


def run_python(code: str, env: dict, *args: str) -> subprocess.CompletedProcess:
    """``code`` in a fresh interpreter (platform and plugin state of its own) with ``env``
    over this process's environment."""
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                          env={**os.environ, **env}, timeout=300)


def tiny_model_dir(root: Path, **overrides) -> str:
    root.mkdir(parents=True, exist_ok=True)
    (root / "config.json").write_text(json.dumps({**TINY_LLAMA, **overrides}))
    return str(root)


def make_vllm_config(model_dir: str, additional_config: dict | None = None):
    from vllm.config import DeviceConfig, ModelConfig, VllmConfig
    mc = ModelConfig(model=model_dir, skip_tokenizer_init=True, dtype="float16",
                     max_model_len=4096)
    return VllmConfig(model_config=mc, device_config=DeviceConfig(device="cpu"),
                      additional_config=additional_config or {})


@dataclass
class PagedBatch:
    """A step's batch: per-request query/sequence lengths with K/V already in the cache."""

    cam: object  # CommonAttentionMetadata
    query: torch.Tensor  # [T, H, D]
    key: torch.Tensor  # [T, Hkv, D] (this step's new keys; the cache holds them too)
    value: torch.Tensor
    kv_cache: torch.Tensor  # logical (blocks, Hkv, block_size, 2D), HND (or NHD) memory
    keys_full: list[torch.Tensor]  # per request, all keys [seq_len, Hkv, D]
    values_full: list[torch.Tensor]


def make_paged_batch(q_lens, seq_lens, num_heads=4, num_kv_heads=2, head_dim=64,
                     block_size=16, dtype=torch.float16, seed=0, device="cpu",
                     memory_order: str = "HND") -> PagedBatch:
    """``memory_order``: HND is what the backend allocates (its stride order); NHD is
    vLLM's FlashAttention default."""
    from vllm.v1.attention.backend import CommonAttentionMetadata
    g = torch.Generator().manual_seed(seed)
    n = len(q_lens)
    pages = [math.ceil(s / block_size) for s in seq_lens]
    num_blocks = sum(pages) + 1  # block 0 is vLLM's null block
    perm = (torch.randperm(num_blocks - 1, generator=g) + 1).tolist()
    table = torch.zeros(n, max(pages), dtype=torch.int32)
    cache = torch.zeros(num_blocks, block_size, num_kv_heads, 2 * head_dim, dtype=dtype)
    keys_full, values_full, new_k, new_v, slots = [], [], [], [], []
    u = torch.randn(head_dim, generator=g)
    for r, (ql, sl) in enumerate(zip(q_lens, seq_lens)):
        k = torch.randn(sl, num_kv_heads, head_dim, generator=g)
        k[:4] += 2.0 * u  # a few sink-like keys make attention peaked, as in real models
        v = torch.randn(sl, num_kv_heads, head_dim, generator=g)
        k, v = k.to(dtype), v.to(dtype)
        keys_full.append(k)
        values_full.append(v)
        for j in range(pages[r]):
            table[r, j] = perm.pop()
        for t in range(sl):
            blk, off = int(table[r, t // block_size]), t % block_size
            cache[blk, off, :, :head_dim] = k[t]
            cache[blk, off, :, head_dim:] = v[t]
            if t >= sl - ql:
                slots.append(blk * block_size + off)
        new_k.append(k[sl - ql:])
        new_v.append(v[sl - ql:])
    total = sum(q_lens)
    query = (torch.randn(total, num_heads, head_dim, generator=g) + 1.5 * u).to(dtype)
    qsl = torch.tensor([0] + list(torch.cumsum(torch.tensor(q_lens), 0)), dtype=torch.int32)
    seq = torch.tensor(seq_lens, dtype=torch.int32)
    cam = CommonAttentionMetadata(
        query_start_loc=qsl.to(device), query_start_loc_cpu=qsl, seq_lens=seq.to(device),
        num_reqs=n, num_actual_tokens=total, max_query_len=max(q_lens),
        max_seq_len=max(seq_lens), block_table_tensor=table.to(device),
        slot_mapping=torch.tensor(slots, dtype=torch.int64, device=device), causal=True,
        seq_lens_cpu_upper_bound=seq.clone())
    kv_cache = cache.permute(0, 2, 1, 3)
    if memory_order == "HND":
        kv_cache = kv_cache.contiguous()
    return PagedBatch(cam, query.to(device), torch.cat(new_k).to(device),
                      torch.cat(new_v).to(device), kv_cache.to(device),
                      keys_full, values_full)


def dense_reference_forward(impl, layer, query, key, value, kv_cache, attn_metadata, output,
                            output_scale=None, output_block_scale=None):
    """Stand-in for FlashAttentionImpl.forward on the CPU: causal attention over the pages."""
    qsl = attn_metadata.query_start_loc.tolist()
    seq_lens = attn_metadata.seq_lens.tolist()
    key_cache, value_cache = kv_cache.transpose(1, 2).split(impl.head_size, dim=-1)
    page = key_cache.shape[1]
    group = impl.num_heads // impl.num_kv_heads
    for r in range(len(seq_lens)):
        t0, t1, sl = qsl[r], qsl[r + 1], seq_lens[r]
        pages = attn_metadata.block_table[r, : math.ceil(sl / page)].long()
        k = key_cache[pages].flatten(0, 1)[:sl].float()
        v = value_cache[pages].flatten(0, 1)[:sl].float()
        q = query[t0:t1].float()
        pos = torch.arange(sl - (t1 - t0), sl, device=q.device)[:, None]
        mask = torch.arange(sl, device=q.device)[None, :] <= pos
        for h in range(impl.num_heads):
            s = (q[:, h] @ k[:, h // group].T) * impl.scale
            p = torch.softmax(s.masked_fill(~mask, float("-inf")), -1)
            output[t0:t1, h] = (p @ v[:, h // group]).to(output.dtype)
    return output
