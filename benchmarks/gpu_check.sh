#!/usr/bin/env bash
# The GPU check, in one short call on a machine with CUDA: the GPU path against the CPU
# (benchmarks/gpu_check.py) and the spectral throughput on the GPU (spectral_throughput.py).
#
# Needs python3 with torch (CUDA) and texwatch's dependencies. Where they cannot be installed
# from an index, TEXWATCH_WHEELS names a folder of wheels installed into a temporary target first.
# Exits non-zero when an output differs between the devices.
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ -n "${TEXWATCH_WHEELS:-}" ]]; then
    site="$(mktemp -d)"
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$site" \
        "$TEXWATCH_WHEELS"/*.whl
    export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1

nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
python3 benchmarks/gpu_check.py --device cuda
python3 benchmarks/spectral_throughput.py --device cuda --quick
