#!/usr/bin/env bash
# trainctl's GPU check (issue 16): run it on a machine with an NVIDIA GPU and CUDA PyTorch, from a
# copy of this tree plus bench/gpu/wheels/ (made by `make gpu-wheels` where there is network).
#   bash bench/gpu_check.sh [--out DIR] [--parts launch,throughput,oom] [--help]
# The Python is $PYTHON, else the first of python3 / python that imports torch. Everything else,
# what it checks included, is in bench/gpu/check.py. Exit 0 passed, 1 failed, 2 bad arguments,
# 3 refused (no usable GPU here; nothing run, nothing written).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

py="${PYTHON:-}"
if [ -z "$py" ]; then
    for cand in python3 python; do
        if command -v "$cand" >/dev/null 2>&1 && "$cand" -c 'import torch' >/dev/null 2>&1; then
            py="$cand"
            break
        fi
    done
fi
if [ -z "$py" ]; then
    echo "gpu-check: refused: no python3/python here imports torch (set PYTHON=/path/to/python). Nothing was run." >&2
    exit 3
fi
exec "$py" -m bench.gpu.check "$@"
