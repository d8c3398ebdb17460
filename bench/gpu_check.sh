#!/usr/bin/env bash
# One-shot GPU check for the kernels, for a machine with an NVIDIA GPU and PyTorch,
# Triton and nvcc already installed (no network needed, nothing is pip-installed):
#   1. preflight: GPU visible to torch, build dependencies present (fails fast, saying
#      what is missing);
#   2. builds kernels._C and kernels._C_cuda in place for THIS GPU's architecture only
#      (REWARD_ENGINE_CUDA_ARCHS from torch.cuda.get_device_capability: 90a on sm_90);
#   3. runs the GPU tests (pytest -m gpu: the cuda and triton backends on CUDA tensors);
#   4. runs bench/kernels.py --device cuda (every op at Llama-70B and 1B shapes, with the
#      GPU targets: RMSNorm vs copy bandwidth, FP8 GEMM vs torch._scaled_mm, paged
#      prefill attention vs SDPA-flash);
#   5. runs bench/synthetic.py: end-to-end scoring through the scheduler and runner with
#      weights generated on the GPU (no checkpoint on disk): a 70B-shaped FP8 engine
#      (80 layers) and an 8B shape in bf16 and FP8, on the rlhf-group and mixed workloads
#      (tokens/s, share of the dense peak, GPU memory, FP8 / bf16 ratio);
#   6. writes bench/results/gpu_check_<device>_<date>.md (device name, date, versions,
#      each step's status and time, the test summary, the targets table, the fastest
#      backend per op and the end-to-end table) beside the benchmark's
#      kernels_cuda_<device>.md/.json and e2e_synthetic_<device>.md/.json, prints it,
#      and copies it, the reports and the logs into $OUT when that folder is set.
# Budget: 8 minutes on one H100 (each step has its own timeout below).
#
#   bash bench/gpu_check.sh             # everything
#   bash bench/gpu_check.sh --dry-run   # print the steps and checks, run nothing
#   PYTHON=/path/to/python bash bench/gpu_check.sh
#   GPU_CHECK_RESULTS=/some/dir bash bench/gpu_check.sh   # instead of bench/results
set -uo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-python3}"
DRY_RUN=0
for arg in "$@"; do
  case "$arg" in
    --dry-run) DRY_RUN=1 ;;
    -h|--help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0 ;;
    *) echo "gpu_check.sh: unknown argument $arg (try --help)" >&2; exit 2 ;;
  esac
done

BUILD_TIMEOUT=${BUILD_TIMEOUT:-110}
TEST_TIMEOUT=${TEST_TIMEOUT:-130}
BENCH_TIMEOUT=${BENCH_TIMEOUT:-120}
E2E_TIMEOUT=${E2E_TIMEOUT:-120}

fail() { echo "gpu_check.sh: $*" >&2; exit 1; }
say() { echo "== $*"; }

# ---------------------------------------------------------------------------- preflight
# The build needs setuptools, pybind11 (setup.py includes its headers), a C++ compiler
# and nvcc with the static CUDA runtime; the tests and benchmark need torch with CUDA and
# triton. Each is checked here so a missing piece stops the run in seconds, not after a
# half-finished build.
preflight() {
  command -v "$PYTHON" >/dev/null 2>&1 || fail "no $PYTHON on PATH (set PYTHON=...)"
  local missing
  missing=$("$PYTHON" - <<'EOF'
import importlib.util
names = ["torch", "triton", "setuptools", "pybind11", "pytest"]
print(" ".join(n for n in names if importlib.util.find_spec(n) is None))
EOF
)
  [ -z "$missing" ] || fail "missing Python packages: $missing. This script installs nothing; \
install them from a local wheel or mirror (pybind11 is a pure-Python wheel), then rerun."
  command -v "${CXX:-c++}" >/dev/null 2>&1 || command -v g++ >/dev/null 2>&1 \
    || fail "no C++ compiler (c++ or g++) on PATH: setup.py compiles csrc/ with it"
  NVCC_HOME=""
  for home in "${CUDA_HOME:-}" "${CUDA_PATH:-}" \
      "$(command -v nvcc >/dev/null 2>&1 && dirname "$(dirname "$(readlink -f "$(command -v nvcc)")")")" \
      /usr/local/cuda; do
    if [ -n "$home" ] && [ -x "$home/bin/nvcc" ]; then NVCC_HOME="$home"; break; fi
  done
  [ -n "$NVCC_HOME" ] || fail "no nvcc found (CUDA_HOME, CUDA_PATH, PATH, /usr/local/cuda): \
kernels._C_cuda cannot be built"
  GPU_INFO=$("$PYTHON" - 2>&1 <<'EOF'
import torch
if not torch.cuda.is_available():
    raise SystemExit("torch sees no CUDA GPU (torch %s, CUDA %s)" % (torch.__version__, torch.version.cuda))
major, minor = torch.cuda.get_device_capability(0)
arch = f"{major}{minor}" + ("a" if major >= 9 else "")  # arch-specific features on sm_90+
print(arch, torch.cuda.get_device_name(0), sep="|")
EOF
) || fail "$(echo "${GPU_INFO:-torch could not query the GPU}" | tail -n 1)"
  GPU_INFO=$(echo "$GPU_INFO" | tail -n 1)
  ARCH="${GPU_INFO%%|*}"
  DEVICE_NAME="${GPU_INFO#*|}"
}

if [ "$DRY_RUN" = 1 ]; then
  ARCH="<from torch.cuda.get_device_capability(0), e.g. 90a on sm_90>"
  DEVICE_NAME="<torch.cuda.get_device_name(0)>"
  NVCC_HOME="<CUDA_HOME | CUDA_PATH | nvcc on PATH | /usr/local/cuda>"
else
  preflight
fi

STAMP=$(date -u +%Y-%m-%d_%H%M)
SLUG=$(echo "$DEVICE_NAME" | tr -cs 'A-Za-z0-9' '_' | sed 's/^_*//; s/_*$//')
[ "$DRY_RUN" = 1 ] && SLUG="DEVICE"
RESULTS="${GPU_CHECK_RESULTS:-bench/results}"
SUMMARY="$RESULTS/gpu_check_${SLUG}_${STAMP}.md"
BENCH_OUT="$RESULTS/kernels_cuda_${SLUG}"
E2E_OUT="$RESULTS/e2e_synthetic_${SLUG}"
LOGDIR="$RESULTS/gpu_check_logs_${STAMP}"

STEPS=(build tests bench e2e)
declare -A CMD TIMEOUT STATUS SECONDS_TAKEN
CMD[build]="env REWARD_ENGINE_CUDA_ARCHS='$ARCH' CUDA_HOME='$NVCC_HOME' $PYTHON setup.py build_ext --inplace"
# The GPU tests spend most of their time compiling Triton kernels, one specialization at
# a time: with pytest-xdist there (the CUDA image has it), 8 workers compile in parallel.
XDIST=""
if [ "$DRY_RUN" = 1 ] || "$PYTHON" -c "import xdist" >/dev/null 2>&1; then
  XDIST="-n $(( $(nproc) < 8 ? $(nproc) : 8 ))"
fi
CMD[tests]="env -u TRITON_INTERPRET $PYTHON -m pytest -q -m gpu -p no:cacheprovider -rfE --tb=short $XDIST tests/kernels"
CMD[bench]="env -u TRITON_INTERPRET $PYTHON bench/kernels.py --device cuda --out $BENCH_OUT"
# 70b FP8 first (the headline), then the 8b pair; each run generates its weights on the
# GPU and frees them before the next.
CMD[e2e]="env -u TRITON_INTERPRET $PYTHON bench/synthetic.py --device cuda --shape 70b --quantization fp8 --out ${E2E_OUT}_70b && env -u TRITON_INTERPRET $PYTHON bench/synthetic.py --device cuda --shape 8b --quantization none,fp8 --out ${E2E_OUT}_8b"
TIMEOUT[build]=$BUILD_TIMEOUT
TIMEOUT[tests]=$TEST_TIMEOUT
TIMEOUT[bench]=$BENCH_TIMEOUT
TIMEOUT[e2e]=$E2E_TIMEOUT

if [ "$DRY_RUN" = 1 ]; then
  say "dry run: nothing is executed"
  say "preflight: python packages torch triton setuptools pybind11 pytest; a C++ compiler;"
  say "           nvcc; torch.cuda.is_available(); the arch from the device capability"
  for step in "${STEPS[@]}"; do
    say "$step (timeout ${TIMEOUT[$step]} s): ${CMD[$step]}"
  done
  say "summary: $SUMMARY (logs in $LOGDIR/)"
  exit 0
fi

mkdir -p "$LOGDIR"
RUN_START=$(date +%s)
say "device: $DEVICE_NAME, building for sm_$ARCH with $NVCC_HOME/bin/nvcc"
for step in "${STEPS[@]}"; do
  say "$step: ${CMD[$step]}"
  start=$(date +%s)
  timeout --kill-after=10 "${TIMEOUT[$step]}" bash -c "${CMD[$step]}" >"$LOGDIR/$step.log" 2>&1
  rc=$?
  SECONDS_TAKEN[$step]=$(( $(date +%s) - start ))
  case $rc in
    0) STATUS[$step]="ok" ;;
    124|137) STATUS[$step]="TIMED OUT after ${TIMEOUT[$step]} s" ;;
    *) STATUS[$step]="FAILED (exit $rc)" ;;
  esac
  tail -n 3 "$LOGDIR/$step.log"
  say "$step: ${STATUS[$step]} in ${SECONDS_TAKEN[$step]} s"
  if [ "$step" = build ] && [ "$rc" != 0 ]; then
    echo "the build failed; the tests and benchmark would not measure the CUDA kernels" >&2
    break
  fi
done

# ---------------------------------------------------------------------------- summary
{
  echo "# GPU check: $DEVICE_NAME"
  echo
  echo "$(date -u '+%Y-%m-%d %H:%M UTC'); built for sm_$ARCH; $("$PYTHON" -c \
    'import torch, triton, platform; print(f"torch {torch.__version__} (CUDA {torch.version.cuda}), triton {triton.__version__}, Python {platform.python_version()}")' 2>/dev/null); \
nvcc $("$NVCC_HOME/bin/nvcc" --version | sed -n 's/.*release \([0-9.]*\).*/\1/p')."
  echo
  echo "| step | status | seconds | log |"
  echo "|---|---|---|---|"
  for step in "${STEPS[@]}"; do
    echo "| $step | ${STATUS[$step]:-not run} | ${SECONDS_TAKEN[$step]:--} | $LOGDIR/$step.log |"
  done
  echo
  echo "Total: $(( $(date +%s) - RUN_START )) s (budget: 480 s on one H100)."
  echo
  echo "## GPU tests"
  echo
  if [ -f "$LOGDIR/tests.log" ]; then
    echo '```'
    grep -E "passed|failed|error|FAILED|ERROR" "$LOGDIR/tests.log" | tail -n 25
    echo '```'
  else
    echo "not run"
  fi
  echo
  echo "## Benchmark targets (full tables: $BENCH_OUT.md)"
  echo
  if [ -f "$BENCH_OUT.md" ]; then
    sed -n '/^## Targets/,/^## /p' "$BENCH_OUT.md" | sed '1d;$d'
    echo
    sed -n '/^## Fastest GPU backend per op/,/^## [a-z]/p' "$BENCH_OUT.md" | sed '$d'
  else
    echo "not measured (the benchmark did not finish; see $LOGDIR/bench.log)"
  fi
  echo
  echo "## End to end, synthetic weights (full tables: ${E2E_OUT}_*.md)"
  echo
  found=0
  for f in "${E2E_OUT}_70b.md" "${E2E_OUT}_8b.md"; do
    if [ -f "$f" ]; then sed -n '/^| shape/,$p' "$f"; echo; found=1; fi
  done
  [ "$found" = 1 ] || echo "not measured (see $LOGDIR/e2e.log)"
} >"$SUMMARY"
say "wrote $SUMMARY"
cat "$SUMMARY"

# Where the caller collects files in $OUT (a lent GPU machine keeps nothing), copy the
# summary, the reports and the four logs there, one folder deep.
if [ -n "${OUT:-}" ] && [ -d "$OUT" ]; then
  cp "$SUMMARY" "$OUT/"
  for f in "$BENCH_OUT.md" "$BENCH_OUT.json" "${E2E_OUT}"_*.md "${E2E_OUT}"_*.json "$LOGDIR"/*.log; do
    [ -f "$f" ] && cp "$f" "$OUT/"
  done
  say "copied the summary, report and logs to $OUT"
fi

for step in "${STEPS[@]}"; do
  [ "${STATUS[$step]:-}" = ok ] || exit 1
done
exit 0
