#!/usr/bin/env bash
# Compile-checks csrc/npu/*.cpp and the host launchers (ascendc_kernels/launch/launchers.cpp)
# against torch's headers and the headers of the torch_npu wheel that matches the installed torch,
# without installing torch_npu (it breaks `import torch` on a machine without CANN). The wheel is
# downloaded with `pip download --no-deps` into a temporary directory, its headers unpacked there,
# and removed on exit. The aclrtlaunch_<kernel>.h headers that CANN's ascendc_library() would
# generate are written from the kernels' __global__ entries (GM_ADDR -> void*, after blockDim and
# the stream), so the launchers are checked against the kernels' real signatures.
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
  # acl_base.h holds the types (the generated aclrtlaunch_ headers include it), acl.h the rest.
  cat >"$STUB_INC/acl/acl_base.h" <<'H'
#pragma once
#include <stdint.h>
typedef int aclError;
typedef void* aclrtStream;
H
  cat >"$STUB_INC/acl/acl.h" <<'H'
#pragma once
#include "acl/acl_base.h"
typedef enum { ACL_DEVICE_INFO_AI_CORE_NUM = 0, ACL_DEVICE_INFO_VECTOR_CORE_NUM = 1 } aclDeviceInfo;
static const aclError ACL_SUCCESS = 0;
extern "C" aclError aclGetDeviceCapability(uint32_t deviceId, aclDeviceInfo deviceInfo, int64_t* value);
H
fi

# aclrtlaunch_<kernel>.h as ascendc_library() generates it: extern "C" uint32_t
# aclrtlaunch_<kernel>(uint32_t blockDim, aclrtStream stream, <entry args, GM_ADDR as void*>).
GEN_INC="$WORK/aclrtlaunch"
"$PYTHON" - "$GEN_INC" ascendc_kernels/*/*.cpp <<'PY'
import pathlib, re, sys
out = pathlib.Path(sys.argv[1])
out.mkdir(parents=True)
entry = re.compile(r'extern "C" __global__ __aicore__ void (\w+)\(([^)]*)\)', re.S)
count = 0
for src in sys.argv[2:]:
    for name, params in entry.findall(pathlib.Path(src).read_text()):
        args = ", ".join(" ".join(p.split()).replace("GM_ADDR", "void*") for p in params.split(","))
        (out / f"aclrtlaunch_{name}.h").write_text(
            '#pragma once\n#include "acl/acl_base.h"\n'
            "#ifndef ACLRT_LAUNCH_KERNEL\n"
            "#define ACLRT_LAUNCH_KERNEL(kernel_func) aclrtlaunch_##kernel_func\n#endif\n"
            f'extern "C" uint32_t aclrtlaunch_{name}(uint32_t blockDim, aclrtStream stream, {args});\n'
        )
        count += 1
print(f"generated {count} aclrtlaunch headers from the kernels' entries")
PY

mapfile -t TORCH_INCS < <("$PYTHON" -c "
from torch.utils.cpp_extension import include_paths
print('\n'.join(include_paths()))")
ABI=$("$PYTHON" -c "import torch; print(int(torch._C._GLIBCXX_USE_CXX11_ABI))")
# The standard of torch's headers, as CMakeLists.txt picks it: C++20 from torch 2.14.
STD=$("$PYTHON" -c "import torch
major, minor = (int(x) for x in torch.__version__.split('+')[0].split('.')[:2])
print('c++20' if (major, minor) >= (2, 14) else 'c++17')")
FLAGS=(-std="$STD" -fsyntax-only -Wall -Wextra -Werror -Wno-unused-parameter
       -D_GLIBCXX_USE_CXX11_ABI="$ABI" -DEPLB_RT_WITH_NPU -DEPLB_RT_SOC_VERSION='"Ascend910B1"'
       -I ascendc_kernels/include -I csrc -I csrc/common -I "$GEN_INC"
       -isystem "$STUB_INC" -isystem "$NPU_INC" -isystem "$NPU_INC/third_party/acl/inc"
       -isystem "$NPU_INC/third_party/op-plugin")
# Warnings are errors in our files only: torch's and torch_npu's headers come in as system headers.
for inc in "${TORCH_INCS[@]}"; do FLAGS+=(-isystem "$inc"); done

status=0
for src in csrc/npu/*.cpp ascendc_kernels/launch/launchers.cpp; do
  if "$CXX" "${FLAGS[@]}" "$src" 2>"$WORK/err.txt"; then
    echo "ok    $src"
  else
    echo "FAIL  $src"
    head -n 40 "$WORK/err.txt"
    status=1
  fi
done
if [[ $status -eq 0 ]]; then
  echo "csrc/npu and the launchers compile against torch $TORCH_VERSION and torch_npu $(basename "$WHEEL")"
fi
exit $status
