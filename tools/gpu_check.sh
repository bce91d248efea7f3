#!/usr/bin/env bash
# GPU check: build fastlm with CUDA, run the kernel tests (with the tiny-model loss parity), the
# trainer/post-training GPU tests and the kernel benchmarks (short sizes); print a short table
# last. Logs go to $OUT (or out/).
# Meant for a lent GPU machine (python3 with torch, pybind11, scikit-build-core, cmake, ninja).
set -uo pipefail
cd "$(dirname "$0")/.."
REPO=$(pwd)
OUT=${OUT:-out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
ARCH=${FASTLM_CUDA_ARCHS:-90}  # one arch keeps the build short; CI builds 80;90
T0=$(date +%s)
stamp() { echo "[gpu_check +$(( $(date +%s) - T0 ))s] $*"; }

nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm --format=csv | tee "$OUT/gpu.txt"
stamp "build (sm_$ARCH)"
# FASTLM_CUDA_EMU=0: no CPU emulation of the kernels here (the real GPU runs them).
if ! FASTLM_CUDA=1 FASTLM_CUDA_EMU=0 python3 -m pip install --no-build-isolation --no-deps -q \
    -C cmake.define.CMAKE_CUDA_ARCHITECTURES="$ARCH" -C build-dir=/tmp/fastlm-build . \
    >"$OUT/build.log" 2>&1; then
  tail -40 "$OUT/build.log"; echo "BUILD FAILED"; exit 1
fi
cd /tmp  # import the installed package, not ./python
python3 -c "import fastlm._cuda, fastlm._C; print('modules ok')" || exit 1
cd "$REPO"

if [ "${GPU_CHECK_MODE:-full}" = bench ]; then  # benchmarks only, at the issue's full sizes
  (cd /tmp && python3 "$REPO/benchmarks/bench_attention.py" --versions 5,6 --json "$OUT/bench.jsonl" \
     >"$OUT/bench_attn_full.log" 2>&1; \
   for dt in bfloat16 float32; do python3 "$REPO/benchmarks/bench_cross_entropy.py" --device cuda \
     --dtype $dt --sizes 4096x768x32768,4096x768x50304,8192x768x32768,8192x768x50304 \
     --json "$OUT/bench.jsonl"; done >"$OUT/bench_ce_full.log" 2>&1)
  stamp "done"
  cat "$OUT/bench_ce_full.log" "$OUT/bench_attn_full.log"
  exit 0
fi

stamp "tests"
(cd /tmp && FASTLM_TEST_ATTN_VERSIONS=1,2,3,4 python3 -m pytest -q -p no:cacheprovider \
   --timeout 240 --maxfail=10 "$REPO/tests/test_cross_entropy.py" "$REPO/tests/test_attention.py" \
   -rs 2>&1) | tee "$OUT/tests.log" | tail -25
TEST_RC=${PIPESTATUS[0]}
# Kernels not yet proven on a GPU (attention v5 and v6, CE chunk kernel v2; all pass the CPU
# emulator) in their own process, as the defaults of every attention / cross-entropy test.
stamp "tests, attention kernels v5 + v6 and CE kernel v2"
(cd /tmp && FASTLM_TEST_ATTN_VERSIONS=5,6 FASTLM_ATTN_VERSION=6 FASTLM_CE_VERSION=2 \
   python3 -m pytest -q -p no:cacheprovider --timeout 240 --maxfail=10 "$REPO/tests/test_attention.py" \
   "$REPO/tests/test_cross_entropy.py" 2>&1) | tee "$OUT/tests_v5.log" | tail -15
V5_RC=${PIPESTATUS[0]}
# compute-sanitizer on the newest kernel (Firecracker machines only: gVisor refuses the device).
if command -v compute-sanitizer >/dev/null && { [ "${GPU_CHECK_SANITIZE:-0}" = 1 ] || [ "$V5_RC" != 0 ]; }; then
  stamp "compute-sanitizer (memcheck, racecheck) on attention v5 and v6"
  for tool in memcheck racecheck; do
    (cd /tmp && timeout 150 compute-sanitizer --tool $tool --kernel-name kns=attn --error-exitcode 9 \
       python3 "$REPO/tools/sanitize_attention.py" 5 6 >"$OUT/sanitize_$tool.log" 2>&1)
    echo "compute-sanitizer $tool: rc=$? (log: sanitize_$tool.log)" | tee -a "$OUT/sanitize.txt"
    tail -12 "$OUT/sanitize_$tool.log"
  done
fi
# The trainer and post-training on the GPU (bf16 autocast, fused AdamW, MFU, resume, SFT/DPO/GRPO).
stamp "tests, trainer and post-training on the GPU"
(cd /tmp && python3 -m pytest -q -p no:cacheprovider --timeout 300 --maxfail=3 \
   "$REPO/tests/test_gpu_paths.py" -rs 2>&1) | tee "$OUT/tests_train.log" | tail -15

stamp "benchmarks"
: >"$OUT/bench.jsonl"
(cd /tmp && python3 "$REPO/benchmarks/bench_cross_entropy.py" --device cuda --dtype bfloat16 \
   --quick --json "$OUT/bench.jsonl" && \
 python3 "$REPO/benchmarks/bench_cross_entropy.py" --device cuda --dtype float32 --quick \
   --json "$OUT/bench.jsonl") >"$OUT/bench_ce.log" 2>&1
(cd /tmp && python3 "$REPO/benchmarks/bench_attention.py" ${ATTN_ARGS:---quick --versions 5,6} \
   --json "$OUT/bench.jsonl" || FASTLM_ATTN_VERSION=3 python3 "$REPO/benchmarks/bench_attention.py" \
   --quick --json "$OUT/bench.jsonl") >"$OUT/bench_attn.log" 2>&1
stamp "done"
echo "================ summary ================"
grep -E "passed|failed|error|skipped" "$OUT/tests.log" | tail -3
echo "attention v5 + v6, CE v2: $(grep -E "passed|failed|error|skipped" "$OUT/tests_v5.log" | tail -1)"
echo "trainer/post-training on GPU: $(grep -E "passed|failed|error|skipped" "$OUT/tests_train.log" | tail -1)"
[ -f "$OUT/sanitize.txt" ] && cat "$OUT/sanitize.txt"
cat "$OUT/bench_ce.log" "$OUT/bench_attn.log" | tail -40
exit $TEST_RC
