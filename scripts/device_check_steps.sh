# Steps shared by scripts/gpu_check.sh and scripts/npu_check.sh (sourced, not run). The caller
# sets NAME (gpu_check, npu_check) first; this sets PYTHON, RESULT (the JSON written: the first
# argument, a file or a folder for $NAME.json; else $OUT/$NAME.json when the environment's OUT
# is a folder, as on a lent device machine, whose $OUT is what comes back; else
# build/$NAME.json), LOGS (the folder of the logs, next to it) and PYTHONPATH, and runs from
# the repository root. One deadline bounds every step: DEVICE_CHECK_S seconds in all (default
# 560, under a lent machine's 600 s a command), so the last lines always come back.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

PYTHON=${PYTHON:-python3}
DEADLINE=$((SECONDS + ${DEVICE_CHECK_S:-560}))
if [[ -n "${1:-}" ]]; then
  RESULT=$1
elif [[ -n "${OUT:-}" && -d "${OUT:-}" ]]; then
  RESULT=$OUT
else
  RESULT=build/$NAME.json
fi
[[ -d "$RESULT" ]] && RESULT=$RESULT/$NAME.json
LOGS=$(dirname "$RESULT")
mkdir -p build "$LOGS"
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}

fail() { echo "$NAME: $2" >&2; exit "$1"; }

# left SECONDS: SECONDS, or what is left before the deadline if that is less (at least 1).
left() {
  local rest=$((DEADLINE - SECONDS))
  (( rest < 1 )) && rest=1
  echo $(( $1 < rest ? $1 : rest ))
}

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
    # CMake keeps the compiler of an existing build folder: start over only where it is another
    # (a rerun on the same machine then rebuilds nothing).
    local cache
    for cache in build/cmake-release-*/CMakeCache.txt; do
      [[ -f "$cache" ]] || continue
      grep -q '^CMAKE_CXX_COMPILER:[A-Z]*=/usr/bin/g++$' "$cache" || rm -rf "$(dirname "$cache")"
    done
  fi
  local log="$LOGS/${NAME}_build.log"
  echo "$NAME: building with $1=ON (log in $log)"
  if ! env "$1=ON" EPLB_RT_KERNEL_CACHE=0 MAX_JOBS="${MAX_JOBS:-$(nproc)}" timeout "$(left "$3")" \
    "$PYTHON" setup.py build_ext --inplace >"$log" 2>&1; then
    tail -n 30 "$log" >&2
    fail 3 "the $2 build failed (full log: $log)"
  fi
  # The checks plan with no policy but the alignment `deepseek`'s warm-up compiles (the other
  # policies' kernels would take a minute of device time for nothing).
  local warm="from eplb_rt.algorithms import warm_up; warm_up(['deepseek'])"
  if ! timeout "$(left 120)" "$PYTHON" -c "$warm" >>"$log" 2>&1; then
    echo "$NAME: the kernel warm-up failed; kernels compile at first use (log: $log)" >&2
  fi
}

# run_driver DEVICE SECONDS: scripts/device_check.py on DEVICE, writing $RESULT; exits with its
# status. It writes the JSON after every section, so the time limit keeps what was measured.
run_driver() {
  local rc=0 limit
  limit=$(left "$2")
  # The driver knows the limit (its tests get what is left) and, terminated, stops its pytest.
  timeout --kill-after=10 "$limit" "$PYTHON" scripts/device_check.py --device "$1" \
    --out "$RESULT" --deadline-s "$limit" || rc=$?
  if [[ $rc -eq 124 || $rc -eq 137 ]]; then
    echo "$NAME: the checks ran past $limit s; $RESULT holds the sections that finished" >&2
    rc=1
  fi
  exit "$rc"
}
