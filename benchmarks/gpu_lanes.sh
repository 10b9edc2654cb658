#!/bin/bash
# One device call after the gpu-kit is installed:
#   bash benchmarks/gpu_lanes.sh A|B|C|D|E|F|G      two-GPU machine (nvidia-h100-x2)
#   bash benchmarks/gpu_lanes.sh H1|H2|H3|S1..S5    one-GPU machine (nvidia-h100-x1)
#   bash benchmarks/gpu_lanes.sh K1..K7             one GPU: FA3 page lists vs Triton vs dense
#   bash benchmarks/gpu_lanes.sh M1..M6             one GPU: keys-per-row guard, fa3_min_run
#   bash benchmarks/gpu_lanes.sh X1                 one GPU: chunked prefill at kernel level
#   bash benchmarks/gpu_lanes.sh T1                 one GPU: per-step trace of vLLM prefills
#   bash benchmarks/gpu_lanes.sh V1..V4             one GPU: guard that waits when unsure
#   bash benchmarks/gpu_lanes.sh W1..W3             one GPU: estimate statistics from FA3
#   bash benchmarks/gpu_lanes.sh E1                 one GPU: the estimate's passes, timed apart
#   bash benchmarks/gpu_lanes.sh A1, A2             one GPU: 128K accuracy, 24 more samples a cell
#   bash benchmarks/gpu_lanes.sh Z1..Z4             one GPU: 2-warp pass 2, TTFT, kernel tables
#   bash benchmarks/gpu_lanes.sh Y1                 one GPU: adaptive estimate as chunk masses (reverted)
#   bash benchmarks/gpu_lanes.sh B1                 one GPU: 128K multivalue at 2x and 0.5x budgets
#   bash benchmarks/gpu_lanes.sh D1, D2             one GPU: multivalue with dense_tail=64 (taken out)
#   bash benchmarks/gpu_lanes.sh J1, J2             one GPU: multivalue, 2K chunks, 4 estimate windows (taken out)
#   bash benchmarks/gpu_lanes.sh U1..U4             one GPU: multivalue, doubled columns/diagonals, local band
#   bash benchmarks/gpu_lanes.sh L1..L3             one GPU: TTFT with the fused selection, 4K/8K pairs, selection
#   bash benchmarks/gpu_lanes.sh F1..F5             one GPU: local band; big-budget warm-up; heads-fast grid
#   bash benchmarks/gpu_lanes.sh G1..G10            one GPU: one-step prefill; extra_blocks (eleventh session)
#   bash benchmarks/gpu_lanes.sh I1..               one GPU: extra tiles in adaptive mode; fused top-k (twelfth)
#   bash benchmarks/gpu_lanes.sh O1..               one GPU: extra tiles ranked in three levels (thirteenth)
#   bash benchmarks/gpu_lanes.sh P1..P4, P7..P9     one GPU: short runs on a packed Triton pass, serving load, guard
#   bash benchmarks/gpu_lanes.sh Q0..Q5             one GPU: per-block antidiagonal lists (fifteenth)
#   bash benchmarks/gpu_lanes.sh AD1..AD8           one GPU: the estimate as a GEMM; TTFT, multivalue (sixteenth)
#   bash benchmarks/gpu_lanes.sh AE1..AE3, AF1..AF3 one GPU: stride 32; random attention, 1M (seventeenth)
#   bash benchmarks/gpu_lanes.sh AG1, AG2           one GPU: what costs stride 32 its answers
#   bash benchmarks/gpu_lanes.sh AH1, AH2           one GPU: answers of two exact attentions
#   bash benchmarks/gpu_lanes.sh AI1..AI3           one GPU: the prompt's last rows exact; stride 64 (nineteenth)
#   bash benchmarks/gpu_lanes.sh AJ1..AJ3           one GPU: the chunk's columns; retrieval heads dense
#   bash benchmarks/gpu_lanes.sh AK1..AK3           one GPU: retrieval heads pinned to fixed top-k
#   bash benchmarks/gpu_lanes.sh AL1..AL5, AM1, AM2 one GPU: 1M split, serving pinned, FA3's union
#   bash benchmarks/gpu_lanes.sh AN1..AN4           one GPU: one selection per FA3 row group
#   bash benchmarks/gpu_lanes.sh AO1, AO2           one GPU: stride 64 with 32 pinned heads
#   bash benchmarks/gpu_lanes.sh AQ1                one GPU: the partials as cuBLAS GEMMs
#   bash benchmarks/gpu_lanes.sh AR1                one GPU: the default suite as shipped
#   bash benchmarks/gpu_lanes.sh AS1..AS6           one GPU: stride 32's partials launch; 1M, 128K
#   bash benchmarks/gpu_lanes.sh AT1                one GPU: the selection's threshold search (vLLM only)
#   bash benchmarks/gpu_lanes.sh AT2                one GPU: that search summed element-wise (branch, vLLM only)
#   bash benchmarks/gpu_lanes.sh AU1, AU2           one GPU: 1M pair; the branch end to end
#   bash benchmarks/gpu_lanes.sh AV1, AV2           two GPUs (nvidia-h100-x2): TTFT 128K at --tp 2; traced
#   bash benchmarks/gpu_lanes.sh AW1 / AW2          one / two GPUs: a 128K prefill profiled (gpu_idle.py), TP 1 / 2
#   bash benchmarks/gpu_lanes.sh AX1, AX2 / AXP, AX3 one / two GPUs: the guard that trusts earlier prompts (128K, 1M / both, TP 2)
#   bash benchmarks/gpu_lanes.sh AY                 two GPUs: random attention 128K + 32K beside the default suite
#   bash benchmarks/gpu_lanes.sh BAP, BCP, BDP      two GPUs: flat partials loop + estimate splits (tune, 128K) / profiles + suite / 1M FLASH_ATTN beside minference
#   bash benchmarks/gpu_lanes.sh BEP                two GPUs: FA3's row order (fa3_row_order, removed again): kernels / 128K
#   bash benchmarks/gpu_lanes.sh BGP, BG3           two GPUs: the shipped default at 4K/8K/128K / a 1M pair on one GPU; one GPU: a 128K A/B of two builds
#   bash benchmarks/gpu_lanes.sh BHP, BHR           two GPUs: fa3_min_blocks, own tiles on Triton: kernels / TTFT 128K; again with a faster pass, 1M
#   bash benchmarks/gpu_lanes.sh BHS, BHT           two GPUs: fa3_min_blocks with per-block FA3 pages: kernels / TTFT 128K; / the fixed-mode suite
# On two GPUs, two lanes run side by side, one per GPU; each lane compares backends *within
# itself* (same GPU, one process per configuration, one after the other), so no timing
# compares two GPUs.  One-GPU calls run the same functions one after the other.  Results
# are JSON files under $OUT; all logs go into one $OUT/logs-<call>.tgz (the device tool
# brings back at most 8 files).  Modes are explicit: the 2026-11-25 run was
# made when adaptive was the default (see benchmarks/results/HISTORY.md).
. benchmarks/gpu_prelude.sh
export PYTHONUNBUFFERED=1 VLLM_ALLOW_LONG_MAX_MODEL_LEN=1
LOGS=/tmp/lanelogs-$1
mkdir -p $LOGS
B=benchmarks

lane() {  # lane GPU NAME: run the function NAME on GPU GPU, its output in $LOGS/NAME.log
  (export CUDA_VISIBLE_DEVICES=$1 VLLM_CACHE_ROOT=/tmp/vllm-cache-$1; $2 > $LOGS/$2.log 2>&1) &
}
gpu_tests() {  # gpu_tests SECONDS PYTEST_ARGS...: tests/ files against the installed wheel,
  # run from /tmp so the repository's kernels/ folder is not imported in its place
  local limit=$1; shift
  (cd /tmp && timeout $limit python3 -m pytest -q -x -p no:cacheprovider "$@") \
    > $OUT/gpu_tests.log 2>&1
}
tune_estimate_before() {  # tune_estimate_before SECONDS: the package in .whl/old/, labelled
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/old-site \
    .whl/old/vllm_minference-*.whl > /dev/null 2>&1
  PYTHONPATH=/tmp/old-site:$PYTHONPATH timeout $1 python3 $B/tune_estimate.py \
    --seq-lens 131072 1048576 --options default --label before --out $OUT/tune_estimate.json
}

# Session of 2026-11-25 (second): 64-token pages, async density guard, fused plan kernels.
FLOORS="--set adaptive_sinks=128 --set adaptive_local=1024"  # adaptive with A-shape floors
SEARCHED="--set profile=qwen2.5-coder-0.5b-instruct-searched.json"

# ------------------------------------------------------------------ call A
A_ttft() {
  for cfg in "FLASH_ATTN" "minference --mode fixed"; do
    timeout 80 python3 $B/bench_ttft.py --backend $cfg --lengths 4096 8192 131072 \
      --out $OUT/ttft.json
  done
  timeout 55 python3 $B/bench_ttft.py --backend minference --mode adaptive $FLOORS \
    --lengths 131072 --out $OUT/ttft.json
  timeout 95 python3 $B/bench_kernels.py --seq-lens 131072 --no-random \
    --patterns vertical_slash,vertical_slash_adaptive --out $OUT/kernels.json
}
A_accuracy() {
  timeout 195 python3 $B/bench_accuracy.py --backend FLASH_ATTN --out $OUT/accuracy.json
  timeout 100 python3 $B/bench_accuracy.py --backend minference --min-sparse-len 4096 \
    --mode adaptive $FLOORS --out $OUT/accuracy.json
}

# ------------------------------------------------------------------ call B
B_long() {
  timeout 170 python3 $B/bench_ttft.py --backend FLASH_ATTN --lengths 1048576 \
    --out $OUT/ttft_long.json
  timeout 70 python3 $B/bench_ttft.py --backend minference --mode fixed --lengths 1048576 \
    --out $OUT/ttft_long.json
  timeout 55 python3 $B/bench_ttft.py --backend minference --mode adaptive $FLOORS \
    --lengths 1048576 --out $OUT/ttft_long.json
}
B_accuracy() {
  timeout 130 python3 $B/bench_accuracy.py --backend minference --min-sparse-len 4096 \
    --mode fixed --out $OUT/accuracy.json
  for b in FLASH_ATTN minference; do
    timeout 80 python3 $B/bench_ttft.py --backend $b --decode --out $OUT/decode.json
  done
}

# ------------------------------------------------------------------ call C
C_tp2() {  # both GPUs: vllm serve with tensor parallelism 2, minference and FLASH_ATTN
  timeout 195 python3 $B/check_serving.py --configs minference@tp2 FLASH_ATTN@tp2 \
    --logdir $LOGS --out $OUT/serving_tp2.json > $LOGS/tp2.log 2>&1
}
tight() {  # issue 7: default profile scaled to density ~0.1 vs the searched profile
  timeout 110 python3 $B/bench_accuracy.py --backend minference --min-sparse-len 4096 \
    --mode fixed --lengths 16384 32768 --ruler-lengths 16384 32768 "$@" \
    --out $OUT/accuracy_tight.json
  timeout 75 python3 $B/bench_ttft.py --backend minference --mode fixed "$@" \
    --lengths 131072 --reps 2 --out $OUT/ttft_tight.json
}
E_fixed() {  # 1M again: call B's 70/55 s limits were shorter than start-up + warm-up
  timeout 115 python3 $B/bench_ttft.py --backend minference --mode fixed --lengths 1048576 \
    --out $OUT/ttft_long.json
}
E_adaptive() {
  timeout 115 python3 $B/bench_ttft.py --backend minference --mode adaptive $FLOORS \
    --lengths 1048576 --out $OUT/ttft_long.json
}
# next session: the adaptive numbers this session could not give (JIT recompiles, fixed since)
G_adaptive() {
  timeout 150 python3 $B/bench_ttft.py --backend minference --mode adaptive $FLOORS \
    --lengths 32768 131072 524288 --out $OUT/ttft_adaptive.json
  timeout 120 python3 $B/bench_ttft.py --backend minference --mode adaptive $FLOORS \
    --lengths 1048576 --out $OUT/ttft_adaptive.json
}
G_accuracy() {
  timeout 240 python3 $B/bench_accuracy.py --backend minference --min-sparse-len 4096 \
    --mode adaptive $FLOORS --out $OUT/accuracy_adaptive.json
}
jit_check() {  # Triton compiles during inference, per log (should be none after warm-up)
  grep -c "JIT compilation during inference" $LOGS/*.log > $OUT/jit_warnings.txt 2>&1
}
C_default() { tight --set budget_scale=0.05; }
# session of 2026-11-26: the search with question-weighted recall and cheaper dynamic
# candidates (issue 7), adaptive mode over a fixed floor (issue 6), kernels at 1M (issue 3)
NEWPROF=$OUT/qwen2.5-coder-0.5b-instruct-searched.json
FLOOR_SCALE=${FLOOR_SCALE:-0.25}
AFLOOR="$FLOORS --set adaptive_floor=$FLOOR_SCALE"
S1_search() {
  timeout 200 python3 -m vllm_minference.search $GPU_KIT_MODEL --out $NEWPROF \
    --model-name Qwen/Qwen2.5-Coder-0.5B-Instruct --no-progress
  timeout 110 python3 $B/bench_accuracy.py --backend minference --min-sparse-len 4096 \
    --mode fixed --lengths 16384 32768 --ruler-lengths 16384 32768 --set profile=$NEWPROF \
    --out $OUT/accuracy_tight.json
  for cfg in "profile=$NEWPROF" "budget_scale=0.05"; do
    timeout 75 python3 $B/bench_ttft.py --backend minference --mode fixed --set $cfg \
      --lengths 131072 --reps 2 --out $OUT/ttft_tight.json
  done
  timeout 100 python3 $B/bench_kernels.py --seq-lens 131072 --no-random --patterns profile \
    --profile $NEWPROF --out $OUT/kernels_tight_searched.json
  timeout 100 python3 $B/bench_kernels.py --seq-lens 131072 --no-random --patterns profile \
    --profile default --budget-scale 0.05 --out $OUT/kernels_tight_default.json
}
S2_floor() {
  timeout 200 python3 $B/bench_accuracy.py --backend minference --min-sparse-len 4096 \
    --mode adaptive $AFLOOR --out $OUT/accuracy_floor.json
  timeout 100 python3 $B/bench_ttft.py --backend FLASH_ATTN --lengths 4096 8192 32768 131072 \
    --out $OUT/ttft_floor.json
  timeout 170 python3 $B/bench_ttft.py --backend minference --mode adaptive $AFLOOR \
    --lengths 4096 8192 32768 131072 524288 --out $OUT/ttft_floor.json
  # the dense first 64K (min_sparse_len) are ~0.4 s of a 128K prefill: sparse from 16K
  timeout 90 python3 $B/bench_ttft.py --backend minference --mode adaptive $AFLOOR \
    --min-sparse-len 16384 --lengths 4096 8192 32768 131072 --out $OUT/ttft_floor.json
}
S3_long() {
  timeout 130 python3 $B/bench_ttft.py --backend minference --mode adaptive $AFLOOR \
    --lengths 1048576 --out $OUT/ttft_floor_long.json
  timeout 260 python3 $B/bench_ttft.py --backend FLASH_ATTN --lengths 1048576 \
    --out $OUT/ttft_floor_long.json
}
S4_kernels() {
  timeout 90 python3 $B/profile_plan.py --kv 131072 1048576 --chunk 16384 --no-table \
    > $OUT/profile_plan.log 2>&1
  timeout 380 python3 $B/bench_kernels.py --seq-lens 1048576 --layers 3 \
    --patterns vertical_slash,vertical_slash_adaptive --out $OUT/kernels_1m.json
}

S5_dummy() {  # random attention (dummy Llama-3-8B shape, 32 layers): the density guard
  for cfg in "FLASH_ATTN" "minference --mode fixed" "minference --mode adaptive $AFLOOR"; do
    timeout 130 python3 $B/bench_ttft.py --backend $cfg --model-kind dummy-llama \
      --lengths 32768 131072 --reps 1 --out $OUT/ttft_dummy.json
  done
}

# session of 2026-11-26 (fourth): the one-gather estimate timed, kernel launch options
# (warp specialisation, 8 warps), the prefill chunk size at 1M, RULER with 12 samples a cell
P1_plan() {
  timeout 90 python3 $B/profile_plan.py --kv 131072 1048576 --chunk 16384 --no-table \
    > $OUT/profile_plan.log 2>&1
  timeout 120 python3 $B/tune_kernels.py --seq-lens 131072 --heads 14 --kv-heads 2 \
    --head-dim 64 --pages 64 --configs w4s3c2,w4s3c2ws,w8s3c2,w8s3c1,w4s4c2 \
    --out $OUT/tune_d64.json
  timeout 90 python3 $B/tune_kernels.py --seq-lens 32768 --pages 64 \
    --configs w4s3c1,w4s3c1ws,w8s3c1,w8s3c2,w4s4c1 --out $OUT/tune_d128.json
  timeout 150 python3 $B/bench_ttft.py --backend minference --mode adaptive $FLOORS \
    --lengths 131072 1048576 --out $OUT/ttft.json
  timeout 110 python3 $B/bench_ttft.py --backend minference --mode adaptive $FLOORS \
    --lengths 1048576 --max-num-batched-tokens 65536 --out $OUT/ttft.json
}
P2_dense() {
  timeout 250 python3 $B/bench_ttft.py --backend FLASH_ATTN --lengths 131072 1048576 \
    --out $OUT/ttft.json
  timeout 200 python3 $B/bench_ttft.py --backend FLASH_ATTN --lengths 1048576 \
    --max-num-batched-tokens 65536 --out $OUT/ttft.json
}
RULER12="--lengths 16384 32768 --ruler-lengths 16384 32768 --ruler-samples 12"
TIGHT="budget_scale=0.05 profile=qwen2.5-coder-0.5b-instruct-searched.json"  # issue 7's pair
R1_tight() {  # issue 7 at a tight budget, and the dense reference, 12 RULER samples a cell
  timeout 110 python3 $B/bench_accuracy.py --backend FLASH_ATTN $RULER12 \
    --out $OUT/accuracy12.json
  for cfg in $TIGHT; do
    timeout 110 python3 $B/bench_accuracy.py --backend minference --min-sparse-len 4096 \
      --mode fixed --set $cfg $RULER12 --out $OUT/accuracy12.json
  done
}
R2_adaptive() {  # issue 6 at 16K/32K, 12 RULER samples a cell
  timeout 110 python3 $B/bench_accuracy.py --backend minference --min-sparse-len 4096 \
    --mode adaptive $FLOORS $RULER12 --out $OUT/accuracy12.json
  timeout 110 python3 $B/bench_accuracy.py --backend minference --min-sparse-len 4096 \
    --mode adaptive $AFLOOR $RULER12 --out $OUT/accuracy12.json
}

# second lease: the 128K cells with 12 samples (where both tight profiles are below 10%
# density), and 64K prefill chunks at 128K/512K (the 1M adaptive run gained 1.6x from them)
RULER128="--lengths 131072 --ruler-lengths 131072 --ruler-samples 12"
Q1_dense128() {
  timeout 330 python3 $B/bench_accuracy.py --backend FLASH_ATTN $RULER128 \
    --out $OUT/accuracy12_128k.json
}
Q2_tight128() {
  for cfg in $TIGHT; do
    timeout 230 python3 $B/bench_accuracy.py --backend minference --min-sparse-len 4096 \
      --mode fixed --set $cfg $RULER128 --out $OUT/accuracy12_128k.json
  done
}
Q3_adaptive128() {
  timeout 230 python3 $B/bench_accuracy.py --backend minference --min-sparse-len 4096 \
    --mode adaptive $AFLOOR $RULER128 --out $OUT/accuracy12_128k.json
  timeout 150 python3 $B/bench_ttft.py --backend FLASH_ATTN --lengths 131072 524288 \
    --max-num-batched-tokens 65536 --out $OUT/ttft.json
  timeout 120 python3 $B/bench_ttft.py --backend minference --mode adaptive $FLOORS \
    --lengths 131072 524288 --max-num-batched-tokens 65536 --out $OUT/ttft.json
}

# Session of 2026-11-26 (fifth): the key tiles on FlashAttention-3 page lists (attention_kernel
# auto = fa3 on Hopper) against the Triton kernel (--set attention_kernel=triton) and
# FLASH_ATTN, all in the same lease
TRITON="--set attention_kernel=triton"
K1_check() {  # GPU tests (real FA3 against the reference; one compile per kernel) + kernels
  gpu_tests 150 $PWD/tests/test_page_lists.py $PWD/tests/test_compile_variants.py
  timeout 300 python3 $B/bench_kernels.py --seq-lens 131072 \
    --patterns vertical_slash,vertical_slash_adaptive --out $OUT/kernels.json
}
K2_ttft() {  # vLLM's default 16K chunks; decode over the HND cache
  for cfg in "FLASH_ATTN" "minference --mode fixed" "minference --mode fixed $TRITON"; do
    timeout 100 python3 $B/bench_ttft.py --backend $cfg --lengths 4096 8192 131072 \
      --out $OUT/ttft.json
  done
  timeout 70 python3 $B/bench_ttft.py --backend minference --mode adaptive $FLOORS \
    --lengths 131072 --out $OUT/ttft.json
  for b in FLASH_ATTN minference; do
    timeout 80 python3 $B/bench_ttft.py --backend $b --decode --out $OUT/decode.json
  done
}
K3_long() {  # 1M in 64K chunks
  timeout 200 python3 $B/bench_ttft.py --backend FLASH_ATTN --lengths 131072 1048576 \
    --max-num-batched-tokens 65536 --out $OUT/ttft_chunk64k.json
  for cfg in "--mode fixed" "--mode adaptive $FLOORS" "--mode fixed $TRITON"; do
    timeout 110 python3 $B/bench_ttft.py --backend minference $cfg --lengths 131072 1048576 \
      --max-num-batched-tokens 65536 --out $OUT/ttft_chunk64k.json
  done
}
K4_accuracy() {  # fixed budgets forced sparse from 4K at 128K (the Triton run gave 56.2 vs 57.5)
  timeout 280 python3 $B/bench_accuracy.py --backend minference --min-sparse-len 4096 \
    --mode fixed $RULER128 --out $OUT/accuracy12_128k_fa3.json
}
K6_ttft() {  # second lease: FA3 lists only where a layer's density >= 0.15 (adaptive -> Triton)
  timeout 200 python3 $B/bench_ttft.py --backend FLASH_ATTN --lengths 131072 1048576 \
    --max-num-batched-tokens 65536 --out $OUT/ttft_chunk64k.json
  timeout 90 python3 $B/bench_ttft.py --backend minference --mode adaptive $FLOORS \
    --lengths 131072 1048576 --max-num-batched-tokens 65536 --out $OUT/ttft_chunk64k.json
  timeout 170 python3 $B/bench_ttft.py --backend FLASH_ATTN --lengths 1048576 \
    --out $OUT/ttft.json
  timeout 100 python3 $B/bench_ttft.py --backend minference --mode fixed --lengths 1048576 \
    --out $OUT/ttft.json
}
K7_short_runs() {  # next: isolated diagonals on Triton (fa3_min_run), kernels and TTFT
  timeout 200 python3 $B/bench_kernels.py --seq-lens 131072 --no-random \
    --patterns vertical_slash --kernels triton,fa3,fa3/run2,fa3/run4 --out $OUT/kernels.json
  timeout 150 python3 $B/bench_ttft.py --backend FLASH_ATTN --lengths 131072 --out $OUT/ttft.json
  for cfg in "" "--set fa3_min_run=2" "--set fa3_min_run=4"; do
    timeout 150 python3 $B/bench_ttft.py --backend minference --mode fixed $cfg \
      --lengths 131072 --out $OUT/ttft.json
  done
}
K5_kernels_1m() {
  timeout 420 python3 $B/bench_kernels.py --seq-lens 1048576 --layers 3 \
    --patterns vertical_slash,vertical_slash_adaptive --out $OUT/kernels_1m.json
}

# next session: does the 64K prefill chunk (20.5x at 1M) keep the adaptive answers? Each
# chunk's estimate then covers 4x as many rows; dense rows with the same chunk for reference
N1_chunk_accuracy() {
  for b in "FLASH_ATTN" "minference --min-sparse-len 4096 --mode adaptive $FLOORS"; do
    timeout 280 python3 $B/bench_accuracy.py --backend $b --max-num-batched-tokens 65536 \
      --lengths 32768 131072 --ruler-lengths 32768 131072 --ruler-samples 12 \
      --out $OUT/accuracy_chunk64k.json
  done
}

N2_floor_chunk() {  # adaptive over the x0.25 fixed floor (closest to dense answers) in 64K chunks
  timeout 250 python3 $B/bench_ttft.py --backend minference --mode adaptive $AFLOOR \
    --lengths 131072 524288 1048576 --max-num-batched-tokens 65536 --out $OUT/ttft_chunk64k.json
  timeout 300 python3 $B/bench_ttft.py --backend FLASH_ATTN --lengths 131072 524288 1048576 \
    --max-num-batched-tokens 65536 --out $OUT/ttft_chunk64k.json
}

N3_default_settings() {  # issue 5's "default budgets" with every default (min_sparse_len 64K:
  # the first half of a 128K prompt dense); the 12-sample run of 2026-11-26 forced sparse from 4K
  timeout 250 python3 $B/bench_accuracy.py --backend minference --mode fixed $RULER128 \
    --out $OUT/accuracy12_128k_defaults.json
}

# Session of 2026-11-26 (sixth): the density guard carries keys per row from step to step
# (a layer too dense on a prompt's first 64K chunk used to stay dense for the whole prompt);
# isolated diagonals on the Triton pass (fa3_min_run).  MIN_RUN picks fa3_min_run for M2/M3.
RUN_SET="--set fa3_min_run=${MIN_RUN:-1}"
M1_check() {  # GPU tests (real FA3 against the reference) + kernels 128K, fa3_min_run 1/2/4
  gpu_tests 150 $PWD/tests/test_page_lists.py $PWD/tests/test_compile_variants.py
  timeout 260 python3 $B/bench_kernels.py --seq-lens 131072 --no-random \
    --patterns vertical_slash --kernels triton,fa3,fa3/run2,fa3/run4 --out $OUT/kernels.json
}
M2_ttft() {  # vLLM's default 16K chunks: 4K/8K (never slower) and 128K
  for cfg in "FLASH_ATTN" "minference --mode fixed $RUN_SET" "minference --mode fixed $TRITON"; do
    timeout 120 python3 $B/bench_ttft.py --backend $cfg --lengths 4096 8192 131072 \
      --out $OUT/ttft.json
  done
  [ "${MIN_RUN:-1}" = 1 ] || timeout 90 python3 $B/bench_ttft.py --backend minference \
    --mode fixed --set fa3_min_run=1 --lengths 131072 --out $OUT/ttft.json
}
M3_long() {  # 128K and 1M in 64K chunks: FLASH_ATTN, fixed, adaptive + floors
  timeout 210 python3 $B/bench_ttft.py --backend FLASH_ATTN --lengths 131072 1048576 \
    --max-num-batched-tokens 65536 --out $OUT/ttft_chunk64k.json
  for cfg in "--mode fixed $RUN_SET" "--mode adaptive $FLOORS"; do
    timeout 150 python3 $B/bench_ttft.py --backend minference $cfg --lengths 131072 1048576 \
      --max-num-batched-tokens 65536 --out $OUT/ttft_chunk64k.json
  done
}
M4_defaults() {  # accuracy at 128K with every default (dense 128K cells: L0 of 2026-11-26d)
  timeout 270 python3 $B/bench_accuracy.py --backend minference --mode fixed $RULER128 \
    --out $OUT/accuracy12_128k_defaults.json
  for b in FLASH_ATTN minference; do
    timeout 90 python3 $B/bench_ttft.py --backend $b --decode --out $OUT/decode.json
  done
}
M5_kernels_1m() {  # kernels at 1M, fa3_min_run 1/2 (Llama-3-8B shape replay included)
  timeout 450 python3 $B/bench_kernels.py --seq-lens 1048576 --layers 3 --no-random \
    --patterns vertical_slash --kernels fa3,fa3/run2 --out $OUT/kernels_1m.json
}
M6_profile() {  # where the fa3 time goes (stages of one call, 128K); random attention
  # (dummy Llama-3-8B shape, 32 layers) at 128K with the keys-per-row guard
  timeout 110 python3 $B/bench_kernels.py --seq-lens 131072 --no-random \
    --patterns vertical_slash --kernels fa3 --out $OUT/kernels_stages.json
  for cfg in "FLASH_ATTN" "minference --mode fixed"; do
    timeout 95 python3 $B/bench_ttft.py --backend $cfg --model-kind dummy-llama \
      --lengths 131072 --reps 1 --out $OUT/ttft_dummy.json
  done
}
X1_steps() {  # next session: a 1M prompt step by step in 64K chunks (kernel level) against
  # one pass (6.3x) and vLLM (4.3x); kernels 128K with the geometry built once per step
  timeout 330 python3 $B/bench_chunked.py --seq-len 1048576 --chunk 65536 --layers 3 \
    --kernels fa3,triton --out $OUT/chunked_1m.json
  timeout 200 python3 $B/bench_kernels.py --seq-lens 131072 --no-random \
    --patterns vertical_slash --kernels triton,fa3 --out $OUT/kernels.json
}
T1_trace() {  # seventh session: where TTFT goes, per step and layer (the backend's trace)
  for cfg in "fixed_1m --mode fixed" "adaptive_1m --mode adaptive $FLOORS"; do
    set -- $cfg
    timeout 170 python3 $B/bench_ttft.py --backend minference ${@:2} --lengths 1048576 \
      --max-num-batched-tokens 65536 --set trace=$LOGS/trace_$1.jsonl --out $OUT/ttft_trace.json
  done
  timeout 100 python3 $B/bench_ttft.py --backend minference --mode fixed --lengths 131072 \
    --set trace=$LOGS/trace_fixed_128k.jsonl --out $OUT/ttft_trace.json
  for t in $LOGS/trace_*.jsonl; do python3 $B/trace_steps.py $t > ${t%.jsonl}.md; done
}
# Seventh session, after the trace: the guard waits for a step's own density where its
# prediction is unsure (new prompt, large jump, close call) instead of fitting a growth.
V1_long() {  # 128K and 1M in 64K chunks: FLASH_ATTN, fixed, adaptive + floors (traced)
  timeout 210 python3 $B/bench_ttft.py --backend FLASH_ATTN --lengths 131072 1048576 \
    --max-num-batched-tokens 65536 --out $OUT/ttft_chunk64k.json
  for cfg in "fixed --mode fixed" "adaptive --mode adaptive $FLOORS"; do
    set -- $cfg
    timeout 150 python3 $B/bench_ttft.py --backend minference ${@:2} --lengths 131072 1048576 \
      --max-num-batched-tokens 65536 --set trace=$LOGS/trace_$1.jsonl --out $OUT/ttft_chunk64k.json
    python3 $B/trace_steps.py $LOGS/trace_$1.jsonl > $LOGS/trace_$1.md
  done
}
V2_short() {  # vLLM's default 16K chunks (4K/8K/128K); random attention (dummy Llama 128K)
  for cfg in "FLASH_ATTN" "minference --mode fixed"; do
    timeout 110 python3 $B/bench_ttft.py --backend $cfg --lengths 4096 8192 131072 \
      --out $OUT/ttft.json
  done
  for cfg in "FLASH_ATTN" "minference --mode fixed"; do  # both hit this 95 s limit
    timeout 95 python3 $B/bench_ttft.py --backend $cfg --model-kind dummy-llama \
      --lengths 131072 --reps 1 --out $OUT/ttft_dummy.json
  done
}
V4_dummy() {  # 95 s per run was too short in V2 (start-up + warm-ups of 32 layers)
  for cfg in "FLASH_ATTN" "minference --mode fixed"; do
    timeout 170 python3 $B/bench_ttft.py --backend $cfg --model-kind dummy-llama \
      --lengths 131072 --reps 1 --out $OUT/ttft_dummy.json
  done
}
V3_steps() {  # a 1M prompt step by step at kernel level: fixed on fa3, adaptive on triton
  timeout 200 python3 $B/bench_chunked.py --seq-len 1048576 --chunk 65536 --layers 3 \
    --kernels fa3 --out $OUT/chunked_1m_fixed.json
  timeout 150 python3 $B/bench_chunked.py --seq-len 1048576 --chunk 65536 --layers 3 \
    --kernels triton --pattern vertical_slash_adaptive --out $OUT/chunked_1m_adaptive.json
}
W1_estimate() {  # eighth session: the estimate's row statistics from one FA3 call vs the
  # first Triton pass (GPU test against the two passes, then a 1M prompt step by step)
  gpu_tests 120 $PWD/tests/test_vertical_slash.py -k "fa3_row or estimate"
  for stats in triton fa3; do
    timeout 150 python3 $B/bench_chunked.py --seq-len 1048576 --chunk 65536 --layers 3 \
      --kernels triton --pattern vertical_slash_adaptive --estimate-stats $stats \
      --out $OUT/chunked_1m_adaptive_$stats.json
  done
  # fixed budgets, keys FA3 computes per step (page density), isolated diagonals on Triton
  timeout 200 python3 $B/bench_chunked.py --seq-len 1048576 --chunk 65536 --layers 3 \
    --kernels fa3,fa3/run2 --estimate-stats fa3 --out $OUT/chunked_1m_fixed_fa3.json
}
W2_ttft() {  # eighth session: TTFT with the FA3 estimate statistics, 128K and 1M in 64K chunks
  timeout 210 python3 $B/bench_ttft.py --backend FLASH_ATTN --lengths 131072 1048576 \
    --max-num-batched-tokens 65536 --out $OUT/ttft_chunk64k.json
  for cfg in "--mode adaptive $FLOORS" "--mode fixed"; do
    timeout 150 python3 $B/bench_ttft.py --backend minference $cfg --set estimate_stats=fa3 \
      --lengths 131072 1048576 --max-num-batched-tokens 65536 --out $OUT/ttft_chunk64k.json
  done
  timeout 150 python3 $B/bench_ttft.py --backend minference --mode adaptive $FLOORS \
    --lengths 131072 1048576 --max-num-batched-tokens 65536 --out $OUT/ttft_chunk64k.json
}
W3_default_chunks() {  # vLLM's default 16K chunks with the FA3 estimate statistics
  for cfg in "FLASH_ATTN" "minference --mode fixed --set estimate_stats=fa3"; do
    timeout 120 python3 $B/bench_ttft.py --backend $cfg --lengths 4096 8192 131072 \
      --out $OUT/ttft.json
  done
}
# Eighth session, second lease: FA3 row statistics saved nothing (W1), so where does the
# estimate's time go?  Each pass on its own for several launch options, the loop without its
# branch (first tile's diagonals added after it) against the package before that change
# (its wheel in .whl/old/), then TTFT in adaptive mode where the estimate is a third.
E1_estimate() {
  timeout 150 python3 $B/tune_estimate.py --seq-lens 131072 1048576 \
    --out $OUT/tune_estimate.json
  tune_estimate_before 70
  timeout 110 python3 $B/bench_ttft.py --backend minference --mode adaptive $FLOORS \
    --lengths 131072 1048576 --max-num-batched-tokens 65536 --out $OUT/ttft_chunk64k.json
  timeout 100 python3 $B/bench_ttft.py --backend minference --mode fixed \
    --lengths 131072 1048576 --max-num-batched-tokens 65536 --out $OUT/ttft_chunk64k.json
}
# Next session: is fixed-budget accuracy at 128K within a point of dense?  12 samples per
# cell (sixth session: 3 prompts higher, 8 lower of 70, p = 0.23) cannot tell; these add 24
# new RULER samples and two new passkey seeds per cell (118 prompts), paired prompt by prompt
# with the same prompts on FLASH_ATTN; copy L1-M4/L0 files of raw-h100x1-2026-11-26e next to
# them so that summarize_results' sign test counts all 188 prompts.
MORE128="--lengths 131072 --ruler-lengths 131072 --seeds 2 3 --ruler-first-sample 12 --ruler-samples 24"
A1_dense128_more() {
  timeout 560 python3 $B/bench_accuracy.py --backend FLASH_ATTN $MORE128 \
    --out $OUT/accuracy_128k_more.json
}
A2_fixed128_more() {  # every default (min_sparse_len 64K, 16K chunks), as in M4
  timeout 560 python3 $B/bench_accuracy.py --backend minference --mode fixed $MORE128 \
    --out $OUT/accuracy_128k_more_defaults.json
}

# Ninth session: pass 2 of the estimate on 2 warps.  Z1 (lease 2) also timed a radix-select
# top-k kernel (one program per row, tl.histogram): 9.9 ms at 1M keys against torch.topk's
# 1.2, so it was taken out again before Z2-Z4 (lease 3).  Each part of the estimate against
# the package before (its wheel in .whl/old/, commit 5285a5c), then TTFT against
# FLASH_ATTN in the same lease.
Z1_estimate() {
  # (lease 2 also ran tests/test_select_fixed.py, the radix kernel's, taken out since)
  gpu_tests 150 $PWD/tests/test_select_adaptive_fused.py $PWD/tests/test_vertical_slash.py
  timeout 120 python3 $B/tune_estimate.py --seq-lens 131072 1048576 --options s4096w4:w2 \
    --label current --out $OUT/tune_estimate.json
  tune_estimate_before 100
}
Z4_steps() {  # kernel level: a 1M prompt step by step (adaptive), issue 3's 128K table
  timeout 150 python3 $B/bench_chunked.py --seq-len 1048576 --chunk 65536 --layers 3 \
    --kernels triton --pattern vertical_slash_adaptive --out $OUT/chunked_1m_adaptive.json
  timeout 300 python3 $B/bench_kernels.py --seq-lens 131072 \
    --patterns vertical_slash,vertical_slash_adaptive --out $OUT/kernels.json
}
# Lease 4: adaptive mode's estimate summing 64-key chunk masses instead of diagonals (four
# weighted tile sums instead of the skewed gather; commit 18dd337): GPU tests passed, but
# pass 2 took 3.07 ms at 1M keys against the gather's 2.00, so it was reverted (Y2 not run).
Y1_chunks() {
  gpu_tests 150 $PWD/tests/test_vertical_slash.py $PWD/tests/test_select_adaptive_fused.py
  timeout 90 python3 $B/tune_estimate.py --seq-lens 131072 1048576 --options s4096w4:w2 \
    --label chunks --out $OUT/tune_estimate.json
  timeout 150 python3 $B/bench_chunked.py --seq-len 1048576 --chunk 65536 --layers 3 \
    --kernels triton --pattern vertical_slash_adaptive --out $OUT/chunked_1m_adaptive.json
}
Z2_ttft() {  # 128K and 1M in 64K chunks: both modes
  timeout 210 python3 $B/bench_ttft.py --backend FLASH_ATTN --lengths 131072 1048576 \
    --max-num-batched-tokens 65536 --out $OUT/ttft_chunk64k.json
  for cfg in "--mode adaptive $FLOORS" "--mode fixed"; do
    timeout 150 python3 $B/bench_ttft.py --backend minference $cfg \
      --lengths 131072 1048576 --max-num-batched-tokens 65536 --out $OUT/ttft_chunk64k.json
  done
}
Z3_default_chunks() {  # vLLM's default 16K chunks, every default
  for cfg in "FLASH_ATTN" "minference --mode fixed"; do
    timeout 120 python3 $B/bench_ttft.py --backend $cfg --lengths 4096 8192 131072 \
      --out $OUT/ttft.json
  done
}

# Next session: where fixed budgets' multivalue loss at 128K moves (-4.9 points, 1 higher /
# 7 lower of 36 prompts): the same 36 multivalue prompts (samples 0-35; FLASH_ATTN's and the
# default's answers are in raw-h100x1-2026-11-26h) at twice and half the profile budgets.
# Lease 5 of the ninth session ran out of device time inside it with nothing back: 200 s
# per run was too short for a cold start, the prompts and 36 prefills of 128K.
MULTIVALUE128() {  # MULTIVALUE128 SECONDS NAME ARGS...: the 36 multivalue prompts at 128K,
  # fixed budgets and ARGS, into accuracy_128k_multivalue_NAME.json
  local limit=$1 name=$2; shift 2
  timeout $limit python3 $B/bench_accuracy.py --backend minference --mode fixed "$@" \
    --lengths 131072 --ruler-lengths 131072 --ruler-samples 36 --tasks multivalue \
    --out $OUT/accuracy_128k_multivalue_$name.json
}
B1_budgets() {
  for scale in 2.0 0.5; do MULTIVALUE128 280 budgets --budget-scale $scale; done
}

# Tenth session: does exact attention for the question rows keep the multi-needle answers?
# (D1, D2, J1, J2 need the package of commit f8722c3: the dense_tail and estimate_windows
# settings they test kept no answers and were taken out again, see HISTORY.)
# dense_tail=64 recomputes the last 64 rows of every sparse chunk (the estimate's rows; at a
# prompt's end, its question) with dense FlashAttention.  D1: fixed budgets, the 36
# multivalue prompts of A1/A2 (dense and fixed answers in raw-h100x1-2026-11-26h).  D2:
# adaptive + A-shape floors, sparse from 4K, the 12-sample multivalue cells of
# raw-h100x1-2026-11-26c (dense: L1-accuracy12-R1, L2-accuracy12_128k-Q1; adaptive without
# the tail: L1-accuracy12-R2, L2-accuracy12_128k-A).
D1_tail_fixed() { MULTIVALUE128 265 tail --set dense_tail=64; }
D2_tail_adaptive() {
  timeout 270 python3 $B/bench_accuracy.py --backend minference --min-sparse-len 4096 \
    --mode adaptive $FLOORS --set dense_tail=64 --lengths 16384 \
    --ruler-lengths 16384 32768 131072 --ruler-samples 12 --tasks multivalue multikey \
    --out $OUT/accuracy_multivalue_tail_adaptive.json
}
# Lease 1 (D2): the tail kept nothing: adaptive multivalue 56.2 / 50.0 / 29.2 at 16K / 32K /
# 128K (without it 47.9 / 47.9 / 29.2, dense 91.7 / 70.8 / 58.3), and the sparse answers
# list the *later* needles first and miss the earlier ones even with exact question rows.
# So the loss is in the rows before the question.  J1: the same cells in 2K chunks (each
# chunk's estimate from its own last rows) and with 4 estimate windows per chunk.
ADAPTIVE16="--backend minference --min-sparse-len 4096 --mode adaptive $FLOORS --lengths 16384"
J1_windows() {
  timeout 130 python3 $B/bench_accuracy.py $ADAPTIVE16 --max-num-batched-tokens 2048 \
    --ruler-lengths 16384 32768 --ruler-samples 12 --tasks multivalue multikey \
    --out $OUT/accuracy_adaptive_chunk2k.json
  timeout 150 python3 $B/bench_accuracy.py $ADAPTIVE16 --set estimate_windows=4 \
    --ruler-lengths 16384 32768 131072 --ruler-samples 12 --tasks multivalue multikey \
    --out $OUT/accuracy_adaptive_windows4.json
}
J2_windows_fixed() {  # fixed budgets, every default, 4 windows: the 36 prompts of D1/A2
  MULTIVALUE128 270 windows4 --set estimate_windows=4
}
# Lease 2: fixed budgets x2 gave multivalue 59.7 against dense 61.1 (0 higher / 2 lower of
# 36; every default: 56.2, 1 / 7); 4 estimate windows 53.5 (0 / 9), adaptive + 4 windows or
# in 2K chunks kept little more than before.  U1-U2: which half of the doubled budget keeps
# the answers (every head 2000/6096 or 1000/12192) and whether exact question rows do
# (dense_tail with fixed budgets; in adaptive mode they did not).
UNIFORM() {  # UNIFORM COLUMNS DIAGONALS: fixed budgets from a uniform profile, 36 prompts
  python3 $B/make_uniform_profile.py 24 14 $1 $2 /tmp/vs-$1-$2.json
  MULTIVALUE128 265 vs$1-$2 --set profile=/tmp/vs-$1-$2.json
}
U1_columns() { D1_tail_fixed; UNIFORM 2000 6096; }
U2_diagonals() { UNIFORM 1000 12192; }
# Lease 3: doubled diagonals kept the answers (59.0), doubled columns did not (56.2), exact
# question rows a little (57.6).  U3/U4: adaptive mode with a wider local band (lease 3 ran
# these, L1 and L2 as the same commands typed out, before they were lanes).
U3_local() {
  timeout 200 python3 $B/bench_accuracy.py $ADAPTIVE16 --set adaptive_local=4096 \
    --ruler-lengths 16384 32768 131072 --ruler-samples 12 --tasks multivalue multikey \
    --out $OUT/accuracy_adaptive_local4096.json
}
U4_local() {
  timeout 200 python3 $B/bench_accuracy.py $ADAPTIVE16 --set adaptive_local=8192 \
    --ruler-lengths 32768 131072 --ruler-samples 12 --tasks multivalue multikey \
    --out $OUT/accuracy_adaptive_local8192.json
}
L1_ttft() {  # vLLM's default chunks with the fused selection; doubled diagonals' price
  Z3_default_chunks
  python3 $B/make_uniform_profile.py 24 14 1000 12192 /tmp/vs-1000-12192.json
  timeout 110 python3 $B/bench_ttft.py --backend minference --mode fixed \
    --set profile=/tmp/vs-1000-12192.json --lengths 131072 --out $OUT/ttft.json
}
# Next session: a wider local band inside the same diagonal budget (fixed_local: the first
# N diagonals forced, the other 6096 - N the estimate's top ones), which costs less than
# doubled diagonals (contiguous runs are the page lists' cheapest keys).  F1: the 36
# multivalue prompts at 128K (dense 61.1, default 56.2, 1000/12192 59.0); F2: its TTFT.
F1_local_band() {
  for band in 2048 4096; do MULTIVALUE128 265 local --set fixed_local=$band; done
}
F4_band_only() {  # the whole diagonal budget as one local band: do far diagonals matter?
  MULTIVALUE128 265 local --set fixed_local=6096
}
# Heads-fastest grid order (estimate passes and the Triton kernel; off by default until
# timed): the 7 query heads of a KV head then read a key split / shared tiles together from
# L2.  Pass 1 reads 14 x 1M keys of 128 B per 1M-key estimate, ~1.8 GB, if every head
# re-reads from HBM; the 1M adaptive prompt needs ~2% for issue 6's 20x.
F5_heads_fast() {  # (needs the package of commit 8f4e683: measured no faster, taken out again)
  timeout 100 python3 $B/tune_estimate.py --seq-lens 131072 1048576 --options default \
    --label blocks-fast --out $OUT/tune_estimate.json
  timeout 100 python3 $B/tune_estimate.py --seq-lens 131072 1048576 --options default \
    --label heads-fast --heads-fast --out $OUT/tune_estimate.json
  for flag in "" "--heads-fast"; do
    timeout 150 python3 $B/bench_chunked.py --seq-len 1048576 --chunk 65536 --layers 3 \
      --kernels triton --pattern vertical_slash_adaptive $flag \
      --out $OUT/chunked_1m_adaptive${flag:+_heads_fast}.json
  done
}
# Eleventh session: is it the chunk's own estimate?  In one 128K step the estimate reads the
# question's rows (MInference's setting); in 16K chunks each chunk's last 64 rows are filler.
G1_one_step() {
  MULTIVALUE128 290 onestep --max-num-batched-tokens 131072
}
G2_one_step_ttft() {  # the price of one 128K step, against FLASH_ATTN in the same step size
  for cfg in "FLASH_ATTN" "minference --mode fixed"; do
    timeout 120 python3 $B/bench_ttft.py --backend $cfg --lengths 131072 \
      --max-num-batched-tokens 131072 --out $OUT/ttft_onestep.json
  done
}
# G1 kept the answers in one step (59.7 vs 56.2 in 16K chunks, dense 61.1).  extra_blocks: each
# query block adds its own best far tiles by pooled Q.K, so rows whose needs the chunk's last
# rows miss still get them.  G3: 36 multivalue prompts in vLLM's default 16K chunks; G4: TTFT.
G3_extra_blocks() {
  gpu_tests 100 $PWD/tests/test_page_lists.py $PWD/tests/test_block_sparse_a_shape.py -k "extra or masked"
  for n in 8 32; do MULTIVALUE128 265 extra$n --set extra_blocks=$n; done
}
G4_extra_ttft() {
  for cfg in "FLASH_ATTN" "minference --mode fixed" "minference --mode fixed --set extra_blocks=8" \
             "minference --mode fixed --set extra_blocks=32"; do
    timeout 100 python3 $B/bench_ttft.py --backend $cfg --lengths 131072 --out $OUT/ttft.json
  done
}
G5_dense_one_step() {  # FLASH_ATTN's own spread: the same 36 prompts in one 128K step
  timeout 280 python3 $B/bench_accuracy.py --backend FLASH_ATTN --max-num-batched-tokens 131072 \
    --lengths 131072 --ruler-lengths 131072 --ruler-samples 36 --tasks multivalue \
    --out $OUT/accuracy_128k_multivalue_dense_onestep.json
}
G6_extra_all_tasks() {  # extra_blocks=32 on A1/A2's 118 prompts (every task at 128K)
  timeout 560 python3 $B/bench_accuracy.py --backend minference --mode fixed \
    --set extra_blocks=32 $MORE128 --out $OUT/accuracy_128k_more_extra32.json
}
G7_extra_first12() {  # the same on M4's 70 prompts (first 12 samples a cell): 188 in all
  timeout 280 python3 $B/bench_accuracy.py --backend minference --mode fixed \
    --set extra_blocks=32 $RULER128 --out $OUT/accuracy12_128k_extra32.json
}
# G3-G7: extra_blocks=32 kept most answers (188 prompts at 128K: 8 higher / 11 lower against
# dense, the default without it 10 / 16) for 1.336 -> 1.42 s; now fixed mode's default, its
# pooled scores on tl.dot, 16 blocks per program.  G8: their cost per chunk and the TTFT
# at 128K with and without; G9: a 1M prompt in 64K chunks.
G8_extra_cost() {
  gpu_tests 120 $PWD/tests/test_block_sparse_a_shape.py $PWD/tests/test_page_lists.py -k "extra or block or masked"
  timeout 100 python3 $B/tune_estimate.py --seq-lens 131072 1048576 --shapes 14/2/64,32/8/128 \
    --options default --extra-chunks 16384 65536 --label extra --out $OUT/tune_estimate.json
  for cfg in "FLASH_ATTN" "minference --mode fixed" "minference --mode fixed --set extra_blocks=0"; do
    timeout 100 python3 $B/bench_ttft.py --backend $cfg --lengths 131072 --out $OUT/ttft.json
  done
}
G9_extra_1m() {
  timeout 280 python3 $B/bench_ttft.py --backend minference --mode fixed --lengths 1048576 \
    --max-num-batched-tokens 65536 --out $OUT/ttft_chunk64k.json
}
# Next session: where the extra tiles' 15.7 ms (64K chunk at 1M keys, Qwen shape) go —
# pooling, the scores kernel or the top-k (tune_estimate now times each).
G10_extra_parts() {
  timeout 150 python3 $B/tune_estimate.py --seq-lens 131072 1048576 --shapes 14/2/64,32/8/128 \
    --options default --extra-chunks 16384 65536 --label extra-parts --out $OUT/tune_estimate.json
}
# Twelfth session: do the extra tiles keep adaptive mode's multi-needle answers too?
# (I1 runs with the package of commit 9cbf2a9: extra tiles from the sliced scores + torch.topk)
I1_adaptive_extra() {
  G10_extra_parts
  for n in 32 0; do
    MULTIVALUE128 280 adaptive_extra$n --mode adaptive --set extra_blocks=$n
  done
}
# I2, I3: the extra tiles ranked in two levels (best score per 16-tile bucket, then the tiles
# of the best buckets), against the package before it in .whl/old/ (commit 9cbf2a9).  Lease 2
# ran I2 with commit db62ebe (a bitonic tl.topk merge in registers: 11.0 vs 15.8 ms at 1M)
EXTRA_TUNE="--seq-lens 131072 1048576 --shapes 14/2/64,32/8/128 --options default --extra-chunks 16384 65536"
I2_fused_topk() {
  gpu_tests 120 $PWD/tests/test_block_sparse_a_shape.py $PWD/tests/test_plan.py -k "extra"
  timeout 110 python3 $B/tune_estimate.py $EXTRA_TUNE --label buckets --out $OUT/tune_estimate.json
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/old-site \
    .whl/old/vllm_minference-*.whl > /dev/null 2>&1
  PYTHONPATH=/tmp/old-site:$PYTHONPATH timeout 110 python3 $B/tune_estimate.py $EXTRA_TUNE \
    --label before --out $OUT/tune_estimate.json
  for cfg in "FLASH_ATTN" "minference --mode fixed" "minference --mode fixed --set extra_blocks=0"; do
    timeout 100 python3 $B/bench_ttft.py --backend $cfg --lengths 131072 --out $OUT/ttft.json
  done
}
I3_fused_topk_1m() {  # 1M in 64K chunks, FLASH_ATTN in the same lease; adaptive with extra tiles
  for cfg in "FLASH_ATTN" "minference --mode fixed" \
             "minference --mode adaptive --set extra_blocks=32"; do
    timeout 230 python3 $B/bench_ttft.py --backend $cfg --lengths 1048576 \
      --max-num-batched-tokens 65536 --out $OUT/ttft_chunk64k.json
  done
  timeout 80 python3 $B/bench_ttft.py --backend minference --mode adaptive --set extra_blocks=32 \
    --lengths 131072 --max-num-batched-tokens 65536 --out $OUT/ttft_chunk64k.json
}
I4_buckets_1m() {  # I2's kernel timings with 3xTF32 bucket maxima over 64 blocks, then I3
  gpu_tests 60 $PWD/tests/test_block_sparse_a_shape.py $PWD/tests/test_plan.py -k "extra"
  timeout 110 python3 $B/tune_estimate.py $EXTRA_TUNE --label buckets-tf32x3 --out $OUT/tune_estimate.json
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/old-site \
    .whl/old/vllm_minference-*.whl > /dev/null 2>&1
  PYTHONPATH=/tmp/old-site:$PYTHONPATH timeout 110 python3 $B/tune_estimate.py $EXTRA_TUNE \
    --label before --out $OUT/tune_estimate.json
  I3_fused_topk_1m
}
I6_ttft_128k() {  # TTFT at 128K in vLLM's default chunks with the two-level extra tiles
  for cfg in "minference --mode fixed" "FLASH_ATTN" "minference --mode fixed --set extra_blocks=0"; do
    timeout 110 python3 $B/bench_ttft.py --backend $cfg --lengths 131072 --out $OUT/ttft.json
  done
}
I7_kernels_extra() {  # next session: issue 3's 128K table with fixed mode's default extra tiles
  timeout 280 python3 $B/bench_kernels.py --seq-lens 131072 --patterns vertical_slash \
    --extra-blocks 32 --out $OUT/kernels_extra32.json
  timeout 280 python3 $B/bench_kernels.py --seq-lens 131072 --patterns vertical_slash \
    --no-random --out $OUT/kernels.json
}
# Thirteenth session: the extra tiles' second ranking inside one kernel (the far scores kept,
# the chosen buckets' tiles ranked in registers), against the two-level package of commit
# 8e5f745 in .whl/old/ (two earlier tries, a third level of 4-tile sub-buckets rescored from
# the pooled keys, ran in leases 1-3: commits 17f549b-c7afe2b)
O1_rank3() {  # no gpu-kit needed: kernels only
  gpu_tests 120 $PWD/tests/test_block_sparse_a_shape.py $PWD/tests/test_plan.py -k "extra"
  timeout 150 python3 $B/tune_estimate.py $EXTRA_TUNE --no-estimate --label scores-kept \
    --rank-launches 1/2 2/1 --slice-mbs 64 256 512 1024 --out $OUT/tune_estimate.json
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/old-site \
    .whl/old/vllm_minference-*.whl > /dev/null 2>&1
  PYTHONPATH=/tmp/old-site:$PYTHONPATH timeout 120 python3 $B/tune_estimate.py $EXTRA_TUNE \
    --no-estimate --label two-level --out $OUT/tune_estimate.json
}
O2_kernels_extra() {  # issue 3's 128K table with fixed mode's default extra tiles (real lists)
  timeout 300 python3 $B/bench_kernels.py --seq-lens 131072 --patterns vertical_slash \
    --no-random --extra-blocks 32 --out $OUT/kernels_extra32.json
}
O3_ttft_128k() {  # TTFT at 128K in vLLM's default chunks, with and without the extra tiles
  I6_ttft_128k
}
TTFT1M_64K() {  # TTFT1M_64K SECONDS BACKEND ARGS...: the 1M prompt in 64K prefill chunks,
  # into ttft_chunk64k.json
  local limit=$1; shift
  timeout $limit python3 $B/bench_ttft.py --backend "$@" --lengths 1048576 \
    --max-num-batched-tokens 65536 --out $OUT/ttft_chunk64k.json
}
TRACED_1M() {  # TRACED_1M NAME SECONDS ARGS...: TTFT1M_64K of minference ARGS with the trace
  # in $LOGS/NAME.jsonl, summed per step into $LOGS/NAME.md (trace_steps.py)
  local name=$1 limit=$2; shift 2
  TTFT1M_64K $limit minference "$@" --set trace=$LOGS/$name.jsonl
  python3 $B/trace_steps.py $LOGS/$name.jsonl > $LOGS/$name.md 2>&1
}
O4_ttft_1m() {  # 1M in 64K chunks, fixed mode (every default), FLASH_ATTN in the same lease
  TTFT1M_64K 230 minference --mode fixed
  TTFT1M_64K 230 FLASH_ATTN
}
O5_multivalue() {  # the 36 multivalue prompts at 128K with every default: same answers?
  MULTIVALUE128 280 extra32_ranked
}
O6_adaptive_variants() {  # adaptive mode's multivalue answers at 128K: what closes the gap?
  # (twelfth session: adaptive 29.2, + extra_blocks=32 43.8, fixed + 32 59.7, dense 61.1)
  MULTIVALUE128 190 adaptive_extra32_local4096 --mode adaptive --set extra_blocks=32 \
    --set adaptive_local=4096
  MULTIVALUE128 190 adaptive_extra64_local4096 --mode adaptive --set extra_blocks=64 \
    --set adaptive_local=4096
  MULTIVALUE128 190 adaptive_g099_extra32 --mode adaptive --set extra_blocks=32 --set gamma=0.99
}
O7_block_sparse() {  # no gpu-kit needed: Block-Sparse lists ranked vs from the full scores
  gpu_tests 120 $PWD/tests/test_block_sparse_a_shape.py $PWD/tests/test_warmup.py
  timeout 200 python3 $B/tune_estimate.py --seq-lens 131072 1048576 --shapes 14/2/64,32/8/128 \
    --options default --no-estimate --block-sparse-chunks 16384 65536 --label ranked \
    --out $OUT/tune_estimate.json
}
# Fourteenth session: the page lists' queries gathered in one pass; issue 3's 1M row with
# the extra tiles; serving under load with today's defaults (the last load test, 2026-11-25,
# ran adaptive mode)
P1_kernels_128k() {  # GPU tests of the page lists (real FA3), then issue 3's 128K table,
  # with the short diagonal runs on the packed Triton pass (fa3/runN) beside it
  gpu_tests 150 $PWD/tests/test_page_lists.py
  timeout 400 python3 $B/bench_kernels.py --seq-lens 131072 --patterns vertical_slash \
    --no-random --extra-blocks 32 --kernels triton,fa3,fa3/run2,fa3/run3 \
    --out $OUT/kernels_extra32.json
}
P7_serving_guard() {  # P3 again after the guard's cross-prompt rule (a layer found clearly
  # too dense with at least as many keys skips planning in later prompts); then the default
  # server once more, traced, to count which path each layer-step took
  serving_pair
  timeout 150 python3 $B/check_serving.py --configs minference --load --skip-functional \
    --set trace="$LOGS/trace-{pid}.jsonl" --logdir $LOGS \
    --out $OUT/serving_traced.json > $LOGS/serving_traced.log 2>&1
  traced_paths $OUT/serving_traced_paths.txt
}
P8_ttft_128k() {  # TTFT at 128K in vLLM's default chunks; FLASH_ATTN first (a fresh
  # machine's first engine compiles for ~100 s: it timed out as the first run of O3)
  for cfg in "FLASH_ATTN" "minference --mode fixed" "minference --mode fixed --set extra_blocks=0"; do
    timeout 150 python3 $B/bench_ttft.py --backend $cfg --lengths 131072 --out $OUT/ttft.json
  done
}
P9_ttft_1m() {  # the 1M prompt in 64K chunks after the guard's cross-prompt rule (every
  # default; FLASH_ATTN's 104.54 s is the thirteenth session's: no device time was left for it)
  TTFT1M_64K 280 minference --mode fixed
}
# Fifteenth session: per-block lists from antidiagonal scores (mode "antidiagonal").
AD="--mode antidiagonal"
Q0_antidiagonal_tune() {  # GPU tests, then the estimate's parts and launch options (random
  # inputs, Qwen2.5-0.5B and Llama-3-8B shapes, 128K keys in one step and in a 16K chunk)
  gpu_tests 150 $PWD/tests/test_antidiagonal.py $PWD/tests/test_plan.py
  timeout 200 python3 $B/tune_antidiagonal.py --options w8n2 w4n2 w4n1 \
    --out $OUT/tune_antidiagonal.json
}
Q1_antidiagonal_kernels() {  # GPU tests of the estimate (bf16 on the GPU), then its density,
  # cost and attention time at 128K on the real model's captured Q/K, beside the fixed lists
  gpu_tests 200 $PWD/tests/test_antidiagonal.py $PWD/tests/test_plan.py
  timeout 300 python3 $B/bench_kernels.py --seq-lens 131072 --no-random \
    --patterns vertical_slash,antidiagonal --tau 0.9 --stride 8 --kernels triton,fa3 \
    --out $OUT/kernels_antidiagonal.json
}
Q2_antidiagonal_multivalue() {  # the 36 multivalue prompts at 128K (dense: 61.1, eleventh);
  # (on a fresh machine the first run, tau=0.9, spent its 200 s compiling: no rows)
  MULTIVALUE128 200 antidiagonal_t090 $AD --set tau=0.9
  MULTIVALUE128 200 antidiagonal_t095 $AD --set tau=0.95
}
Q3_antidiagonal_ttft() {  # TTFT at 128K in vLLM's default chunks, FLASH_ATTN first;
  # antidiagonal at tau=$TAU, sparse from 64K (the default) and from 32K
  for cfg in "FLASH_ATTN" "minference $AD --set tau=$TAU" \
      "minference $AD --set tau=$TAU --min-sparse-len 32768"; do
    timeout 150 python3 $B/bench_ttft.py --backend $cfg --lengths 131072 --out $OUT/ttft.json
  done
}
Q5_antidiagonal_shapes() {  # next: more rows per key load (the partials ran 12.1 ms at 128K,
  # Qwen shape, 64 x 64; 84-108 ms at Llama-3-8B's, 32 x 32 rows x key groups)
  timeout 260 python3 $B/tune_antidiagonal.py --shapes 14/2/64 --strides 8 \
    --options w8n2 r128k32w8n2 r128k32w8n3 r128k16w8n2 r64k32w4n2 \
    --out $OUT/tune_antidiagonal_qwen.json
  timeout 260 python3 $B/tune_antidiagonal.py --shapes 32/8/128 --strides 8 \
    --options w4n1 r64k16w8n2 r64k16w4n2 r64k32w8n1 r128k16w8n1 \
    --out $OUT/tune_antidiagonal_llama.json
}
Q4_antidiagonal_multivalue() {  # Q2 at higher tau (0.95 kept 57.6 of dense's 61.1); the
  # first run also compiles on a fresh machine
  MULTIVALUE128 260 antidiagonal_t098 $AD --set tau=0.98
  MULTIVALUE128 200 antidiagonal_t099 $AD --set tau=0.99
}
# Sixteenth session: the estimate's partials kernel as a GEMM (an inner loop over the
# stride: [rows, D] x [D, key groups] per step, wider tensor-core tiles) against the
# row-group-resident form (Q5's shapes); then TTFT and multivalue with the fastest option.
AD_LAUNCH_FILE=/tmp/antidiagonal_launch.txt  # AD1's pick, read by AD2/AD3 on the same machine
AD1_inner_loop() {
  gpu_tests 120 $PWD/tests/test_antidiagonal.py -k "shares or agree or exactly"
  timeout 150 python3 $B/tune_antidiagonal.py --shapes 14/2/64 --strides 8 \
    --options w8n2 r128k32w8n2 iw8n3 ir128k128w8n3 ir128k64w4n3 ir256k64w8n3 ir64k64w4n3 \
    --out $OUT/tune_antidiagonal_qwen.json
  python3 $B/tune_antidiagonal.py --shapes 14/2/64 --strides 8 \
    --best $OUT/tune_antidiagonal_qwen.json > $AD_LAUNCH_FILE 2>> $OUT/gpu_tests.log \
    || rm -f $AD_LAUNCH_FILE
  timeout 60 python3 $B/tune_antidiagonal.py --shapes 14/2/64 --strides 16 \
    --options w4n1 iw8n3 ir128k128w8n3 --out $OUT/tune_antidiagonal_qwen_s16.json
  timeout 150 python3 $B/tune_antidiagonal.py --shapes 32/8/128 --strides 8 \
    --options w4n1 r64k16w8n2 iw8n3 ir128k128w8n3 ir256k64w8n2 ir64k64w4n3 \
    --out $OUT/tune_antidiagonal_llama.json
}
ad_launch() {  # "--set antidiagonal_launch=<AD1's pick>", nothing without AD1 (defaults)
  local pick=$(cat $AD_LAUNCH_FILE 2>/dev/null)
  echo ${pick:+--set antidiagonal_launch=$pick}
}
AD2_ttft() {  # TTFT at 128K in vLLM's default chunks: FLASH_ATTN, antidiagonal at tau=$TAU
  # (default 0.98) with AD1's launch, sparse from 64K (the default) and from 32K
  local adl=$(ad_launch)
  for cfg in "FLASH_ATTN" "minference $AD --set tau=${TAU:-0.98} $adl" \
      "minference $AD --set tau=${TAU:-0.98} $adl --min-sparse-len 32768"; do
    timeout 160 python3 $B/bench_ttft.py --backend $cfg --lengths 131072 --out $OUT/ttft.json
  done
}
AD3_multivalue() {  # 36 multivalue prompts at 128K (dense 61.1, eleventh session; tau 0.98
  # alone 59.0): tau 0.98 with the pooled far tiles of fixed mode, and tau 0.99
  local adl=$(ad_launch)
  MULTIVALUE128 250 antidiagonal_t098_extra32 $AD --set tau=0.98 --set extra_blocks=32 $adl
  MULTIVALUE128 220 antidiagonal_t099 $AD --set tau=0.99 $adl
}
# Lease 1 (2026-11-27b) then ran these as the same commands typed out (budget left after
# AD1-AD3): fixed mode's TTFT beside AD2's FLASH_ATTN, and sparse from 32K.  AD1 picked
# r128k32w8n2 (now the default at Qwen2.5-0.5B's shape: the setting is no longer needed).
AD4_sparse32k() {
  local adl=$(ad_launch) s32="--min-sparse-len 32768"
  for cfg in "--mode fixed" "$AD --set tau=0.9 $adl $s32"; do
    timeout 150 python3 $B/bench_ttft.py --backend minference $cfg --lengths 131072 \
      --out $OUT/ttft.json
  done
  timeout 120 python3 $B/bench_ttft.py --backend minference $AD --set tau=0.98 \
    --set extra_blocks=32 $adl $s32 --lengths 131072 --out $OUT/ttft.json
  MULTIVALUE128 260 antidiagonal_t098_extra32_sparse32k $AD --set tau=0.98 \
    --set extra_blocks=32 $adl $s32
  MULTIVALUE128 250 antidiagonal_t090_sparse32k $AD --set tau=0.9 $adl $s32
}
# Next session.  Tau 0.98 gave 1.61x at 128K (fixed 1.39x in the same lease) at fixed mode's
# multivalue score; before it can be a default: every task at 128K, random attention (the
# estimate is paid before the density guard sees near-dense lists), 1M, and stride 16
# (the GEMM-style estimate costs 0.14 of dense there, 0.20 at stride 8).
AD_T098="$AD --set tau=0.98 --set extra_blocks=32"
AD5_all_tasks() {  # M4's first 12 samples a cell (70 prompts; dense in 1126c/1126h)
  timeout 290 python3 $B/bench_accuracy.py --backend minference $AD_T098 $RULER128 \
    --out $OUT/accuracy12_128k_antidiagonal.json
  timeout 250 python3 $B/bench_accuracy.py --backend minference $AD_T098 \
    --set antidiagonal_stride=16 --lengths 131072 --ruler-lengths 131072 --ruler-samples 36 \
    --tasks multivalue --out $OUT/accuracy_128k_multivalue_antidiagonal_t098_s16.json
}
AD6_random_and_stride16() {  # random attention (dummy Llama-3-8B shape, 32 layers) and TTFT
  # at stride 16, FLASH_ATTN first
  for cfg in "FLASH_ATTN" "minference $AD_T098"; do
    timeout 170 python3 $B/bench_ttft.py --backend $cfg --model-kind dummy-llama \
      --lengths 131072 --reps 1 --out $OUT/ttft_dummy.json
  done
  for cfg in "FLASH_ATTN" "minference $AD_T098 --set antidiagonal_stride=16"; do
    timeout 110 python3 $B/bench_ttft.py --backend $cfg --lengths 131072 --out $OUT/ttft.json
  done
}
AD7_ttft_1m() {  # 1M in 64K chunks: antidiagonal (stride 16) and fixed; FLASH_ATTN (~105 s a
  # run) in a call of its own on the same machine (O4's second half)
  TTFT1M_64K 200 minference $AD_T098 --set antidiagonal_stride=16
  TTFT1M_64K 200 minference --mode fixed
}
AD8_wider_tiles() {  # the GEMM-style estimate's tile shape beyond 128 x 128
  timeout 250 python3 $B/tune_antidiagonal.py --shapes 32/8/128,14/2/64 --strides 8 16 \
    --options ir128k128w8n3 ir128k128w8n4 ir128k128w4n3 ir64k128w4n3 ir128k256w8n3 \
    ir256k128w8n3 --out $OUT/tune_antidiagonal_wide.json
}
# Seventeenth session: stride 32 (recall study on the CPU first), and the guard's share-based
# prediction for random-like layers (the dummy model); sparse from 32K keys, no extra tiles
ADS=${ADS:-32}
AE="$AD --set tau=0.98 --min-sparse-len 32768"
AE1_ttft() {  # GPU tests of the estimate (stride 32 in bf16 too), the estimate's cost per
  # stride, then TTFT at 128K: FLASH_ATTN, antidiagonal stride 16 and stride $ADS
  gpu_tests 100 $PWD/tests/test_antidiagonal.py
  timeout 100 python3 $B/tune_antidiagonal.py --shapes 14/2/64,32/8/128 --strides 16 32 \
    --cases 131072:131072 --options "" --out $OUT/tune_antidiagonal_strides.json
  for cfg in "FLASH_ATTN" "minference $AE --set antidiagonal_stride=16" \
      "minference $AE --set antidiagonal_stride=$ADS"; do
    timeout 110 python3 $B/bench_ttft.py --backend $cfg --lengths 131072 --out $OUT/ttft.json
  done
}
AE2_multivalue() {  # the 36 multivalue prompts at 128K, stride $ADS then 16 (dense: 1126j)
  MULTIVALUE128 270 antidiagonal_t098_s${ADS}_sparse32k $AE --set antidiagonal_stride=$ADS
  MULTIVALUE128 270 antidiagonal_t098_s16_sparse32k $AE --set antidiagonal_stride=16
}
AE3_random_and_1m() {  # random attention (dummy Llama-3-8B shape, 32 layers), FLASH_ATTN
  # first; then 1M in 64K chunks at stride $ADS (FLASH_ATTN at 1M: earlier leases, ~104 s)
  for cfg in "FLASH_ATTN" "minference $AE --set antidiagonal_stride=$ADS"; do
    timeout 170 python3 $B/bench_ttft.py --backend $cfg --model-kind dummy-llama \
      --lengths 131072 --reps 1 --out $OUT/ttft_dummy.json
  done
  TTFT1M_64K 220 minference $AD --set tau=0.98 --set antidiagonal_stride=$ADS
}
# Second lease: AE1's FLASH_ATTN and stride-16 runs hit their 110 s limits on the fresh
# machine (first vLLM start), so its stride-32 TTFT had no baseline in that lease
AS32="$AE --set antidiagonal_stride=32"
AF1_ttft() {  # TTFT at 128K: FLASH_ATTN (a fresh machine's first vLLM start: 150 s), fixed
  # (every default), antidiagonal stride 32 from 32K keys
  timeout 150 python3 $B/bench_ttft.py --backend FLASH_ATTN --lengths 131072 --out $OUT/ttft.json
  for cfg in "minference --mode fixed" "minference $AS32"; do
    timeout 120 python3 $B/bench_ttft.py --backend $cfg --lengths 131072 --out $OUT/ttft.json
  done
}
AF2_accuracy() {  # antidiagonal stride 32 from 32K keys: the default suite (passkey 8K-128K,
  # RULER at 16K/32K/128K, 3 samples), then M4's 12 samples a cell at 128K (dense: earlier
  # leases, the same prompts)
  timeout 290 python3 $B/bench_accuracy.py --backend minference $AS32 \
    --out $OUT/accuracy_antidiagonal_s32.json
  timeout 290 python3 $B/bench_accuracy.py --backend minference $AS32 $RULER128 \
    --out $OUT/accuracy12_128k_antidiagonal_s32.json
}
AF3_1m() {  # 1M in 64K chunks: FLASH_ATTN and antidiagonal stride 32 (AE3's) in one lease
  TTFT1M_64K 230 FLASH_ATTN
  TTFT1M_64K 200 minference $AD --set tau=0.98 --set antidiagonal_stride=32
}
# Next session: which of stride 32, tau 0.98 and sparse-from-32K cost AF2's answers (6 better
# / 16 worse of 94 prompts at 128K); the 12-sample 128K suite each (~215 s; dense: 1126c)
ACC128() {  # ACC128 NAME ARGS...: the 12-sample 128K suite into accuracy12_128k_NAME.json,
  # stopped after ACC128_LIMIT seconds (280: ~215 s on a warm machine)
  local name=$1; shift
  timeout ${ACC128_LIMIT:-280} python3 $B/bench_accuracy.py --backend minference "$@" $RULER128 \
    --out $OUT/accuracy12_128k_$name.json
}
AG1_stride8() {  # the mode's defaults (stride 8, tau 0.98, sparse from 64K), then stride 32
  # sparse from 64K
  ACC128 antidiagonal_s8 $AD
  ACC128 antidiagonal_s32_sparse64k $AD --set antidiagonal_stride=32
}
AG2_tau() {  # stride 32 sparse from 32K at tau 0.99 (1.78x) and 0.995
  ACC128 antidiagonal_s32_t099 $AS32 --set tau=0.99
  ACC128 antidiagonal_s32_t0995 $AS32 --set tau=0.995
}
# Eighteenth session: every antidiagonal configuration (stride 8 or 32, tau 0.98-0.995, sparse
# from 32K or 64K) scored 7-12 of 70 prompts lower than FLASH_ATTN and 2-3 higher (fixed
# mode, mostly dense at 128K, 8 lower / 3 higher in the sixth session): is that more than
# two exact attentions differ by?
AH1_null() {  # TRITON_ATTN (dense, another kernel) on the prompts that differed: the 36
  # multivalue prompts, then multikey, variable tracking and common words (12 each; passkey
  # is 100 everywhere), paired with FLASH_ATTN's answers of earlier leases (reproducible:
  # 1126c and 1126e/h answered the 12 shared prompts alike, character for character)
  timeout 300 python3 $B/bench_accuracy.py --backend TRITON_ATTN --lengths 131072 \
    --ruler-lengths 131072 --ruler-samples 36 --tasks multivalue \
    --out $OUT/accuracy_128k_multivalue_triton_attn.json
  timeout 260 python3 $B/bench_accuracy.py --backend TRITON_ATTN $RULER128 \
    --tasks multikey variable_tracking common_words --out $OUT/accuracy12_128k_triton_attn.json
}
# AH1 ran out of time: TRITON_ATTN prefills 128K prompts far slower than FA3 (24 prompts did
# not finish in 6 minutes, FLASH_ATTN's 70 take ~100 s). So the floor comes from the plugin:
AH2_near_exact() {  # antidiagonal tau 1.0 keeps every tile whose estimated share is >= 2^-40
  # and max_density 1.0 never sends a layer dense, so the plugin's kernels compute ~all of
  # the causal area: how many multivalue / variable-tracking answers kernel numerics move
  ACC128_LIMIT=230 ACC128 near_exact $AS32 --set tau=1.0 --set max_density=1.0 \
    --tasks multivalue variable_tracking
}
# AH2: near-exact lists moved the score of 2 of 24 prompts (both lower), the antidiagonal
# settings 8-12 (5-9 lower), and changed the first answer token of variable-tracking prompts
# that near-exact lists kept.
# Next: the prompt's last rows over every key after the sparse pass (dense_tail)
AI1_tail() {  # the 12-sample 128K suite, stride 32 from 32K keys, last 128 / 1024 rows exact
  # (a fresh machine's first engine start is ~60 s slower: the first run has 300 s)
  ACC128_LIMIT=300 ACC128 antidiagonal_s32_tail128 $AS32 --set dense_tail=128
  ACC128 antidiagonal_s32_tail1024 $AS32 --set dense_tail=1024
}
AI2_tail_ttft() {  # TTFT at 128K: FLASH_ATTN, stride 32 from 32K keys without and with the
  # 128-row dense tail; then the 36 multivalue prompts with it
  timeout 110 python3 $B/bench_ttft.py --backend FLASH_ATTN --lengths 131072 --out $OUT/ttft.json
  for cfg in "minference $AS32" "minference $AS32 --set dense_tail=128"; do
    timeout 100 python3 $B/bench_ttft.py --backend $cfg --lengths 131072 --out $OUT/ttft.json
  done
  timeout 150 python3 $B/bench_accuracy.py --backend minference $AS32 --set dense_tail=128 \
    --lengths 131072 --ruler-lengths 131072 --ruler-samples 36 --tasks multivalue \
    --out $OUT/accuracy_128k_multivalue_antidiagonal_s32_tail128.json
}
AI3_stride64() {  # stride 64 (one antidiagonal per 64 x 64 cell): GPU tests, the estimate's
  # cost at 128K against stride 32, TTFT at 128K from 32K keys (FLASH_ATTN: AI2's, same
  # lease), then the 12-sample 128K suite
  gpu_tests 100 $PWD/tests/test_antidiagonal.py
  timeout 100 python3 $B/tune_antidiagonal.py --shapes 14/2/64,32/8/128 --strides 32 64 \
    --cases 131072:131072 --options "" --out $OUT/tune_antidiagonal_stride64.json
  timeout 100 python3 $B/bench_ttft.py --backend minference $AE --set antidiagonal_stride=64 \
    --lengths 131072 --out $OUT/ttft.json
  ACC128 antidiagonal_s64 $AE --set antidiagonal_stride=64
}
# AI1-AI3: the dense tail (128 / 1024 rows) and stride 64 lost as many answers as stride 32
# (4 / 11, 2 / 14, 3 / 14 of 70), so the loss is in the sparsely computed context.  The CPU
# recall study: variable tracking's chain lines keep 0.94 of the attention they pay to the
# far line they point to under stride 32 (mass-weighted; fixed lists 0.98); the chunk's top
# 1000 columns bring it to 0.98, the 16 heads of most far-line attention dense to 0.97,
# both to 0.99.  Next: measure those.
RPROF=$PWD/benchmarks/results/profiles  # written by recall_study.py --retrieval-profile
COLS="--set antidiagonal_columns=1000"
AJ1_columns() {  # the 12-sample 128K suite, stride 32 from 32K keys, with the chunk's top
  # 1000 columns; then with them and the 16 retrieval heads dense
  ACC128_LIMIT=300 ACC128 antidiagonal_s32_columns1000 $AS32 $COLS
  ACC128 antidiagonal_s32_columns1000_retrieval16 $AS32 $COLS \
    --set profile=$RPROF/qwen2.5-coder-0.5b-retrieval16.json
}
AJ2_columns_ttft() {  # GPU tests of the joined lists (real FA3), then TTFT at 128K:
  # FLASH_ATTN, stride 32, + 1000 columns, + the 16 retrieval heads dense
  gpu_tests 120 $PWD/tests/test_page_lists.py $PWD/tests/test_plan.py -k "antidiagonal"
  timeout 110 python3 $B/bench_ttft.py --backend FLASH_ATTN --lengths 131072 --out $OUT/ttft.json
  for cfg in "$AS32" "$AS32 $COLS" "$AS32 $COLS --set profile=$RPROF/qwen2.5-coder-0.5b-retrieval16.json"; do
    timeout 100 python3 $B/bench_ttft.py --backend minference $cfg --lengths 131072 \
      --out $OUT/ttft.json
  done
}
AJ3_retrieval() {  # the suite with the 32 heads of most far-line attention dense, then 32
  # heads drawn at random (the control: does the choice of heads matter?)
  ACC128 antidiagonal_s32_retrieval32 $AS32 --set profile=$RPROF/qwen2.5-coder-0.5b-retrieval32.json
  ACC128 antidiagonal_s32_random32 $AS32 --set profile=$RPROF/qwen2.5-coder-0.5b-random32.json
}
# Twentieth session: the retrieval heads pinned to MInference's fixed top-k (profile
# "fixed": true) instead of dense, so that they stay cheap at 1M; the other heads stride 32
R32F="--set profile=$RPROF/qwen2.5-coder-0.5b-retrieval32-fixed.json"
R64F="--set profile=$RPROF/qwen2.5-coder-0.5b-retrieval64-fixed.json"
AK1_pinned_ttft() {  # GPU tests of pinned heads and of the list builders that now share
  # append_kept (layout.py), then TTFT at 128K: FLASH_ATTN, 32 and 64 heads pinned
  gpu_tests 200 $PWD/tests/test_plan.py $PWD/tests/test_profiles.py \
    $PWD/tests/test_compile_variants.py $PWD/tests/test_vertical_slash.py \
    $PWD/tests/test_adaptive.py $PWD/tests/test_page_lists.py
  timeout 110 python3 $B/bench_ttft.py --backend FLASH_ATTN --lengths 131072 --out $OUT/ttft.json
  for cfg in "$AS32 $R32F" "$AS32 $R64F"; do
    timeout 100 python3 $B/bench_ttft.py --backend minference $cfg --lengths 131072 \
      --out $OUT/ttft.json
  done
}
AK2_pinned_suite() {  # the 12-sample 128K suite with 32, then 64 heads pinned to fixed top-k
  ACC128 antidiagonal_s32_retrieval32_fixed $AS32 $R32F
  ACC128 antidiagonal_s32_retrieval64_fixed $AS32 $R64F
}
AK3_pinned_more_1m() {  # 118 more 128K prompts (24 new RULER samples per task, passkey
  # seeds 2-3; dense: raw-…-26h L1-A1) with 32 heads pinned, so that with AK2 each RULER
  # task has 36 prompts; then 1M in 64K chunks the same way, traced (which steps and layers
  # cost what; one GPU wait per step).  Adaptive mode with 32 pinned is not run: on the CPU
  # study it keeps 0.61 of the far-line attention (alone 0.20; stride 32 0.94)
  timeout 300 python3 $B/bench_accuracy.py --backend minference $AS32 $R32F $MORE128 \
    --out $OUT/accuracy_128k_more_antidiagonal_s32_retrieval32_fixed.json
  TRACED_1M trace_pinned_1m 220 $AS32 $R32F
}
# Twenty-first session: AK1-AK3 gave 32 pinned 1.86x at 128K with 25 / 26 of 188 prompts
# higher / lower than dense, and 23.9 s at 1M; what the 1M prefill spends planning (the
# trace's new plan_ms) against the kernels, and serving with that configuration
AL1_split_1m() {  # 1M in 64K chunks: FLASH_ATTN, then stride 32 + 32 pinned traced with the
  # plan split; the estimate alone for a 64K chunk over 1M keys (random inputs)
  TTFT1M_64K 230 FLASH_ATTN
  TRACED_1M trace_split_1m 200 $AS32 $R32F
  timeout 90 python3 $B/tune_antidiagonal.py --shapes 14/2/64 --strides 32 --tau 0.98 \
    --cases 65536:1048576 --options "" --out $OUT/tune_antidiagonal_1m.json
}
AL2_serving_pinned() {  # serving_pair's load with stride 32 + 32 pinned (sparse from 16K)
  pkill -KILL -f "EngineCor[e]"; pkill -KILL -f "entrypoints.cli.mai[n]"  # leftovers
  timeout 360 python3 $B/check_serving.py --configs FLASH_ATTN minference --load \
    --set mode=antidiagonal --set tau=0.98 --set antidiagonal_stride=32 $R32F \
    --logdir $LOGS --out $OUT/serving_pinned.json > $LOGS/serving_pinned.log 2>&1
}
AL3_short_512k() {  # TTFT at 4K, 8K, 32K (issue 5's never-slower lengths) and 512K:
  # FLASH_ATTN, then stride 32 + 32 pinned (sparse from 32K)
  timeout 200 python3 $B/bench_ttft.py --backend FLASH_ATTN --lengths 4096 8192 32768 524288 \
    --out $OUT/ttft_short_512k.json
  timeout 170 python3 $B/bench_ttft.py --backend minference $AS32 $R32F \
    --lengths 4096 8192 32768 524288 --out $OUT/ttft_short_512k.json
}
# From the twenty-first session the kit's model (its folder is named like the hub model) gets
# the bundled profile qwen2.5-coder-0.5b-instruct-retrieval32.json, so $AS32 alone now pins
# those 32 heads; earlier lanes ran stride 32 without pins, which $NOPIN reproduces
NOPIN="--set profile=$RPROF/qwen2.5-coder-0.5b-default.json"
MVVT36="--tasks multivalue variable_tracking --lengths 131072 --ruler-lengths 131072 \
  --ruler-first-sample 36 --ruler-samples 24"
# AL4 ran both backends in one call with 190 s each: FLASH_ATTN alone outran it (48 prompts
# of 128K with multi-token answers), so each backend has a lane of its own now
AL4_more_mv_vt() {  # 24 more multivalue and variable-tracking prompts at 128K (samples 36-59),
  # FLASH_ATTN (multivalue was the pinned configuration's one task below dense - 1)
  timeout 330 python3 $B/bench_accuracy.py --backend FLASH_ATTN $MVVT36 \
    --out $OUT/accuracy_128k_mv_vt_36_dense.json
}
AL5_more_mv_vt_pinned() {  # the same prompts, stride 32 + 32 pinned
  timeout 330 python3 $B/bench_accuracy.py --backend minference $AS32 $R32F $MVVT36 \
    --out $OUT/accuracy_128k_mv_vt_36_antidiagonal_s32_retrieval32_fixed.json
}
AP1_more_mv_vt_fixed() {  # the same 48 prompts, fixed mode (every default): is its multivalue
  # gap (-1.4 over 36 prompts) as much smaller over 60 as the pinned stride 32's (-2.8 -> -0.4)?
  timeout 330 python3 $B/bench_accuracy.py --backend minference --mode fixed $MVVT36 \
    --out $OUT/accuracy_128k_mv_vt_36_fixed.json
}
AQ1_partials_gemm() {  # could the antidiagonal partials (24 of 32.5 ms a layer at the last
  # 64K chunk of 1M, 3-4x under their tensor-core bound) run at cuBLAS speed? The GEMM path
  # checked against the kernel's partials on each case's first slab
  gpu_tests 120 $PWD/tests/test_bench_scripts.py -k partials_probe
  for shape in 14/2/64 32/8/128; do
    timeout 150 python3 $B/probe_partials_gemm.py --shape $shape --stride 32 \
      --cases 65536:1048576 16384:131072 --out $OUT/probe_partials_gemm_${shape//\//-}.json
  done
}
# Twenty-fourth session: the suite's 64K passkeys were never run with the configuration the
# Qwen profile now ships (sparse from 32K keys); nothing set, so the profile's settings apply
AR1_shipped_suite() {  # the default suite (passkey 8K-128K x 11 depths x 2 seeds, RULER at
  # 16K/32K/128K, 3 samples), minference as `vllm serve` runs it (dense: earlier leases)
  timeout 330 python3 $B/bench_accuracy.py --backend minference \
    --out $OUT/accuracy_shipped_default.json
}
# AQ1 timed cuBLAS at 14.3 ms for the 24 ms of Triton partials at 1M (head size 64) but its
# PyTorch reduction at 52 ms; the kernel's own launch options at stride 32 had never been
# timed (the 2 KB winner was taken), so these ran in the same lease (commands as run)
AS1_tune_1m() {  # eight launch options, both shapes, a 64K chunk over 1M keys
  timeout 280 python3 $B/tune_antidiagonal.py --shapes 14/2/64,32/8/128 --strides 32 --tau 0.98 \
    --cases 65536:1048576 --options ir128k128w8n3 ir128k128w8n4 ir128k256w8n3 ir256k128w8n3 \
    ir128k64w4n3 ir64k128w4n4 ir128k128w4n3 ir256k64w8n3 --out $OUT/tune_s32_1m.json
}
AS2_tune_w4() {  # 4-warp variants at head size 64, 1M and 128K keys
  timeout 250 python3 $B/tune_antidiagonal.py --shapes 14/2/64 --strides 32 --tau 0.98 \
    --cases 65536:1048576 16384:131072 --options ir128k128w8n3 ir128k128w4n3 ir128k128w4n4 \
    ir128k128w4n2 ir64k128w4n3 ir64k64w4n3 ir64k256w4n3 ir128k64w4n4 --out $OUT/tune_s32_w4.json
}
AS3_traced_1m() {  # the shipped default at 1M in 64K chunks, traced: AS3 on the wheel of
  # aaace3a (8 warps), AS4 on the wheel with 4 warps at stride 32, head size 64 (a345075)
  TTFT1M_64K 230 minference --set trace=$LOGS/trace_1m.jsonl
  python3 $B/trace_steps.py $LOGS/trace_1m.jsonl > $LOGS/trace_1m.md 2>&1
}
AS5_pair_128k() {  # TTFT at 128K, FLASH_ATTN then the shipped default
  for b in FLASH_ATTN minference; do
    timeout 140 python3 $B/bench_ttft.py --backend $b --lengths 131072 --out $OUT/ttft.json
  done
}
AS6_untraced_1m() { TTFT1M_64K 200 minference; }  # the shipped default at 1M, untraced
# AS1/AS2: the selection took 8.2 of the 32 ms of a 64K chunk's estimate over 1M keys, 16
# reads of every block's shares (one per bisection step); AT1 tested 4 and 16 points per
# read: 4 took 7.7 ms, 16 took 18.8 (its reductions, not the reads, bound it): 4 is taken
AT1_search_ways() {  # GPU tests of the search, then its time at 2 (bisection, as before), 4
  # and 16 points per read, same tiles (kept_tiles); needs the kit's vLLM (FA3), not its model
  gpu_tests 90 $PWD/tests/test_antidiagonal.py -k "bisection or fewest or launch"
  timeout 150 python3 $B/tune_antidiagonal.py --shapes ${AT1_SHAPES:-14/2/64} --strides 32 \
    --tau 0.98 --cases 65536:1048576 16384:131072 --options "" --search-ways 2 4 16 \
    --out $OUT/tune_search_ways.json
}
install_exp_wheel() {  # a branch's wheel (.whl/exp/) into /tmp/exp-site, for PYTHONPATH
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/exp-site \
    .whl/exp/vllm_minference-*.whl > /dev/null 2>&1
}
AT2_search_elementwise() {  # the branch exp/select-elementwise (its wheel in .whl/exp/: each
  # point's masked sums accumulated element-wise, one reduction a pass) against this wheel,
  # in one lease; kept_tiles must match
  timeout 110 python3 $B/tune_antidiagonal.py --shapes 14/2/64 --strides 32 --tau 0.98 \
    --cases 65536:1048576 16384:131072 --options "" --search-ways 4 16 \
    --out $OUT/tune_search_main.json
  install_exp_wheel
  PYTHONPATH=/tmp/exp-site:$PYTHONPATH timeout 110 python3 $B/tune_antidiagonal.py \
    --shapes 14/2/64 --strides 32 --tau 0.98 --cases 65536:1048576 16384:131072 --options "" \
    --search-ways 4 16 --out $OUT/tune_search_elementwise.json
}
# Twenty-fifth session: the current default's 1M ratio in one lease (the last same-lease pair
# was the twenty-first session's), the branch's search end to end, and tensor parallelism 2
# (last measured on 2026-11-25 in adaptive mode: 0.72x at 128K, cause not profiled)
AU1_pair_1m() {  # 1M in 64K chunks: FLASH_ATTN, then the shipped default
  TTFT1M_64K 240 FLASH_ATTN
  TTFT1M_64K 200 minference
}
AU2_exp_ttft() {  # the shipped default with the branch's wheel (.whl/exp/) put first on the
  # path: 1M in 64K chunks, then 128K (its search lists may differ from main's on near-ties)
  install_exp_wheel
  (export PYTHONPATH=/tmp/exp-site:$PYTHONPATH
   # (as run in the twenty-fifth session this check ran from the repository root and printed
   # the source folder; the benchmarks, run as scripts, import the plugin from PYTHONPATH)
   (cd /tmp && python3 -c "import vllm_minference; print('plugin from', vllm_minference.__file__)")
   TTFT1M_64K 200 minference
   timeout 140 python3 $B/bench_ttft.py --backend minference --lengths 131072 \
     --out $OUT/ttft.json)
}
AV1_tp2_128k() {  # both GPUs: TTFT at 128K with --tp 2, FLASH_ATTN then the shipped default,
  # then the default at --tp 1 on the same machine (one GPU of the two)
  for b in FLASH_ATTN minference; do
    timeout 170 python3 $B/bench_ttft.py --backend $b --tp 2 --lengths 131072 \
      --out $OUT/ttft_tp2.json
  done
  CUDA_VISIBLE_DEVICES=0 timeout 140 python3 $B/bench_ttft.py --backend minference \
    --lengths 131072 --out $OUT/ttft_tp1.json
}
# AV1: FLASH_ATTN gains 1.74x from TP=2 at 128K (1.906 -> 1.097 s), the sparse path only
# ~1.2x (1.006-1.092 -> 0.848 s): per-layer costs that do not shrink with the heads (host
# launches, list building over fixed shapes) or the guard's waits are the suspects
AV2_tp2_traced() {  # both GPUs: the default at --tp 2, 128K, traced (one file per worker
  # process through '{pid}'), each summed per step by trace_steps.py
  timeout 170 python3 $B/bench_ttft.py --backend minference --tp 2 --lengths 131072 \
    --set "trace=$LOGS/trace_tp2_{pid}.jsonl" --out $OUT/ttft_tp2_traced.json
  for f in $LOGS/trace_tp2_*.jsonl; do python3 $B/trace_steps.py $f > ${f%.jsonl}.md 2>&1; done
}
PROFILED() {  # PROFILED NAME SECONDS ARGS...: bench_ttft.py ARGS, then one more prefill of
  # the longest length under vLLM's PyTorch profiler (--profile-dir); gpu_idle.py sums each
  # worker's trace into $LOGS/NAME-gpu_idle-<trace>.md / .json (the traces stay on the machine)
  local name=$1 limit=$2 f b; shift 2
  rm -rf /tmp/prof-$name
  timeout $limit python3 $B/bench_ttft.py "$@" --profile-dir /tmp/prof-$name \
    --out $OUT/ttft_profiled.json
  for f in $(find /tmp/prof-$name -name "*.json.gz" -o -name "*.json"); do
    b=$(basename $f); b=${b%%.*}; b=gpu_idle-${b#ttft_}  # not *ttft*.json: not TTFT rows
    python3 $B/gpu_idle.py $f --json $LOGS/$name-$b.json > $LOGS/$name-$b.md 2>&1
  done
}
AW1_profiled_128k() {  # one GPU: where a 128K prefill leaves the GPU idle, both backends
  PROFILED flash_128k 200 --backend FLASH_ATTN --lengths 131072 --reps 1
  PROFILED minference_128k 200 --backend minference --lengths 131072 --reps 1
}
AW2_profiled_tp2() {  # two GPUs: the same at --tp 2 (one trace per rank)
  PROFILED flash_tp2_128k 230 --backend FLASH_ATTN --tp 2 --lengths 131072 --reps 1
  PROFILED minference_tp2_128k 230 --backend minference --tp 2 --lengths 131072 --reps 1
}
# Twenty-sixth session: at 128K (AW1) the sparse prefill kept the GPU busy 91% of its span
# (FLASH_ATTN 99%); at 1M the planning's share is larger and its idle share was never seen
AW3_profiled_1m() {  # one GPU: the shipped default at 1M in 64K chunks, profiled (no FLASH_ATTN)
  PROFILED minference_1m 330 --backend minference --lengths 1048576 \
    --max-num-batched-tokens 65536 --reps 1
}
# Twenty-seventh session: the 128K profile's 90 ms of idle followed the guard's 59 host waits,
# so the guard now also predicts from comparable steps of earlier prompts and lets
# share-based lists predict over 2.25x more keys; .whl/exp/ holds that package, this wheel
# main's (the calls install it once: the lanes of AXP run side by side). Measured on H200s:
# waits 61 -> 26 a 128K prompt, TTFT unchanged within noise (0.943 vs 0.951 s; TP=2 0.744 vs
# 0.731 s; 1M 21.98 vs 21.92 s)
with_exp() { (export PYTHONPATH=/tmp/exp-site:$PYTHONPATH; "$@"); }  # the .whl/exp/ package
TRACED_128K() {  # TRACED_128K NAME ARGS...: one traced 128K prefill, summed per step
  timeout 140 python3 $B/bench_ttft.py --backend minference --lengths 131072 --reps 1 \
    --set trace=$LOGS/$1.jsonl --out $OUT/ttft_traced.json "${@:2}"
  python3 $B/trace_steps.py $LOGS/$1.jsonl > $LOGS/$1.md 2>&1
}
BUILDS_128K() {  # 128K, 5 runs each: main (.whl/), then the build under test
  timeout 140 python3 $B/bench_ttft.py --backend minference --lengths 131072 --reps 5 \
    --out $OUT/ttft.json
  with_exp timeout 140 python3 $B/bench_ttft.py --backend minference --lengths 131072 \
    --reps 5 --out $OUT/ttft.json
}
PAIR_128K_BUILDS() {  # 128K, 5 runs each: FLASH_ATTN, main (.whl/), the build under test
  timeout 140 python3 $B/bench_ttft.py --backend FLASH_ATTN --lengths 131072 --reps 5 \
    --out $OUT/ttft.json
  BUILDS_128K
}
AX1_guard_128k() {  # one GPU, 128K: FLASH_ATTN, main's guard, the new guard (5 runs each),
  # then one traced prefill of each (waits and misjudged layers per step), then the new one
  # profiled (gpu_idle.py)
  PAIR_128K_BUILDS
  TRACED_128K trace_main_128k
  with_exp TRACED_128K trace_exp_128k
  with_exp PROFILED exp_128k 150 --backend minference --lengths 131072 --reps 1
}
AX2_guard_1m() {  # one GPU, 1M in 64K chunks: main's guard, then the new one (untraced)
  TTFT1M_64K 200 minference
  with_exp TTFT1M_64K 200 minference
}
AX3_guard_tp2() {  # two GPUs, 128K at --tp 2: FLASH_ATTN, main's guard, the new guard
  for b in FLASH_ATTN minference; do
    timeout 170 python3 $B/bench_ttft.py --backend $b --tp 2 --lengths 131072 --reps 5 \
      --out $OUT/ttft_tp2.json
  done
  with_exp timeout 170 python3 $B/bench_ttft.py --backend minference --tp 2 \
    --lengths 131072 --reps 5 --out $OUT/ttft_tp2.json
}
# Twenty-eighth session: the H200 profile of a 128K prefill had 170 ms of planning in its
# 943 ms: the antidiagonal partials 78 ms (~150 TFLOP/s), the pinned heads' Vertical-Slash
# estimate 24 ms in grids of 32-64 programs (one or two heads a layer, 4096 keys each). The
# build in .whl/exp/ splits the estimate's keys finer for few heads and has the partials'
# flat loop as launch option f... (same dots, same order); .whl/ holds main's.  Measured on
# H200s: the flat loop 1.4x slower (18.3 -> 26.4 ms at 1M), so it was removed (65698a6);
# these lanes need the wheel of a44f4db for its f... options
BA1_tune() {  # one GPU: the flat loop's launch options against the default (kept tiles must
  # match), both shapes; then the estimate's key splits with one and two heads
  with_exp timeout 200 python3 $B/tune_antidiagonal.py --shapes 14/2/64 --strides 32 \
    --tau 0.98 --cases 65536:1048576 16384:131072 --options ir128k128w4n3 fr128k128w4n3 \
    fr128k128w4n4 fr128k128w8n3 fr128k256w8n3 fr256k128w8n3 fr64k128w4n3 \
    --out $OUT/tune_flat.json
  with_exp timeout 150 python3 $B/tune_antidiagonal.py --shapes 32/8/128 --strides 32 \
    --tau 0.98 --cases 65536:1048576 16384:131072 --options ir128k128w8n3 fr128k128w8n3 \
    fr128k128w8n4 --out $OUT/tune_flat.json
  with_exp timeout 120 python3 $B/tune_estimate.py --shapes 14/2/64,32/8/128 \
    --seq-lens 131072 1048576 --est-heads 1 2 14 \
    --options default,s4096w4:w2,s2048w4:w2,s1024w4:w2,s512w4:w2 --out $OUT/tune_estimate.json
}
BA2_ttft_128k() {  # one GPU, 128K, 5 runs each: FLASH_ATTN, main, the build under test, and
  # that build with the flat partials (BA_LAUNCH, default fr128k128w4n3)
  PAIR_128K_BUILDS
  with_exp timeout 140 python3 $B/bench_ttft.py --backend minference --lengths 131072 \
    --reps 5 --set antidiagonal_launch=${BA_LAUNCH:-fr128k128w4n3} --out $OUT/ttft.json
}
BC1_profiles() {  # one GPU, 128K: main and the build under test (the estimate's finer
  # splits, 1f6e8e8) profiled (gpu_idle.py: the estimate kernels' GPU time), then 5 runs each
  PROFILED main_128k 150 --backend minference --lengths 131072 --reps 1
  with_exp PROFILED exp_128k 150 --backend minference --lengths 131072 --reps 1
  BUILDS_128K
}
# the default suite on the build under test (its pinned heads' column and diagonal sums add
# in another order: lists may differ at rounding ties)
BC2_exp_suite() { with_exp AR1_shipped_suite; }
BD1_dense_1m() { TTFT1M_64K 280 FLASH_ATTN; }  # one GPU: FLASH_ATTN at 1M in 64K chunks
BD2_exp_1m() { with_exp TTFT1M_64K 280 minference; }  # one GPU: the build under test at 1M
# Twenty-ninth session: FA3 runs the page lists' virtual sequences in cu_seqlens order, one
# per SM at a time, at ~128-192 flops per byte read (an H100 needs ~300 to be compute-bound),
# so what the SMs running side by side share in L2 may set its speed: 0.83-0.87 of its dense
# speed per computed key so far.  fa3_row_order (head = main's order; kv; group) changed only
# that order (bit-identical outputs, tested on the real FA3 by test_page_lists.py).  Measured
# on an H200 (d128 lists: FA3 98.1 / 99.0 / 115.7 ms; d64 6.5 / 6.7 / 6.8 ms) head stays
# fastest, so the setting was removed again; these lanes need the wheel of 3254c97 in .whl/
ORDERS="head kv group"
BE1_order_kernels() {  # one GPU: GPU tests of the page lists, then issue 3's 128K table per
  # order (real Qwen lists: fixed Vertical-Slash, replayed at Llama-3-8B shape; antidiagonal)
  gpu_tests 150 $PWD/tests/test_page_lists.py
  timeout 330 python3 $B/bench_kernels.py --seq-lens 131072 --no-random \
    --patterns vertical_slash,antidiagonal --kernels fa3,fa3@kv,fa3@group \
    --out $OUT/kernels_order.json
}
BE2_order_ttft() {  # one GPU, 128K, 5 runs each: FLASH_ATTN, then the default per order
  timeout 140 python3 $B/bench_ttft.py --backend FLASH_ATTN --lengths 131072 --reps 5 \
    --out $OUT/ttft_order.json
  for o in $ORDERS; do
    timeout 110 python3 $B/bench_ttft.py --backend minference --lengths 131072 --reps 5 \
      --set fa3_row_order=$o --out $OUT/ttft_order.json
  done
}
# BEP's 128K median of the order build (1.081 s, head order) sat ~10% above the twenty-eighth
# session's 0.946-0.984 s; that build's host-side geometry was ~10x slower, and the kernel
# lane ran beside it.  So the shipped package again, runs kept (run_seconds), one GPU each
BG1_short_128k() {  # one GPU: FLASH_ATTN, then the shipped default, at 4K, 8K (11 runs) and
  # 128K (5 runs), one engine each
  for b in FLASH_ATTN minference; do
    timeout 160 python3 $B/bench_ttft.py --backend $b --lengths 4096 8192 131072 --reps 5 \
      --out $OUT/ttft.json
  done
}
BG2_pair_1m() {  # one GPU: 1M in 64K chunks, FLASH_ATTN then the shipped default (the H200's
  # first 1M pair on one GPU; the twenty-eighth session's ran on two GPUs side by side)
  TTFT1M_64K 290 FLASH_ATTN
  TTFT1M_64K 240 minference
}
BG3_ab_128k() {  # one GPU, nothing beside it: 128K, 5 runs each, main (.whl/) then the build
  # under test (.whl/exp/), twice (typed as one call after BGP in the twenty-ninth session:
  # shipped 0.940 / 0.945 s, the row-order build in head order 1.024 / 1.011 s)
  for i in 1 2; do BUILDS_128K; done
}
# Thirtieth session: FA3 computes the union of a row group's lists for all its rows (1.27-
# 1.45x the listed tiles at 1M); fa3_min_blocks=N keeps sub-pages fewer than N of the group's
# blocks list on the Triton pass, for their own block only (BHP, BHR: the wheels of 00cc95b
# and f30188a; later on a second FA3 call, BHS).  A runtime setting, so one wheel a lease
BLOCKS="2 3"
BH1_blocks_kernels() {  # one GPU: GPU tests of the page lists (the real FA3 against the
  # reference, min_blocks included), then issue 3's 128K table per rule (real Qwen lists:
  # fixed Vertical-Slash, replayed at Llama-3-8B shape; antidiagonal)
  gpu_tests 150 $PWD/tests/test_page_lists.py
  timeout 330 python3 $B/bench_kernels.py --seq-lens 131072 --no-random \
    --patterns vertical_slash,antidiagonal --kernels fa3,fa3/blocks2,fa3/blocks3 \
    --out $OUT/kernels_blocks.json
}
BH2_blocks_ttft() {  # one GPU, 128K, 5 runs each: FLASH_ATTN, the default, then per rule
  timeout 140 python3 $B/bench_ttft.py --backend FLASH_ATTN --lengths 131072 --reps 5 \
    --out $OUT/ttft.json
  timeout 110 python3 $B/bench_ttft.py --backend minference --lengths 131072 --reps 5 \
    --out $OUT/ttft.json
  for n in $BLOCKS; do
    timeout 110 python3 $B/bench_ttft.py --backend minference --lengths 131072 --reps 5 \
      --set fa3_min_blocks=$n --out $OUT/ttft.json
  done
}
# BHP (H200): fa3_min_blocks=2 moved 40% of FA3's d128 time (101.5 -> 60.3 ms) onto a column
# pass that took 78.7 ms for it (0.24 of FA3's dense speed); 128K TTFT 0.945 s default,
# 1.011 s with 2, 1.143 s with 3.  The pass now skips the per-key test on chunks wholly off
# the pages and pipelines its loop (num_stages 3); BHR re-times it, and a 1M pair beside
BH5_blocks_kernels_1m() {  # one GPU: issue 3's 128K table, fa3 and fa3/blocks2, then 1M in
  # 64K chunks with fa3_min_blocks=2 (its pair runs on GPU 1 in BH6)
  timeout 240 python3 $B/bench_kernels.py --seq-lens 131072 --no-random \
    --patterns vertical_slash,antidiagonal --kernels fa3,fa3/blocks2 \
    --out $OUT/kernels_blocks.json
  TTFT1M_64K 240 minference --set fa3_min_blocks=2
}
BH6_blocks_ttft() {  # one GPU: 128K, 5 runs each, the default then fa3_min_blocks=2; then
  # the default at 1M in 64K chunks
  for cfg in "" "--set fa3_min_blocks=2"; do
    timeout 110 python3 $B/bench_ttft.py --backend minference --lengths 131072 --reps 5 \
      $cfg --out $OUT/ttft.json
  done
  TTFT1M_64K 240 minference
}
# BHR (H200): no gain (d128 column pass 84.2 ms for the moved tiles; 128K TTFT 1.028 s with
# 2; 1M 25.36 s with 2 against 22.11 s, side by side).  So each block's own sub-pages now go
# to a second FA3 call (one 64-row virtual sequence a block, not causal), merged by
# log-sum-exp in the column pass; BHS times it (kernels, GPU tests) beside TTFT at 128K
BH7_blocks_kernels() {  # one GPU: GPU tests of the page lists, then issue 3's 128K table,
  # fa3 and fa3/blocks2
  gpu_tests 150 $PWD/tests/test_page_lists.py
  timeout 240 python3 $B/bench_kernels.py --seq-lens 131072 --no-random \
    --patterns vertical_slash,antidiagonal --kernels fa3,fa3/blocks2 \
    --out $OUT/kernels_blocks.json
}
BH8_blocks_128k() {  # one GPU: 128K, 5 runs each, the default then fa3_min_blocks=2
  for cfg in "" "--set fa3_min_blocks=2"; do
    timeout 150 python3 $B/bench_ttft.py --backend minference --lengths 131072 --reps 5 \
      $cfg --out $OUT/ttft.json
  done
}
# Next (thirtieth session's note): time bee4f8b's page tables (one program per row and
# block) with BHS, and the fixed-mode suite with fa3_min_blocks=2 against fixed mode as is
BH9_blocks_suite() {  # one GPU: the default suite in fixed mode, as is then with
  # fa3_min_blocks=2 (the per-block FA3 pages pay on fixed Vertical-Slash lists)
  timeout 270 python3 $B/bench_accuracy.py --backend minference --mode fixed \
    --out $OUT/accuracy_fixed.json
  timeout 270 python3 $B/bench_accuracy.py --backend minference --mode fixed \
    --set fa3_min_blocks=2 --out $OUT/accuracy_fixed.json
}
RANDOM_PAIR() {  # RANDOM_PAIR LENGTH: random attention (dummy Llama-3-8B shape, 32 layers),
  # FLASH_ATTN then the installed package, one prefill each
  for b in FLASH_ATTN minference; do
    timeout 170 python3 $B/bench_ttft.py --backend $b --model-kind dummy-llama --lengths $1 \
      --reps 1 --out $OUT/ttft_dummy.json
  done
}
AY1_random() { RANDOM_PAIR 131072; RANDOM_PAIR 32768; }  # the guard's worst case, both lengths
AM1_union() {  # how much FA3's page lists inflate the per-block lists (the trace's new
  # "computed": a row group's union of its blocks' tiles), at 128K and at 1M, traced, with
  # 32 pinned; the 1M kernels ran at 0.59-0.71 of FA3's dense speed per listed tile
  timeout 150 python3 $B/bench_ttft.py --backend minference $AS32 $R32F --lengths 131072 \
    --set trace=$LOGS/trace_union_128k.jsonl --out $OUT/ttft.json
  python3 $B/trace_steps.py $LOGS/trace_union_128k.jsonl > $LOGS/trace_union_128k.md 2>&1
  AM2_union_1m
}
AM2_union_1m() {  # AM1's 1M half alone (what a short lease has room for)
  TRACED_1M trace_union_1m 200 $AS32 $R32F
}
# Twenty-second session: AM1 measured FA3's union at 1M at 1.27-1.45x the listed tiles, which
# at the kernels' 0.59-0.71 of dense speed per listed tile is most of their gap; the blocks of
# one FA3 row group now can share one selection (antidiagonal_shared)
SHARED="--set antidiagonal_shared=true"
AN1_shared_1m() {  # the grouped selection on the GPU (tests), then 1M in 64K chunks, traced
  gpu_tests 150 $PWD/tests/test_antidiagonal.py $PWD/tests/test_plan.py \
    -k "share_the_fewest or kept_tiles or worklist_runs or antidiagonal_rule"
  TRACED_1M trace_shared_1m 200 $AS32 $R32F $SHARED
}
AN2_shared_suite() {  # the 12-sample 128K suite, stride 32 + 32 pinned, shared selections
  ACC128 antidiagonal_s32_retrieval32_fixed_shared $AS32 $R32F $SHARED
}
AN3_shared_128k() {  # TTFT at 128K: FLASH_ATTN, stride 32 + 32 pinned, and shared (an
  # engine start on a cold compile cache took ~100 s: 100 s each lost all three runs)
  for cfg in "FLASH_ATTN" "minference $AS32 $R32F" "minference $AS32 $R32F $SHARED"; do
    timeout 150 python3 $B/bench_ttft.py --backend $cfg --lengths 131072 --out $OUT/ttft.json
  done
}
AN4_shared_suite_128k() {  # AN3's three engine starts outran their 100 s each on a fresh
  # cache: the suite (AN2), then the shared 128K TTFT alone with room to start
  AN2_shared_suite
  timeout 140 python3 $B/bench_ttft.py --backend minference $AS32 $R32F $SHARED \
    --lengths 131072 --out $OUT/ttft.json
}
# Next session: the CPU study (recall_study.py --fa3-group 3) puts shared selections and the
# row groups' union on one recall-vs-computed-density curve (sharing is a lower tau), so the
# next lever is the estimate's cost: stride 64 with the 32 pinned heads (stride 64 alone lost
# 3 / 14 of 70 at 128K, nineteenth session), and 1M's planning with it
AS64="$AE --set antidiagonal_stride=64"
AO1_stride64_pinned() {  # the 12-sample 128K suite, then TTFT at 128K (FLASH_ATTN first)
  ACC128 antidiagonal_s64_retrieval32_fixed $AS64 $R32F
  for cfg in "FLASH_ATTN" "minference $AS64 $R32F"; do
    timeout 150 python3 $B/bench_ttft.py --backend $cfg --lengths 131072 --out $OUT/ttft.json
  done
}
AO2_stride64_pinned_1m() {  # 1M in 64K chunks, traced (planning against stride 32's 6.7 s);
  # then stride 32's per-block lists at 128K, which the twenty-second session's select
  # kernel (one form for shared and per-block lists) has not been timed in (1.017 s before)
  TRACED_1M trace_s64_1m 200 $AS64 $R32F
  timeout 150 python3 $B/bench_ttft.py --backend minference $AS32 $R32F --lengths 131072 \
    --out $OUT/ttft.json
}
P4_steps_1m() {  # a 1M prompt step by step (layer 3, 64K chunks): runs shorter than N chunks
  # on the packed Triton pass (the eighth session's unpacked pass lost: 836 vs 764 ms)
  timeout 330 python3 $B/bench_chunked.py --seq-len 1048576 --chunk 65536 --layers 3 \
    --kernels fa3,fa3/run2,fa3/run3 --out $OUT/chunked_1m_runs.json
}
P2_kernels_1m() {  # issue 3's 1M row (real lists, layer 3, Llama-3-8B shape replay)
  timeout 470 python3 $B/bench_kernels.py --seq-lens 1048576 --layers 3 --no-random \
    --patterns vertical_slash --kernels fa3 --extra-blocks 32 --out $OUT/kernels_1m_extra32.json
}
serving_pair() {  # vllm serve, 32 concurrent requests (1K-31K tokens, a third sharing a
  # prefix, half streaming): FLASH_ATTN, then minference sparse from 16K (every other default)
  pkill -KILL -f "EngineCor[e]"; pkill -KILL -f "entrypoints.cli.mai[n]"  # leftovers
  timeout 360 python3 $B/check_serving.py --configs FLASH_ATTN minference --load \
    --logdir $LOGS --out $OUT/serving.json > $LOGS/serving.log 2>&1
}
traced_paths() {  # traced_paths OUT_FILE: layer-steps per (path, kernel) in the lane's traces
  cat $LOGS/trace-*.jsonl | python3 -c "import sys, json, collections
c = collections.Counter((r['path'], r.get('kernel')) for r in map(json.loads, sys.stdin) if r)
print(dict(c))" > $1 2>&1
}
P3_serving() {  # serving_pair, then minference with budgets x0.25 so the sparse kernels serve
  # (traced)
  serving_pair
  timeout 150 python3 $B/check_serving.py --configs minference --load --skip-functional \
    --set budget_scale=0.25 --set trace="$LOGS/trace-{pid}.jsonl" --logdir $LOGS \
    --out $OUT/serving_budget025.json > $LOGS/serving_budget025.log 2>&1
  traced_paths $OUT/serving_budget025_paths.txt
}
F2_local_band_ttft() {
  for cfg in "FLASH_ATTN" "minference --mode fixed" "minference --mode fixed --set fixed_local=2048" \
             "minference --mode fixed --set fixed_local=4096"; do
    timeout 100 python3 $B/bench_ttft.py --backend $cfg --lengths 131072 --out $OUT/ttft.json
  done
}
F3_big_budget_warm_up() {  # budgets past 1000/6096 (x2: 2000/12192) compiled mid-prefill
  # before the warm-up covered every budget maximum: jit_warnings.txt should now read 0
  timeout 110 python3 $B/bench_ttft.py --backend minference --mode fixed \
    --set budget_scale=2.0 --lengths 131072 --out $OUT/ttft_budget_x2.json
}
L3_select() {  # the fused selection against the package before it (.whl/old/), kernels
  gpu_tests 150 $PWD/tests/test_vertical_slash.py -k "select or estimate"
  timeout 120 python3 $B/tune_estimate.py --seq-lens 131072 1048576 --options default \
    --label fused --out $OUT/tune_estimate.json
  tune_estimate_before 120
  timeout 270 python3 $B/bench_kernels.py --seq-lens 131072 \
    --patterns vertical_slash,vertical_slash_adaptive --out $OUT/kernels.json
}
L2_short_pairs() {  # 4K/8K run the same FlashAttention path: engine-to-engine spread
  for i in 1 2 3; do
    for cfg in "FLASH_ATTN" "minference --mode fixed"; do
      timeout 75 python3 $B/bench_ttft.py --backend $cfg --lengths 4096 8192 \
        --out $OUT/ttft_short_pairs.json
    done
  done
}

# one-GPU calls (nvidia-h100-x1): the same functions, one after the other
H1_ttft() {
  timeout 170 python3 $B/bench_ttft.py --backend FLASH_ATTN --lengths 32768 131072 524288 \
    --out $OUT/ttft_adaptive.json
  G_adaptive_short
}
G_adaptive_short() {
  timeout 170 python3 $B/bench_ttft.py --backend minference --mode adaptive $FLOORS \
    --lengths 32768 131072 524288 --out $OUT/ttft_adaptive.json
}
H2_accuracy() {
  timeout 290 python3 $B/bench_accuracy.py --backend FLASH_ATTN --out $OUT/accuracy.json
  timeout 240 python3 $B/bench_accuracy.py --backend minference --min-sparse-len 4096 \
    --mode adaptive $FLOORS --out $OUT/accuracy.json
}
C_searched() { tight $SEARCHED; }

wait_lanes() {  # wait for the lanes, but stop them so that all is over by $1 seconds (the
  # stopping takes ~12 s) and the logs still come back; a first call that also unpacks the
  # kit's last part (~20 s) fits a 600 s call with $1 up to 575 (580 overran it twice)
  while [ -n "$(jobs -rp)" ] && [ $SECONDS -lt $(($1 - 15)) ]; do sleep 3; done
  if [ -n "$(jobs -rp)" ]; then
    echo "deadline: stopping the lanes still running" | tee -a $LOGS/deadline.log
    kill $(jobs -rp) 2>/dev/null; pkill -INT -f "python3 $B/"; sleep 8; pkill -KILL -f "python3 $B/"
    pkill -KILL -f "vllm serve"; pkill -KILL -f "VLLM::"; pkill -KILL -f EngineCore; sleep 3
  fi
  wait
}

case "$1" in
  A) lane 0 A_ttft; lane 1 A_accuracy; wait_lanes 300 ;;
  B) lane 0 B_long; lane 1 B_accuracy; wait_lanes 300 ;;
  C) (export VLLM_CACHE_ROOT=/tmp/vllm-cache-tp2; C_tp2) ;;
  E) (export VLLM_CACHE_ROOT=/tmp/vllm-cache-tp2; C_tp2)
     lane 0 E_fixed; lane 1 E_adaptive; wait_lanes 325 ;;
  F) pkill -KILL -f "vllm serve"; pkill -KILL -f EngineCore; sleep 2
     lane 0 E_fixed; lane 1 E_adaptive; wait_lanes 125 ;;
  G) lane 0 G_adaptive; lane 1 G_accuracy; wait_lanes 300; jit_check ;;
  D1) lane 0 D1_tail_fixed; wait_lanes 280; jit_check ;;
  D2) lane 0 D2_tail_adaptive; wait_lanes 280; jit_check ;;
  U1) lane 0 U1_columns; wait_lanes 560; jit_check ;;
  U2) lane 0 U2_diagonals; wait_lanes 290; jit_check ;;
  U3) lane 0 U3_local; wait_lanes 220; jit_check ;;
  U4) lane 0 U4_local; wait_lanes 220; jit_check ;;
  L1) lane 0 L1_ttft; wait_lanes 380; jit_check ;;
  L2) lane 0 L2_short_pairs; wait_lanes 470 ;;
  L3) lane 0 L3_select; wait_lanes 580 ;;
  F1) lane 0 F1_local_band; wait_lanes 560; jit_check ;;
  F2) lane 0 F2_local_band_ttft; wait_lanes 420; jit_check ;;
  F3) lane 0 F3_big_budget_warm_up; wait_lanes 130; jit_check ;;
  F4) lane 0 F4_band_only; wait_lanes 280; jit_check ;;
  F5) lane 0 F5_heads_fast; wait_lanes 520 ;;
  G1) lane 0 G1_one_step; wait_lanes 300; jit_check ;;
  G2) lane 0 G2_one_step_ttft; wait_lanes 250; jit_check ;;
  G3) lane 0 G3_extra_blocks; wait_lanes 590; jit_check ;;
  G4) lane 0 G4_extra_ttft; wait_lanes 420; jit_check ;;
  G5) lane 0 G5_dense_one_step; wait_lanes 290 ;;
  G6) lane 0 G6_extra_all_tasks; wait_lanes 575; jit_check ;;
  G7) lane 0 G7_extra_first12; wait_lanes 290; jit_check ;;
  G8) lane 0 G8_extra_cost; wait_lanes 560; jit_check ;;
  G9) lane 0 G9_extra_1m; wait_lanes 290; jit_check ;;
  G10) lane 0 G10_extra_parts; wait_lanes 160 ;;
  I1) lane 0 I1_adaptive_extra; wait_lanes 590; jit_check ;;
  I2) lane 0 I2_fused_topk; wait_lanes 580; jit_check ;;
  I3) lane 0 I3_fused_topk_1m; wait_lanes 590; jit_check ;;
  I4) lane 0 I4_buckets_1m; wait_lanes 595; jit_check ;;
  I5) lane 0 V4_dummy; wait_lanes 380; jit_check ;;
  I6) lane 0 I6_ttft_128k; wait_lanes 360; jit_check ;;
  I7) lane 0 I7_kernels_extra; wait_lanes 580 ;;
  O1) lane 0 O1_rank3; wait_lanes 560 ;;
  O2) lane 0 O2_kernels_extra; wait_lanes 320 ;;
  O3) lane 0 O3_ttft_128k; wait_lanes 360; jit_check ;;
  O4) lane 0 O4_ttft_1m; wait_lanes 470; jit_check ;;
  O5) lane 0 O5_multivalue; wait_lanes 290; jit_check ;;
  O6) lane 0 O6_adaptive_variants; wait_lanes 585; jit_check ;;
  O7) lane 0 O7_block_sparse; wait_lanes 340 ;;
  P1) lane 0 P1_kernels_128k; wait_lanes 480 ;;
  P2) lane 0 P2_kernels_1m; wait_lanes 480 ;;
  P3) lane 0 P3_serving; wait_lanes 540; jit_check ;;
  P4) lane 0 P4_steps_1m; wait_lanes 340 ;;
  P7) lane 0 P7_serving_guard; wait_lanes 540; jit_check ;;
  P8) lane 0 P8_ttft_128k; wait_lanes 470; jit_check ;;
  P9) lane 0 P9_ttft_1m; wait_lanes 290; jit_check ;;
  Q0) lane 0 Q0_antidiagonal_tune; wait_lanes 370 ;;
  Q1) lane 0 Q1_antidiagonal_kernels; wait_lanes 540 ;;
  Q2) lane 0 Q2_antidiagonal_multivalue; wait_lanes 420; jit_check ;;
  Q3) lane 0 Q3_antidiagonal_ttft; wait_lanes 470; jit_check ;;
  Q4) lane 0 Q4_antidiagonal_multivalue; wait_lanes 480; jit_check ;;
  Q5) lane 0 Q5_antidiagonal_shapes; wait_lanes 540 ;;
  AD1) lane 0 AD1_inner_loop; wait_lanes 560 ;;
  AD2) lane 0 AD2_ttft; wait_lanes 560; jit_check ;;
  AD3) lane 0 AD3_multivalue; wait_lanes 540; jit_check ;;
  AD4) lane 0 AD4_sparse32k; wait_lanes 590; jit_check ;;
  AD5) lane 0 AD5_all_tasks; wait_lanes 560; jit_check ;;
  AD6) lane 0 AD6_random_and_stride16; wait_lanes 590; jit_check ;;
  AD7) lane 0 AD7_ttft_1m; wait_lanes 420; jit_check ;;
  AD8) lane 0 AD8_wider_tiles; wait_lanes 280 ;;
  AE1) lane 0 AE1_ttft; wait_lanes 500; jit_check ;;
  AE2) lane 0 AE2_multivalue; wait_lanes 560; jit_check ;;
  AE3) lane 0 AE3_random_and_1m; wait_lanes 580; jit_check ;;
  AF1) lane 0 AF1_ttft; wait_lanes 400; jit_check ;;
  AF2) lane 0 AF2_accuracy; wait_lanes 590; jit_check ;;
  AF3) lane 0 AF3_1m; wait_lanes 440; jit_check ;;
  AG1) lane 0 AG1_stride8; wait_lanes 580; jit_check ;;
  AG2) lane 0 AG2_tau; wait_lanes 580; jit_check ;;
  AH1) lane 0 AH1_null; wait_lanes 570 ;;
  AH2) lane 0 AH2_near_exact; wait_lanes 240 ;;
  AI1) lane 0 AI1_tail; wait_lanes 560; jit_check ;;
  AI2) lane 0 AI2_tail_ttft; wait_lanes 560; jit_check ;;
  AI3) lane 0 AI3_stride64; wait_lanes 560; jit_check ;;
  AJ1) lane 0 AJ1_columns; wait_lanes 520; jit_check ;;
  AJ2) lane 0 AJ2_columns_ttft; wait_lanes 520; jit_check ;;
  AJ3) lane 0 AJ3_retrieval; wait_lanes 400; jit_check ;;
  AK1) lane 0 AK1_pinned_ttft; wait_lanes 550; jit_check ;;
  AK2) lane 0 AK2_pinned_suite; wait_lanes 520; jit_check ;;
  AK3) lane 0 AK3_pinned_more_1m; wait_lanes 540; jit_check ;;
  AL1) lane 0 AL1_split_1m; wait_lanes 550; jit_check ;;
  AL2) lane 0 AL2_serving_pinned; wait_lanes 400; jit_check ;;
  AL3) lane 0 AL3_short_512k; wait_lanes 380; jit_check ;;
  AL4) lane 0 AL4_more_mv_vt; wait_lanes 350; jit_check ;;
  AL5) lane 0 AL5_more_mv_vt_pinned; wait_lanes 350; jit_check ;;
  AP1) lane 0 AP1_more_mv_vt_fixed; wait_lanes 340; jit_check ;;
  AQ1) lane 0 AQ1_partials_gemm; wait_lanes 400 ;;
  AR1) lane 0 AR1_shipped_suite; wait_lanes 400; jit_check ;;
  AS1) lane 0 AS1_tune_1m; wait_lanes 300 ;;
  AS2) lane 0 AS2_tune_w4; wait_lanes 270 ;;
  AS3|AS4) lane 0 AS3_traced_1m; wait_lanes 260 ;;
  AS5) lane 0 AS5_pair_128k; wait_lanes 300 ;;
  AS6) lane 0 AS6_untraced_1m; wait_lanes 230 ;;
  AT1) lane 0 AT1_search_ways; wait_lanes 240 ;;
  AT2) lane 0 AT2_search_elementwise; wait_lanes 250 ;;
  AU1) lane 0 AU1_pair_1m; wait_lanes 450; jit_check ;;
  AU2) lane 0 AU2_exp_ttft; wait_lanes 360; jit_check ;;
  AV1) (export VLLM_CACHE_ROOT=/tmp/vllm-cache-tp2; AV1_tp2_128k > $LOGS/AV1_tp2_128k.log 2>&1)
       jit_check ;;
  AV2) (export VLLM_CACHE_ROOT=/tmp/vllm-cache-tp2; AV2_tp2_traced > $LOGS/AV2_tp2_traced.log 2>&1) ;;
  AW1) lane 0 AW1_profiled_128k; wait_lanes 450; jit_check ;;
  AW2) (export VLLM_CACHE_ROOT=/tmp/vllm-cache-tp2; AW2_profiled_tp2 > $LOGS/AW2_profiled_tp2.log 2>&1) ;;
  AW3) lane 0 AW3_profiled_1m; wait_lanes 400; jit_check ;;
  AX1) install_exp_wheel; lane 0 AX1_guard_128k; wait_lanes 570; jit_check ;;
  AX2) install_exp_wheel; lane 0 AX2_guard_1m; wait_lanes 450; jit_check ;;
  AXP) install_exp_wheel; lane 0 AX1_guard_128k; lane 1 AX2_guard_1m; wait_lanes 570
       jit_check ;;  # two GPUs: AX1 and AX2 side by side
  BAP) install_exp_wheel; lane 0 BA1_tune; lane 1 BA2_ttft_128k; wait_lanes 570
       jit_check ;;  # two GPUs
  BCP) install_exp_wheel; lane 0 BC1_profiles; lane 1 BC2_exp_suite; wait_lanes 570
       jit_check ;;  # two GPUs
  BGP) lane 0 BG1_short_128k; lane 1 BG2_pair_1m; wait_lanes 570
       jit_check ;;  # two GPUs: the shipped default at 4K/8K/128K / 1M, FLASH_ATTN first
  BG3) install_exp_wheel; lane 0 BG3_ab_128k; wait_lanes 500; jit_check ;;
  BHP) lane 0 BH1_blocks_kernels; lane 1 BH2_blocks_ttft; wait_lanes 570
       jit_check ;;  # two GPUs: fa3_min_blocks at kernel level / TTFT 128K
  BHR) lane 0 BH5_blocks_kernels_1m; lane 1 BH6_blocks_ttft; wait_lanes 570
       jit_check ;;  # two GPUs: the faster column pass: kernels + 1M / 128K + 1M
  BHS) lane 0 BH7_blocks_kernels; lane 1 BH8_blocks_128k; wait_lanes 430
       jit_check ;;  # two GPUs: per-block FA3 pages: kernels / TTFT 128K
  BHT) lane 0 BH7_blocks_kernels; lane 1 BH9_blocks_suite; wait_lanes 570
       jit_check ;;  # two GPUs: per-block pages' tables timed / the fixed-mode suite with them
  BEP) lane 0 BE1_order_kernels; lane 1 BE2_order_ttft; wait_lanes 570
       jit_check ;;  # two GPUs: the row orders at kernel level / TTFT 128K
  BDP) install_exp_wheel; lane 0 BD1_dense_1m; lane 1 BD2_exp_1m; wait_lanes 300
       jit_check ;;  # two GPUs of one H200 host: the 1M pair side by side (no H200 had one)
  AY) lane 0 AY1_random; lane 1 AR1_shipped_suite; wait_lanes 570; jit_check ;;  # two GPUs
  AX3) install_exp_wheel
       (export VLLM_CACHE_ROOT=/tmp/vllm-cache-tp2; AX3_guard_tp2 > $LOGS/AX3_guard_tp2.log 2>&1)
       jit_check ;;
  AM1) lane 0 AM1_union; wait_lanes 440; jit_check ;;
  AM2) lane 0 AM2_union_1m; wait_lanes 260; jit_check ;;
  AN1) lane 0 AN1_shared_1m; wait_lanes 370; jit_check ;;
  AN2) lane 0 AN2_shared_suite; wait_lanes 300; jit_check ;;
  AN3) lane 0 AN3_shared_128k; wait_lanes 470; jit_check ;;
  AN4) lane 0 AN4_shared_suite_128k; wait_lanes 440; jit_check ;;
  AO1) lane 0 AO1_stride64_pinned; wait_lanes 575; jit_check ;;
  AO2) lane 0 AO2_stride64_pinned_1m; wait_lanes 420; jit_check ;;
  J1) lane 0 J1_windows; wait_lanes 290; jit_check ;;
  J2) lane 0 J2_windows_fixed; wait_lanes 280; jit_check ;;
  H1) lane 0 H1_ttft; wait_lanes 360; jit_check ;;
  H2) lane 0 H2_accuracy; wait_lanes 545 ;;
  H3) lane 0 C_default; wait_lanes 200; lane 0 C_searched; wait_lanes 400 ;;
  S1) lane 0 S1_search; wait_lanes 560; jit_check ;;
  S2) lane 0 S2_floor; wait_lanes 540; jit_check ;;
  S3) lane 0 S3_long; wait_lanes 420; jit_check ;;
  S4) lane 0 S4_kernels; wait_lanes 440 ;;
  S5) lane 0 S5_dummy; wait_lanes 420; jit_check ;;
  # the fourth session's P1/P2 (the fourteenth reused the names: these had become unreachable)
  RP1) lane 0 P1_plan; wait_lanes 570; jit_check ;;
  RP2) lane 0 P2_dense; wait_lanes 460 ;;
  R1) lane 0 R1_tight; wait_lanes 350; jit_check ;;
  R2) lane 0 R2_adaptive; wait_lanes 240; jit_check ;;
  # an earlier session's Q1-Q3 (the fifteenth reused the names: these had become unreachable)
  RQ1) lane 0 Q1_dense128; wait_lanes 340 ;;
  RQ2) lane 0 Q2_tight128; wait_lanes 470; jit_check ;;
  RQ3) lane 0 Q3_adaptive128; wait_lanes 510; jit_check ;;
  N1) lane 0 N1_chunk_accuracy; wait_lanes 570; jit_check ;;
  N2) lane 0 N2_floor_chunk; wait_lanes 570; jit_check ;;
  N3) lane 0 N3_default_settings; wait_lanes 260; jit_check ;;
  K1) lane 0 K1_check; wait_lanes 470 ;;
  K2) lane 0 K2_ttft; wait_lanes 560; jit_check ;;
  K3) lane 0 K3_long; wait_lanes 560; jit_check ;;
  K4) lane 0 K4_accuracy; wait_lanes 290; jit_check ;;
  K5) lane 0 K5_kernels_1m; wait_lanes 430 ;;
  K6) lane 0 K6_ttft; wait_lanes 570; jit_check ;;
  K7) lane 0 K7_short_runs; wait_lanes 570; jit_check ;;
  M1) lane 0 M1_check; wait_lanes 450 ;;
  M2) lane 0 M2_ttft; wait_lanes 570; jit_check ;;
  M3) lane 0 M3_long; wait_lanes 570; jit_check ;;
  M4) lane 0 M4_defaults; wait_lanes 500; jit_check ;;
  M5) lane 0 M5_kernels_1m; wait_lanes 480 ;;
  M6) lane 0 M6_profile; wait_lanes 295 ;;
  X1) lane 0 X1_steps; wait_lanes 560 ;;
  T1) lane 0 T1_trace; wait_lanes 500 ;;
  V1) lane 0 V1_long; wait_lanes 540; jit_check ;;
  V2) lane 0 V2_short; wait_lanes 420; jit_check ;;
  V3) lane 0 V3_steps; wait_lanes ${V3_DEADLINE:-360} ;;
  V4) lane 0 V4_dummy; wait_lanes 360; jit_check ;;
  W1) lane 0 W1_estimate; wait_lanes 560 ;;
  W2) lane 0 W2_ttft; wait_lanes 580; jit_check ;;
  W3) lane 0 W3_default_chunks; wait_lanes 260; jit_check ;;
  E1) lane 0 E1_estimate; wait_lanes 390; jit_check ;;
  Z1) lane 0 Z1_estimate; wait_lanes 390 ;;
  Z2) lane 0 Z2_ttft; wait_lanes 540; jit_check ;;
  Z3) lane 0 Z3_default_chunks; wait_lanes 260; jit_check ;;
  Z4) lane 0 Z4_steps; wait_lanes 470 ;;
  Y1) lane 0 Y1_chunks; wait_lanes 400 ;;
  B1) lane 0 B1_budgets; wait_lanes 570; jit_check ;;
  A1) lane 0 A1_dense128_more; wait_lanes 575 ;;
  A2) lane 0 A2_fixed128_more; wait_lanes 575; jit_check ;;
  D) lane 0 C_default; lane 1 C_searched; wait_lanes 200 ;;  # if device time is left
  *) echo "unknown call $1"; exit 2 ;;
esac
nvidia-smi --query-gpu=name,memory.used --format=csv > $LOGS/nvidia-smi.txt 2>&1
tar czf $OUT/logs-$1.tgz -C /tmp lanelogs-$1
ls -la $OUT
for f in $LOGS/*.log; do echo "== $f"; grep -v -E "it/s\]|INFO|WARNING" $f | tail -6; done
