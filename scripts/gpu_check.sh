#!/usr/bin/env bash
# The one GPU check: builds eplb_rt with CUDA, then runs scripts/device_check.py --device cuda
# (tests/cuda and the device-path tests, the four ops' benchmark, migration overlap through
# EplbRuntime, host-sync counts) and writes one JSON with every figure and pass/fail against the
# goals of issues 7 and 12. scripts/npu_check.sh is the same for an Ascend NPU.
#
#   scripts/gpu_check.sh                    # writes $OUT/gpu_check.json (a folder), else build/
#   scripts/gpu_check.sh /tmp/out.json      # elsewhere (a file, or a folder for gpu_check.json)
#   SKIP_BUILD=1 scripts/gpu_check.sh       # reuse the in-place build
#
# Needs torch with CUDA, nvcc and a GPU; no network. Takes about 6 minutes on an H100/H200
# (build about 2, checks about 4), and never more than DEVICE_CHECK_S seconds (560) in all: the
# build gets at most 240 of them, the checks the rest, the open goals' measurements first.
# Exit status: 0 every goal met, 4 every check passed but a speed goal was missed, 1 a check
# failed (see the JSON), 2 no GPU or no nvcc, 3 the build failed.
NAME=gpu_check
source "$(dirname "$0")/device_check_steps.sh"

"$PYTHON" -c "import torch, sys; sys.exit(torch.version.cuda is None)" ||
  fail 2 "torch $("$PYTHON" -c 'import torch; print(torch.__version__)') is a CPU-only build; install a CUDA build"
"$PYTHON" -c "import torch, sys; sys.exit(not torch.cuda.is_available())" ||
  fail 2 "torch sees no GPU (torch.cuda.is_available() is False); nothing was checked"
command -v nvcc >/dev/null || fail 2 "nvcc is not on PATH (set PATH to include the CUDA toolkit's bin)"

build_backend EPLB_RT_CUDA CUDA 240
run_driver cuda 330
