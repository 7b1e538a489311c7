#!/usr/bin/env bash
# `make gpu-check [PYTHON=/path/to/python]`: the course on CUDA, offline, in about 8 minutes.
# 1. pytest (the device fixture is cuda); 2. every notebook under nbval, SAT_PROFILE=quick,
# timed; 3. torchrun --nproc_per_node=<GPUs> of `sat train --profile quick` under NCCL, then
# the same command again (it resumes the finished run on every rank), then a run cut after
# epoch 1 and resumed, compared with an uninterrupted one (tests/gpu_resume.py);
# 4. benchmarks/bench_gpu.py -> benchmarks/results/gpu.md. Installs nothing, needs no network.
# Everything it writes goes under build/gpu-check/ (data, runs, logs, the summary).
set -euo pipefail
PY=${1:?usage: tests/gpu_check.sh PYTHON}
OUT=build/gpu-check

if ! command -v nvidia-smi >/dev/null || ! nvidia-smi -L >/dev/null 2>&1; then
    echo "make gpu-check: no NVIDIA GPU here (nvidia-smi is missing or sees none)." \
         "Run it on a Linux machine with an NVIDIA GPU and its driver; on this one, 'make test'." >&2
    exit 1
fi
"$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" || {
    echo "make gpu-check: $PY has a PyTorch without CUDA (torch.cuda.is_available() is False);" \
         "pass PYTHON=/path/to/a/python whose torch is a CUDA build." >&2
    exit 1
}
GPUS=$(nvidia-smi -L | wc -l)
rm -rf "$OUT" && mkdir -p "$OUT"
# the checkout's sat_helpers even where PYTHON has no install of it (tests/gpu_resume.py)
export SAT_DATA="$PWD/$OUT/data" SAT_PROFILE=quick PYTHONHASHSEED=0
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
SUMMARY="$OUT/summary.md"
{
    echo "# make gpu-check at $(git rev-parse --short HEAD 2>/dev/null || echo '?'), $(date -u +%F)"
    echo
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | sed 's/^/GPU: /'
    "$PY" -c "import torch; print(f'torch {torch.__version__}, CUDA {torch.version.cuda}')"
    echo
    echo "| step | seconds |"
    echo "|---|---|"
} > "$SUMMARY"

timed() {  # timed NAME COMMAND...: run it, log to $OUT/<name>.log, add a row to the summary
    local name=$1 log start end
    shift
    log="$OUT/${name//[^A-Za-z0-9_]/-}.log"
    start=$(date +%s)
    echo "== $name"
    if ! "$@" > "$log" 2>&1; then
        tail -n 40 "$log"
        echo "make gpu-check: '$name' failed; its log is $log" >&2
        exit 1
    fi
    end=$(date +%s)
    echo "| $name | $((end - start)) |" >> "$SUMMARY"
    tail -n 3 "$log"
}

TORCHRUN=("$PY" -m torch.distributed.run --standalone --nproc_per_node="$GPUS")
timed pytest "$PY" -m pytest -q tests -p no:cacheprovider
for nb in notebooks/*.ipynb; do
    timed "nbval $(basename "$nb" .ipynb)" "$PY" -m pytest -q --nbval-lax --nbval-current-env "$nb" \
        -p no:cacheprovider
done
timed "torchrun sat train, $GPUS GPUs" "${TORCHRUN[@]}" -m sat_helpers.cli train --profile quick --no-resume
timed "torchrun sat train again (resumes)" "${TORCHRUN[@]}" -m sat_helpers.cli train --profile quick
for step in whole cut resume; do
    timed "torchrun resume check: $step" "${TORCHRUN[@]}" tests/gpu_resume.py "$OUT/resume" "$step"
done
timed "resume check: compare" "$PY" tests/gpu_resume.py "$OUT/resume" compare
timed "bench_gpu" "$PY" benchmarks/bench_gpu.py
{ echo; cat benchmarks/results/gpu.md; } >> "$SUMMARY"
echo
cat "$SUMMARY"
