#!/usr/bin/env bash
# Every GPU figure of docs/benchmarks.md in one run, for a machine that has torch + CUDA but not the bundle's other
# requirements and no network (benchmarks/gpu_suite.py says what each case measures):
#
#   pip download --no-deps -d .whl monai==1.6.1 nibabel==5.4.2 tqdm==4.70.1   # once, where there is a network
#   OUT=outputs/gpu_suite bash benchmarks/gpu_suite.sh [--cases ...]           # on the GPU machine
#
# The suite needs only these pure-Python wheels beside torch and numpy: the writer imports matplotlib only for PNGs,
# and no case writes one. Results: $OUT/gpu_suite.json (rewritten after every case) and $OUT/gpu_suite.log.
# SUITE_TIMEOUT (s, default 540) kills a run that hangs; BUDGET_S (default 420) stops starting new cases.
set -euo pipefail
OUT=${OUT:-outputs/gpu_suite}
PYTHON=${PYTHON:-python3}
mkdir -p "$OUT"
log="$OUT/gpu_suite.log"
{
    date -u
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "no nvidia-smi"
    if ! "$PYTHON" -c "import monai, nibabel, tqdm" 2>/dev/null; then
        "$PYTHON" -m pip install --quiet --no-deps --no-index --find-links .whl monai nibabel tqdm
    fi
    "$PYTHON" -c "import torch, monai; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'monai', monai.__version__)"
} 2>&1 | tee -a "$log"
timeout "${SUITE_TIMEOUT:-540}" "$PYTHON" -m benchmarks.gpu_suite --out "$OUT" --budget_s "${BUDGET_S:-420}" "$@" \
    2>&1 | tee -a "$log"
