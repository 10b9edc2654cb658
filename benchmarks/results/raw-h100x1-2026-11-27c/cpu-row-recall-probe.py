"""Per-row recall of fixed vs antidiagonal lists on the real model (CPU, session 17 probe):
do the antidiagonal lists miss keys that single rows attend to (rows with low recall, rows
whose top-1 key is not computed), at the question's blocks and elsewhere?"""
import json, random, sys, time
sys.path.insert(0, "/work/main/benchmarks")
import torch
import recall_study as rs
import bench_accuracy
from transformers import AutoModelForCausalLM, AutoTokenizer
from vllm_minference.kernels import SeqLayout
from vllm_minference.kernels.layout import BLOCK_M
from vllm_minference.search import capture_attention, sample_blocks

MODEL, LENGTH, CHUNK, LAYERS = "/tmp/qwen-hf", 32768, 16384, [1, 4, 7, 10, 13, 16, 19, 22]
tok = AutoTokenizer.from_pretrained(MODEL)
item = bench_accuracy.multivalue(bench_accuracy.PromptMaker(tok), LENGTH, random.Random(0))
ids = tok.encode(item["prompt"], add_special_tokens=False)
model = AutoModelForCausalLM.from_pretrained(MODEL, dtype=torch.float32, attn_implementation="sdpa")
cap = {}
def on_layer(module, query, key, scale):
    if module.layer_idx in LAYERS:
        cap[module.layer_idx] = (query[0].transpose(0, 1).contiguous(),
                                 key[0].transpose(0, 1).contiguous(), scale)
t0 = time.time()
with torch.no_grad(), capture_attention(on_layer, attend=rs.chunked_causal_attention):
    model.model(torch.tensor([ids]), use_cache=False)
print(f"forward {len(ids)} tokens {time.time() - t0:.0f}s", flush=True)
fixed = {"fixed 1000/6096": rs.rules([0.9, 0.95])["fixed 1000/6096"]}
out = {}
for li, (q, k, scale) in sorted(cap.items()):
    N, H, D = q.shape
    layout = SeqLayout.from_lengths([N], [N], "cpu")
    blocks = sample_blocks(layout.num_blocks, 24)
    named = rs.chunk_keys(q, k, scale, fixed, blocks, CHUNK)
    named += [(f"ad s{st}", rs.antidiagonal_keys(q, k, scale, blocks, N, 0.98, st)) for st in (8, 32)]
    keys = torch.stack([kk for _, kk in named])  # [C, H, S, N]
    G = H // k.shape[1]
    kf = k.float().transpose(0, 1)
    first, last = layout.block_first_pos().tolist(), layout.block_last_pos().tolist()
    stats = {n: dict(final=[], other=[]) for n, _ in named}
    for s, blk in enumerate(blocks):
        r0, r1 = first[blk], last[blk] + 1
        rows = r1 - r0
        qb = q[r0:r1].float().transpose(0, 1).reshape(k.shape[1], G, rows, D)
        sc = torch.matmul(qb, kf[:, None, :r1].transpose(-1, -2)).reshape(H, rows, r1) * scale
        causal = torch.arange(r1)[None, :] <= (r0 + torch.arange(rows))[:, None]
        p = torch.softmax(sc.masked_fill(~causal, float("-inf")), dim=-1)
        top = p.argmax(-1)  # [H, rows]
        far = top < r0 - 2 * BLOCK_M  # rows whose top key is far (not local)
        for c, (n, _) in enumerate(named):
            m = keys[c, :, s, :r1].float()  # [H, r1]
            rr = torch.einsum("hrn,hn->hr", p, m)  # per-row recall [H, rows]
            hit = m.gather(1, top) > 0  # [H, rows]
            where = "final" if s >= len(blocks) - 2 else "other"
            stats[n][where].append(dict(
                low09=float((rr < 0.9).float().mean()), low07=float((rr < 0.7).float().mean()),
                minrow=float(rr.min()), top_miss=float((~hit).float().mean()),
                far_top_miss=float(((~hit) & far).float().sum() / far.float().sum().clamp_min(1))))
    out[li] = {n: {w: {key: sum(d[key] for d in v) / len(v) for key in v[0]} for w, v in st.items()}
               for n, st in stats.items()}
    print(li, json.dumps(out[li]), flush=True)
summary = {}
for n in out[LAYERS[0]]:
    for w in ("final", "other"):
        summary[f"{n} {w}"] = {key: sum(out[l][n][w][key] for l in out) / len(out)
                               for key in out[LAYERS[0]][n][w]}
print(json.dumps(summary, indent=1))
json.dump(dict(layers=out, summary=summary, tokens=len(ids)), open("/tmp/rr/rowrecall.json", "w"))
