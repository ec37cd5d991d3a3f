# Steps shared by scripts/gpu_check.sh and scripts/npu_check.sh (sourced, not run). The caller
# sets NAME (gpu_check, npu_check) first; this sets PYTHON, OUT (the first argument, default
# build/$NAME.json) and PYTHONPATH, and runs from the repository root.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

PYTHON=${PYTHON:-python3}
OUT=${1:-build/$NAME.json}
mkdir -p build "$(dirname "$OUT")"
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}

fail() { echo "$NAME: $2" >&2; exit "$1"; }

"$PYTHON" -c "import torch" 2>/dev/null || fail 2 "torch is not importable with $PYTHON"

# build_backend FLAG WHAT SECONDS: the in-place build with FLAG=ON (a missing backend fails
# instead of being skipped), unless SKIP_BUILD is set; exit status 3 with the log's tail if it
# fails. The policies' kernels are then compiled for this machine's CPU only: the build's
# portable half (for other CPUs) would double that minute of device time for nothing. A compiler with only a static libstdc++ is refused by the build (cmake/libstdcxx.cmake);
# device images may set CXX to one, so the system's g++ is taken instead when it has the shared
# library.
build_backend() {
  [[ -z "${SKIP_BUILD:-}" ]] || return 0
  shared_libstdcxx() { [[ "$("$1" -print-file-name=libstdc++.so 2>/dev/null)" == /* ]]; }
  if ! shared_libstdcxx "${CXX:-g++}" && shared_libstdcxx /usr/bin/g++; then
    echo "$NAME: ${CXX:-g++} has no shared libstdc++; building with /usr/bin/g++"
    export CXX=/usr/bin/g++ CUDAHOSTCXX=/usr/bin/g++
    rm -rf build/cmake-release-*  # CMake keeps the compiler of an existing build folder
  fi
  local log="build/${NAME}_build.log"
  echo "$NAME: building with $1=ON (log in $log)"
  if ! env "$1=ON" EPLB_RT_KERNEL_CACHE=0 MAX_JOBS="${MAX_JOBS:-$(nproc)}" timeout "$3" \
    "$PYTHON" setup.py build_ext --inplace >"$log" 2>&1; then
    tail -n 30 "$log" >&2
    fail 3 "the $2 build failed (full log: $log)"
  fi
  if ! timeout 300 "$PYTHON" -m eplb_rt.cli policies --warm-up >>"$log" 2>&1; then
    echo "$NAME: the kernel warm-up failed; kernels compile at first use (log: $log)" >&2
  fi
}

# run_driver DEVICE SECONDS: scripts/device_check.py on DEVICE, writing $OUT; exits with its
# status. It writes the JSON after every section, so the time limit keeps what was measured.
run_driver() {
  local rc=0
  timeout "$2" "$PYTHON" scripts/device_check.py --device "$1" --out "$OUT" || rc=$?
  if [[ $rc -eq 124 ]]; then
    echo "$NAME: the checks ran past $2 s; $OUT holds the sections that finished" >&2
    rc=1
  fi
  exit "$rc"
}
