#!/usr/bin/env bash
# Incremental in-place build of fastlm._C for development: builds into build/dev (or $1) and
# copies the module(s) into python/fastlm/, so `PYTHONPATH=python pytest` uses them.
# The CUDA module is built when nvcc is found, as in `pip install .` (FASTLM_CUDA=0 skips its
# ~40 s compile on 2 cores).
set -euo pipefail
cd "$(dirname "$0")/.."
bdir=${1:-build/dev}
if [ ! -f "$bdir/build.ninja" ]; then
  cmake -S . -B "$bdir" -G Ninja -DCMAKE_BUILD_TYPE=Release \
    -DPython_EXECUTABLE="$(command -v python3)" \
    -Dpybind11_DIR="$(python3 -m pybind11 --cmakedir)" -DFASTLM_CUDA="${FASTLM_CUDA:-AUTO}" >/dev/null
fi
cmake --build "$bdir" -- -j2
cp -f "$bdir"/_C*.so python/fastlm/
for m in "$bdir"/_cuda*.so; do if [ -f "$m" ]; then cp -f "$m" python/fastlm/; fi; done
