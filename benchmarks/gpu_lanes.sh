#!/bin/bash
# One device call on a two-GPU machine (nvidia-h100-x2) after the gpu-kit is installed:
#   bash benchmarks/gpu_lanes.sh A|B|C
# Two lanes run side by side, one per GPU; each lane compares backends *within itself*
# (same GPU, one process per configuration, one after the other), so no timing compares
# two GPUs.  Results are JSON files under $OUT; all logs go into one $OUT/logs-<call>.tgz
# (the device tool brings back at most 8 files).  Modes are explicit: the 2026-11-25 run was
# made when adaptive was the default (see README, Results).
. benchmarks/gpu_prelude.sh
export PYTHONUNBUFFERED=1 VLLM_ALLOW_LONG_MAX_MODEL_LEN=1
LOGS=/tmp/lanelogs-$1
mkdir -p $LOGS
B=benchmarks

lane() {  # lane GPU NAME: run the function NAME on GPU GPU, its output in $LOGS/NAME.log
  (export CUDA_VISIBLE_DEVICES=$1 VLLM_CACHE_ROOT=/tmp/vllm-cache-$1; $2 > $LOGS/$2.log 2>&1) &
}

# ------------------------------------------------------------------ call A
A_ttft() {
  for cfg in "FLASH_ATTN" "minference --mode adaptive" "minference --mode fixed"; do
    timeout 150 python3 $B/bench_ttft.py --backend $cfg --lengths 4096 8192 32768 131072 \
      --out $OUT/ttft.json
  done
  for cfg in "FLASH_ATTN" "minference --mode adaptive"; do
    timeout 130 python3 $B/bench_ttft.py --backend $cfg --model-kind dummy-llama --layers 32 \
      --lengths 32768 131072 --reps 1 --out $OUT/ttft.json
  done
}
A_kernels() {
  timeout 400 python3 $B/bench_kernels.py --seq-lens 32768 131072 262144 --out $OUT/kernels.json
  for b in FLASH_ATTN minference; do  # 80 s was too short for the first start-up here
    timeout 120 python3 $B/bench_ttft.py --backend $b --decode --out $OUT/decode.json
  done
}

# ------------------------------------------------------------------ call B
B_long() {
  timeout 260 python3 $B/bench_ttft.py --backend FLASH_ATTN --lengths 524288 1048576 \
    --out $OUT/ttft_long.json
  timeout 140 python3 $B/bench_ttft.py --backend minference --mode adaptive --lengths 524288 1048576 \
    --out $OUT/ttft_long.json
  timeout 140 python3 $B/bench_ttft.py --backend minference --mode fixed --lengths 1048576 \
    --out $OUT/ttft_long.json
}
B_accuracy() {
  for cfg in "FLASH_ATTN" "minference --min-sparse-len 4096 --mode adaptive" \
             "minference --min-sparse-len 4096 --mode fixed" \
             "minference --min-sparse-len 4096 --mode adaptive --gamma 0.8"; do
    timeout 135 python3 $B/bench_accuracy.py --backend $cfg --out $OUT/accuracy.json
  done
}

# ------------------------------------------------------------------ call C
C_serve() {
  MINFERENCE_MODE=adaptive timeout 330 python3 $B/check_serving.py --configs minference FLASH_ATTN --load \
    --logdir $LOGS --out $OUT/serving.json
}
C_accuracy() {
  timeout 100 python3 -m vllm_minference.search "$GPU_KIT_MODEL" --length 32768 \
    --model-name Qwen/Qwen2.5-Coder-0.5B-Instruct --out $OUT/qwen2.5-coder-0.5b-instruct.json
  timeout 85 python3 $B/bench_ttft.py --backend minference --mode adaptive --min-sparse-len 16384 --outputs \
    --lengths 131072 --reps 1 --out $OUT/ttft_tp.json
  timeout 140 python3 $B/bench_accuracy.py --backend minference --min-sparse-len 4096 \
    --mode fixed --budget-scale 0.25 --out $OUT/accuracy.json
}
C_tp2() {  # both GPUs: tensor parallelism 2
  for cfg in "minference --mode adaptive --min-sparse-len 16384 --outputs" "FLASH_ATTN --outputs"; do
    timeout 115 python3 $B/bench_ttft.py --backend $cfg --tp 2 --lengths 131072 --reps 2 \
      --out $OUT/ttft_tp.json >> $LOGS/tp2.log 2>&1
  done
}

wait_lanes() {  # wait for the lanes, but stop them at $1 seconds so the logs still come back
  while [ -n "$(jobs -rp)" ] && [ $SECONDS -lt $1 ]; do sleep 3; done
  if [ -n "$(jobs -rp)" ]; then
    echo "deadline: stopping the lanes still running" | tee -a $LOGS/deadline.log
    kill $(jobs -rp) 2>/dev/null; pkill -INT -f "python3 $B/"; sleep 8; pkill -KILL -f "python3 $B/"
    pkill -KILL -f "vllm serve"; pkill -KILL -f "VLLM::"; pkill -KILL -f EngineCore; sleep 3
  fi
  wait
}

case "$1" in
  A) lane 0 A_ttft; lane 1 A_kernels; wait_lanes 570 ;;
  B) lane 0 B_long; lane 1 B_accuracy; wait_lanes 570 ;;
  C) lane 0 C_serve; lane 1 C_accuracy; wait_lanes 335
     (export VLLM_CACHE_ROOT=/tmp/vllm-cache-tp2; C_tp2) ;;
  *) echo "unknown call $1"; exit 2 ;;
esac
nvidia-smi --query-gpu=name,memory.used --format=csv > $LOGS/nvidia-smi.txt 2>&1
tar czf $OUT/logs-$1.tgz -C /tmp lanelogs-$1
ls -la $OUT
for f in $LOGS/*.log; do echo "== $f"; grep -v -E "it/s\]|INFO|WARNING" $f | tail -6; done
