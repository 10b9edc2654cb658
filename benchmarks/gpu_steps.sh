#!/bin/bash
# One step of a GPU session (device tool), after the gpu-kit is installed:
#   bash benchmarks/gpu_steps.sh STEP
# Every step writes its results and logs under $OUT (the device tool brings them back).
. benchmarks/gpu_prelude.sh
set -o pipefail
case "$1" in
  tests)      (cd tests && timeout 420 python3 -m pytest -q -x -p no:cacheprovider 2>&1 | tee $OUT/pytest-gpu.log | tail -25) ;;
  kernels)    timeout 540 python3 benchmarks/bench_kernels.py --seq-lens 32768 131072 262144 --out $OUT/kernels.json 2>&1 | tee $OUT/kernels.log ;;
  kernels-1m) timeout 570 python3 benchmarks/bench_kernels.py --seq-lens 1048576 --out $OUT/kernels_1m.json 2>&1 | tee $OUT/kernels_1m.log ;;
  serve)      timeout 570 python3 benchmarks/check_serving.py --logdir $OUT --out $OUT/serving.json --load 2>&1 | tee $OUT/serving.log ;;
  profile)    timeout 200 python3 benchmarks/profile_plan.py 2>&1 | tee $OUT/profile_plan.log
              timeout 200 python3 benchmarks/profile_plan.py --heads 32 --kv-heads 8 --head-dim 128 2>&1 | tee -a $OUT/profile_plan.log ;;
  ttft)       for b in minference FLASH_ATTN; do
                timeout 280 python3 benchmarks/bench_ttft.py --backend $b --lengths ${LENGTHS:-4096 8192 32768 131072} --out $OUT/ttft.json 2>&1 | grep -v -E "it/s|Processed prompts" | tee -a $OUT/ttft.log
              done ;;
  *) echo "unknown step $1"; exit 2 ;;
esac
