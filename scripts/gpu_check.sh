#!/usr/bin/env bash
# The checks that need a CUDA GPU, as one script for a machine that has one (CI has none).
#   bash scripts/gpu_check.sh
# 1. tests/test_cuda.py: samples, sweeps, the Jacobian and training on the GPU agree with
#    the CPU (the tests skip themselves elsewhere);
# 2. TRAIN_RUN=DIR TRAIN_ARGS="...": that run's members trained on the GPU (`train
#    --device cuda`), in the background while 3 runs; the members come back as tar files;
# 3. AGREE_RUN=DIR: benchmarks/attribution.py's agreement part on the GPU (every method
#    against exact, the verified top-10 and the M it needs), SEEDS seeds, stopped after
#    AGREE_TIMEOUT seconds if set (its log keeps the seeds done).
# Everything is written to $OUT (default gpu-out). Wheels in .whl/ (packages the GPU
# machine lacks, e.g. diffusers) are installed first; faiss is not needed for 1-3.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
OUT=${OUT:-gpu-out}
DEVICE=${DEVICE:-cuda}
PY=${PY:-python3}
mkdir -p "$OUT"
if compgen -G ".whl/*.whl" >/dev/null; then
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=.${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1

{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1
  $PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"
} | tee "$OUT/gpu.txt"

train_pid=""
if [ -n "${TRAIN_RUN:-}" ]; then
    # shellcheck disable=SC2086  # TRAIN_ARGS is a list of arguments
    ( t0=$(date +%s); $PY -m tda train $TRAIN_ARGS --device "$DEVICE" --out "$TRAIN_RUN"
      echo "train exit $? after $(( $(date +%s) - t0 )) s" ) > "$OUT/train.log" 2>&1 &
    train_pid=$!
fi

$PY -m pytest -q -p no:cacheprovider tests/test_cuda.py 2>&1 | tee "$OUT/pytest.log"

if [ -n "${AGREE_RUN:-}" ]; then
    timeout "${AGREE_TIMEOUT:-0}" $PY benchmarks/attribution.py --run "$AGREE_RUN" --skip-speed --device "$DEVICE" \
        --chunk "${CHUNK:-1024}" --seeds "${SEEDS:-24}" --seed "${SEED:-2026}" \
        --methods "${METHODS:-jacobian,last-step,individual,individual-paper}" --json "$OUT/agreement.json" 2>&1 \
        | tee "$OUT/agreement.log"
fi

if [ -n "$train_pid" ]; then
    wait "$train_pid"
    tr '\r' '\n' < "$OUT/train.log" | grep -v "^$" | tail -n 20
    # members/NN, in two files (one file may carry at most 16 MB back)
    (cd "$TRAIN_RUN" && tar cf - members/0[0-7] 2>/dev/null) > "$OUT/members-a.tar"
    (cd "$TRAIN_RUN" && tar cf - members/0[89] members/1[0-9] 2>/dev/null) > "$OUT/members-b.tar"
    ls -la "$OUT"
fi
