#!/usr/bin/env bash
# Compile-checks csrc/npu/*.cpp against torch's headers and the headers of the torch_npu wheel
# that matches the installed torch, without installing torch_npu (it breaks `import torch` on a
# machine without CANN). The wheel is downloaded with `pip download --no-deps` into a temporary
# directory, its headers unpacked there, and removed on exit.
#
#   scripts/check_npu_compile.sh            # torch_npu version = installed torch version
#   TORCH_NPU_VERSION=2.13.0 scripts/check_npu_compile.sh
#   TORCH_NPU_WHEEL=/path/to/torch_npu-....whl scripts/check_npu_compile.sh   # no download
#
# Exit 0 with "SKIP:" when the wheel or its headers cannot be had (offline, no matching
# release); exit 1 when a file fails to compile.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
CXX=${CXX:-g++}
skip() { echo "SKIP: $*"; exit 0; }

command -v "$CXX" >/dev/null || skip "no C++ compiler ($CXX)"
"$PYTHON" -c "import torch" 2>/dev/null || skip "torch is not importable with $PYTHON"
if "$PYTHON" -m pip show torch-npu >/dev/null 2>&1; then
  echo "torch-npu is installed in this environment; this check never installs it and expects it absent" >&2
fi

TORCH_VERSION=$("$PYTHON" -c "import torch; print(torch.__version__.split('+')[0])")
NPU_VERSION=${TORCH_NPU_VERSION:-$TORCH_VERSION}
WORK=$(mktemp -d "${TMPDIR:-/tmp}/eplb_npu_check.XXXXXX")
trap 'rm -rf "$WORK"' EXIT

WHEEL=${TORCH_NPU_WHEEL:-}
if [[ -z "$WHEEL" ]]; then
  echo "downloading torch-npu==$NPU_VERSION (no dependencies, not installed) ..."
  if ! "$PYTHON" -m pip download --quiet --no-deps --only-binary=:all: "torch-npu==$NPU_VERSION" \
      -d "$WORK/wheel" >"$WORK/pip.log" 2>&1; then
    tail -n 3 "$WORK/pip.log" >&2 || true
    skip "could not download the torch-npu $NPU_VERSION wheel for this Python/platform"
  fi
  WHEEL=$(ls "$WORK"/wheel/torch_npu-*.whl 2>/dev/null | head -n 1)
fi
[[ -f "$WHEEL" ]] || skip "no torch_npu wheel found"

"$PYTHON" - "$WHEEL" "$WORK/npu" <<'PY'
import sys, zipfile
wheel, out = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(wheel) as z:
    z.extractall(out, [n for n in z.namelist() if n.startswith("torch_npu/include/")])
PY
NPU_INC="$WORK/npu/torch_npu/include"
[[ -f "$NPU_INC/torch_npu/csrc/framework/OpCommand.h" ]] || skip "the wheel has no torch_npu C++ headers"

# CANN's acl headers ship in recent wheels; if not, declare the little that csrc/npu uses.
STUB_INC="$WORK/stub"
if [[ ! -f "$NPU_INC/acl/acl.h" && ! -f "$NPU_INC/third_party/acl/inc/acl/acl.h" ]]; then
  echo "acl headers not in the wheel: using stub declarations"
  mkdir -p "$STUB_INC/acl"
  cat >"$STUB_INC/acl/acl.h" <<'H'
#pragma once
#include <stdint.h>
typedef int aclError;
typedef void* aclrtStream;
typedef enum { ACL_DEVICE_INFO_AI_CORE_NUM = 0, ACL_DEVICE_INFO_VECTOR_CORE_NUM = 1 } aclDeviceInfo;
static const aclError ACL_SUCCESS = 0;
extern "C" aclError aclGetDeviceCapability(uint32_t deviceId, aclDeviceInfo deviceInfo, int64_t* value);
H
fi

mapfile -t TORCH_INCS < <("$PYTHON" -c "
from torch.utils.cpp_extension import include_paths
print('\n'.join(include_paths()))")
ABI=$("$PYTHON" -c "import torch; print(int(torch._C._GLIBCXX_USE_CXX11_ABI))")
FLAGS=(-std=c++17 -fsyntax-only -D_GLIBCXX_USE_CXX11_ABI="$ABI" -DEPLB_RT_WITH_NPU
       -I ascendc_kernels/include -I csrc -I csrc/common -I "$STUB_INC" -I "$NPU_INC"
       -I "$NPU_INC/third_party/acl/inc" -I "$NPU_INC/third_party/op-plugin")
for inc in "${TORCH_INCS[@]}"; do FLAGS+=(-I "$inc"); done

status=0
for src in csrc/npu/*.cpp; do
  if "$CXX" "${FLAGS[@]}" "$src" 2>"$WORK/err.txt"; then
    echo "ok    $src"
  else
    echo "FAIL  $src"
    head -n 40 "$WORK/err.txt"
    status=1
  fi
done
if [[ $status -eq 0 ]]; then
  echo "csrc/npu compiles against torch $TORCH_VERSION and torch_npu $(basename "$WHEEL")"
fi
exit $status
