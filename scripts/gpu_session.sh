#!/usr/bin/env bash
# One call on a lent GPU machine (the device tool's `run`, from the repo root):
#   scripts/gpu_session.sh tests|sanitize|bench|kernels   (or several, in order)
# builds the CUDA extension in place for sm_90 (unless hardloss_cuda/_C*.so was carried),
# then runs the GPU test suite, compute-sanitizer over scripts/cuda_sanitize_cases.py, or
# the benchmark report. Everything it prints lands in $OUT too.
set -uo pipefail
OUT=${OUT:-/tmp/hl_out}
mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1; then  # peer kernels carried as wheels (liger-kernel, ...)
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv > "$OUT/gpu.txt"
python3 -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__)" | tee -a "$OUT/gpu.txt"
if ! ls hardloss_cuda/_C*.so >/dev/null 2>&1; then
  start=$SECONDS
  HARDLOSS_FORCE_CUDA=1 TORCH_CUDA_ARCH_LIST=9.0 MAX_JOBS=16 python3 setup.py -q build_ext --inplace > "$OUT/build.log" 2>&1 \
    || { tail -40 "$OUT/build.log"; exit 1; }
  echo "built in $((SECONDS - start)) s"
  cp hardloss_cuda/_C*.so hardloss_cuda/_build_info.json "$OUT/"
fi
rc=0
for part in "$@"; do
  case $part in
    tests)
      HARDLOSS_REQUIRE_EXTENSION=1 timeout 420 python3 -m pytest tests -q -p no:cacheprovider -rf \
        --ignore tests/test_triton_interpreter.py > "$OUT/pytest-gpu.txt" 2>&1 || rc=1
      tail -25 "$OUT/pytest-gpu.txt" ;;
    sanitize)
      for tool in memcheck racecheck; do
        timeout 240 compute-sanitizer --tool $tool --error-exitcode 9 python3 scripts/cuda_sanitize_cases.py \
          > "$OUT/sanitizer-$tool.txt" 2>&1 || rc=1
        tail -4 "$OUT/sanitizer-$tool.txt"
      done ;;
    bench)
      timeout 420 python3 benchmarks/report.py --out "$OUT/results" > "$OUT/report-stdout.txt" 2>&1 || rc=1
      tail -45 "$OUT/report-stdout.txt" ;;
    kernels)
      timeout 300 python3 benchmarks/kernel_bandwidth.py > "$OUT/kernel-bandwidth.txt" 2>&1 || rc=1
      cat "$OUT/kernel-bandwidth.txt" ;;
  esac
done
exit $rc
