#!/usr/bin/env bash
# The one GPU check: builds eplb_rt with CUDA, then runs scripts/device_check.py --device cuda
# (tests/cuda and the device-path tests, the four ops' benchmark, migration overlap through
# EplbRuntime, host-sync counts) and writes one JSON with every figure and pass/fail against the
# goals of issues 7 and 12. scripts/npu_check.sh is the same for an Ascend NPU.
#
#   scripts/gpu_check.sh                    # writes build/gpu_check.json
#   scripts/gpu_check.sh /tmp/out.json      # elsewhere
#   SKIP_BUILD=1 scripts/gpu_check.sh       # reuse the in-place build
#
# Needs torch with CUDA, nvcc and a GPU; no network. Takes about 6 minutes on an H100/H200
# (build about 2, checks about 4; the time limits inside stop it after 4 + 5.5 minutes).
# Exit status: 0 every goal met, 1 a goal missed or a check failed (see the JSON), 2 no GPU
# or no nvcc, 3 the build failed.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
OUT=${1:-build/gpu_check.json}
mkdir -p build "$(dirname "$OUT")"
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}

fail() { echo "gpu_check: $2" >&2; exit "$1"; }

"$PYTHON" -c "import torch" 2>/dev/null || fail 2 "torch is not importable with $PYTHON"
"$PYTHON" -c "import torch, sys; sys.exit(torch.version.cuda is None)" ||
  fail 2 "torch $("$PYTHON" -c 'import torch; print(torch.__version__)') is a CPU-only build; install a CUDA build"
"$PYTHON" -c "import torch, sys; sys.exit(not torch.cuda.is_available())" ||
  fail 2 "torch sees no GPU (torch.cuda.is_available() is False); nothing was checked"
command -v nvcc >/dev/null || fail 2 "nvcc is not on PATH (set PATH to include the CUDA toolkit's bin)"

# A compiler with only a static libstdc++ is refused by the build (cmake/libstdcxx.cmake); GPU
# images may set CXX to one, so take the system's g++ instead when it has the shared library.
shared_libstdcxx() { [[ "$("$1" -print-file-name=libstdc++.so 2>/dev/null)" == /* ]]; }
if [[ -z "${SKIP_BUILD:-}" ]] && ! shared_libstdcxx "${CXX:-g++}" && shared_libstdcxx /usr/bin/g++; then
  echo "gpu_check: ${CXX:-g++} has no shared libstdc++; building with /usr/bin/g++"
  export CXX=/usr/bin/g++ CUDAHOSTCXX=/usr/bin/g++
  rm -rf build/cmake-release-*  # CMake keeps the compiler of an existing build folder
fi

if [[ -z "${SKIP_BUILD:-}" ]]; then
  echo "gpu_check: building with EPLB_RT_CUDA=ON (log in build/gpu_check_build.log)"
  if ! EPLB_RT_CUDA=ON MAX_JOBS=${MAX_JOBS:-$(nproc)} timeout 240 \
    "$PYTHON" setup.py build_ext --inplace >build/gpu_check_build.log 2>&1; then
    tail -n 30 build/gpu_check_build.log >&2
    fail 3 "the CUDA build failed (full log: build/gpu_check_build.log)"
  fi
fi

# The driver writes the JSON after every section, so the time limit keeps what was measured.
rc=0
timeout 330 "$PYTHON" scripts/device_check.py --device cuda --out "$OUT" || rc=$?
if [[ $rc -eq 124 ]]; then
  echo "gpu_check: the checks ran past 5.5 minutes; $OUT holds the sections that finished" >&2
  rc=1
fi
exit "$rc"
