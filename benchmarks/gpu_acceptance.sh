#!/usr/bin/env bash
# GPU acceptance on a GPU machine with PyTorch preinstalled (benchmarks/gpu_acceptance.py).
# Usage: bash benchmarks/gpu_acceptance.sh OUT_DIR [DATA_DIR] [extra gpu_acceptance.py args]
# Wheels of what that machine lacks (edt, fastremap) may lie in .whl/ (see README,
# "Performance"); they are installed into /tmp/site, never into the system Python.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:?usage: gpu_acceptance.sh OUT_DIR [DATA_DIR] [args]}
data=${2:-../shared/data}
shift $(( $# >= 2 ? 2 : 1 ))
if compgen -G ".whl/*.whl" > /dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
mkdir -p "$out"
nvidia-smi > "$out/nvidia-smi.txt" 2>&1 || true
exec python3 benchmarks/gpu_acceptance.py "$out" --data "$data" "$@"
