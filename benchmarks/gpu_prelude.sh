#!/bin/bash
# Source at the start of every device-tool command (GPU machine, no network):
#   . benchmarks/gpu_prelude.sh
# Puts the gpu-kit (vLLM + model) on the path when it was shipped, and installs this project
# from the wheel carried in .whl/ (built here with `pip wheel --no-deps -w .whl .`), so that
# vLLM finds the plugin's entry point.
[ -f /tmp/gpukit/env.sh ] && . /tmp/gpukit/env.sh
export PYTHONUNBUFFERED=1
mkdir -p /tmp/proj-site
if ls .whl/vllm_minference-*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/proj-site .whl/vllm_minference-*.whl >/dev/null 2>&1 \
    || echo "prelude: project wheel install failed"
else
  echo "prelude: no project wheel in .whl/"
fi
export PYTHONPATH=/tmp/proj-site${PYTHONPATH:+:$PYTHONPATH}
(cd /tmp && python3 -c "import vllm_minference.kernels") || echo "prelude: vllm_minference not importable"
