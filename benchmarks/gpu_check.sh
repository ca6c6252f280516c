#!/usr/bin/env bash
# The CUDA paths on a GPU machine, in one run of a few minutes (issue 16's GPU half):
#   1. install mamba-ssm's prebuilt wheel (its compiled selective_scan_cuda; importing the
#      mamba_ssm package itself fails there with transformers 5) and this project, both --no-deps;
#   2. the scan backends on CUDA (mamba_ssm and chunked against the reference, values and
#      gradients): tests/test_ops_cuda.py;
#   3. bench_model.py --device cuda: the paper model at batch 16 and 32, fp32, with each backend;
#   4. bench_scan.py --device cuda: the scan alone on the decoder's stage shapes;
#   5. a small MambaAD's loss and gradients on CUDA against the reference scan (tests/test_ops_cuda.py).
#
# Usage, in the repository root of the GPU machine (no network there; torch 2.11, Python 3.12):
#     OUT=/some/dir MAMBAAD_SOURCE_COMMIT=<commit> bash benchmarks/gpu_check.sh WHEEL_DIR
# WHEEL_DIR holds mamba_ssm-*.whl built for that machine's torch and Python. Everything goes to
# $OUT (default results/benchmarks/gpu): gpu_check.log, pytest_cuda.log and the results files.
# MAMBAAD_SOURCE_COMMIT names the commit of the copied tree; it goes into provenance in place of
# git's HEAD (a copy's .git can be missing or stale: on 2026-11-30 it stood at an older commit).
# A step that fails is logged and the next one still runs; the exit status counts the failures.
set -u
WHEELS=${1:?usage: bash benchmarks/gpu_check.sh WHEEL_DIR}
OUT=${OUT:-results/benchmarks/gpu}
mkdir -p "$OUT"
exec > >(tee "$OUT/gpu_check.log") 2>&1
export PYTHONUNBUFFERED=1
failures=0
step() {  # step NAME SECONDS COMMAND...: run with a time limit, log its status
    local name=$1 limit=$2
    shift 2
    echo "== $(date -u +%H:%M:%S) $name"
    timeout "$limit" "$@"
    local status=$?
    [ "$status" -eq 0 ] || { echo "== $name FAILED (exit $status)"; failures=$((failures + 1)); }
}

step "machine" 30 bash -c 'nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv;
    python3 -c "import sys, torch; print(sys.version.split()[0], torch.__version__, torch.version.cuda,
        torch.cuda.get_device_name())"; echo "git HEAD here: $(git rev-parse HEAD 2>/dev/null || echo none),
    MAMBAAD_SOURCE_COMMIT=${MAMBAAD_SOURCE_COMMIT:-unset}"'
step "install mamba-ssm wheel" 60 python3 -m pip install -q --no-index --no-deps --target /tmp/site "$WHEELS"/mamba_ssm-*.whl
export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
step "install the project" 90 python3 -m pip install -q --no-index --no-deps --no-build-isolation .
step "backends" 30 python3 -c "from mambaad_lib.ops import backend_status; print(backend_status('cuda'))"
step "CUDA scan tests" 90 bash -c "python3 -m pytest -q -rs -p no:cacheprovider tests/test_ops_cuda.py \
    -k 'not small_mambaad' 2>&1 | tee '$OUT/pytest_cuda.log'; exit \${PIPESTATUS[0]}"
step "bench_model mamba_ssm" 100 python3 benchmarks/bench_model.py --device cuda --backend mamba_ssm --repeats 5 \
    --output "$OUT/bench_model_cuda_mamba_ssm.json"
step "bench_model chunked" 70 python3 benchmarks/bench_model.py --device cuda --backend chunked --repeats 3 \
    --output "$OUT/bench_model_cuda_chunked.json"
# The model-level test, with its reference on the host CPU, did not finish within 130 s on the H200
# on 2026-11-30 (2 s on a 2-core CPU); it now compares on the GPU, and runs last, verbosely.
step "bench_scan" 40 python3 benchmarks/bench_scan.py --device cuda --batch 16 --repeats 5 \
    --output "$OUT/bench_scan_cuda.json"
step "CUDA model tests" 150 bash -c "python3 -m pytest -v -rs -p no:cacheprovider tests/test_ops_cuda.py \
    -k small_mambaad 2>&1 | tee '$OUT/pytest_cuda_model.log'; exit \${PIPESTATUS[0]}"
echo "== $(date -u +%H:%M:%S) done: $failures step(s) failed"
exit "$failures"
