#!/usr/bin/env bash
# The one command a GPU owner runs: build the CUDA extension for the GPU in this machine, check every kernel on it
# against its PyTorch reference (`chameleon-lite doctor`), run the CUDA tests that CPU-only CI skips, and benchmark
# attention (forward, forward+backward, decode) and sampling against SDPA (its FlashAttention-2 backend for bf16/fp16
# causal documents), compiled flex_attention and, where installed, FlashInfer's sampler, over the CPU benches' grid.
#
# On a machine with a GPU (meant to take under 10 minutes), and anywhere (--dry-run: each step's CPU stand-in at
# small sizes):
#   bash bench/gpu/run.sh [--dry-run] [--out=DIR] [--quick]
#
# Writes into DIR (default bench/gpu/results): doctor.json, cuda_tests.xml, attention_cuda.json/.png,
# sampling_cuda.json/.png, and report.json + report.md (every step's exit status and time, the tables).
# Exits non-zero when a step failed (a kernel that failed its check, a failing test); every step runs regardless.
set -uo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
OUT="$ROOT/bench/gpu/results"
DRY=0
QUICK=""
PY="${PYTHON:-python}"
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) DRY=1 ;;
    --quick) QUICK="--quick" ;;
    --out) OUT="$2"; shift ;;
    --out=*) OUT="${1#--out=}" ;;
    -h|--help) sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "run.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done
mkdir -p "$OUT" || exit 2
OUT="$(cd "$OUT" && pwd)"
cd "$ROOT" || exit 2
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
STEPS="$OUT/steps.tsv"
: > "$STEPS"
FAILED=0

step() {  # step NAME COMMAND...: run, time, record; never stops the script
  local name="$1"; shift
  echo "== $name: $*"
  local t0=$(date +%s)
  "$@"
  local rc=$?
  printf '%s\t%s\t%s\n' "$name" "$rc" "$(( $(date +%s) - t0 ))" >> "$STEPS"
  if [ "$rc" -ne 0 ]; then echo "== $name failed (exit $rc)"; FAILED=1; fi
  return 0
}

if ! "$PY" -c "import torch" 2>/dev/null; then
  echo "run.sh: $PY cannot import torch; install the project first (see README) or set PYTHON" >&2
  exit 2
fi

if [ "$DRY" -eq 1 ]; then
  echo "dry run: no GPU is used; each step below runs its CPU stand-in at small sizes"
  command -v nvcc >/dev/null 2>&1 && echo "nvcc: $(command -v nvcc)" || echo "nvcc: not on PATH (the real run needs it)"
  step doctor "$PY" -m chameleon_lite.cli doctor --json "$OUT/doctor.json"
  step cuda-tests "$PY" -m pytest -q -m cuda --collect-only -p no:cacheprovider tests
  step attention "$PY" bench/bench_attention.py --device cpu --quick --no-flex --lengths 256 --docs 1 4 --out "$OUT" --name attention_cuda
  step sampling "$PY" bench/bench_sampling.py --device cpu --quick --repeats 3 --out "$OUT" --name sampling_cuda
else
  if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "run.sh: no CUDA GPU is visible to torch here; use --dry-run to check the script on this machine" >&2
    exit 2
  fi
  ARCH="$("$PY" -c "import torch; print('%d%d' % torch.cuda.get_device_capability())")"
  echo "GPU: $("$PY" -c "import torch; print(torch.cuda.get_device_name())"), sm_$ARCH"
  step build env CHAMELEON_LITE_BUILD_CUDA=1 CHAMELEON_LITE_CUDA_ARCHS="$ARCH" "$PY" setup.py -q build_ext --inplace
  step doctor "$PY" -m chameleon_lite.cli doctor --json "$OUT/doctor.json"
  step cuda-tests "$PY" -m pytest -q -m cuda -p no:cacheprovider --junitxml "$OUT/cuda_tests.xml" tests
  step attention "$PY" bench/bench_attention.py --device cuda $QUICK --dtypes bfloat16 float32 --lengths 1024 2048 4096 --budget-s 360 --out "$OUT"
  step sampling "$PY" bench/bench_sampling.py --device cuda $QUICK --dtype bfloat16 --out "$OUT"
fi

"$PY" "$ROOT/bench/gpu/report.py" "$OUT" $([ "$DRY" -eq 1 ] && echo --dry-run) || FAILED=1
exit "$FAILED"
