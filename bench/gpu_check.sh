#!/usr/bin/env bash
# shared/GPU.md's checks in one command, on a CUDA machine with no internet:
#   bash bench/gpu_check.sh OUT_DIR
# Python packages the machine lacks travel as wheels in .whl/ (bench/gpu_wheels.sh makes them). Writes
# OUT_DIR/gpu_check.json (bench/gpu_check.py), OUT_DIR/gpu_tests.xml and OUT_DIR/nvidia-smi.txt.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT_DIR=${1:-${OUT:-build/bench}}
mkdir -p "$OUT_DIR"
if compgen -G ".whl/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/site:$PWD
fi
export PYTHONPATH=${PYTHONPATH:-$PWD} PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv | tee "$OUT_DIR/nvidia-smi.txt"
python3 -c 'import torch, timm; print("torch", torch.__version__, "cuda", torch.version.cuda, "timm", timm.__version__)'
# 1. The handler, server and slide tests with the models on the GPU (GPU_TESTS names other test files).
OPTIMUS_DEVICE=cuda timeout "${GPU_TESTS_TIMEOUT_S:-200}" python3 -m pytest -q -p no:cacheprovider \
    --junit-xml "$OUT_DIR/gpu_tests.xml" ${GPU_TESTS:-tests/test_handler.py tests/test_server.py tests/test_slides.py} 2>&1 | tail -25
# 1-5. Correctness, forward pass and its variants, the server under load, slides, AOTInductor packages
# (GPU_STEPS: some of them).
python3 -m bench.gpu_check --out "$OUT_DIR" --budget-s "${GPU_CHECK_BUDGET_S:-420}" \
    ${GPU_STEPS:+--steps "$GPU_STEPS"}
