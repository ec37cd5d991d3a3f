#!/usr/bin/env bash
# The one NPU check, for the first run on an Ascend machine: builds eplb_rt with its AscendC
# kernels (EPLB_RT_NPU=ON, SoC from npu-smi), runs the first-use check of the device, then
# scripts/device_check.py --device npu (the four ops on the device against the host expectations,
# route() captured in an NPU graph across a commit, the device path's host-sync counts, the four
# ops' benchmark with whether each can be captured, a layer's migration against the forward) and
# writes one JSON with every figure and pass/fail against the device path's goals (no sync in a
# serving step, graph-safe).
#
#   scripts/npu_check.sh                    # writes $OUT/npu_check.json (a folder), else build/
#   scripts/npu_check.sh /tmp/out.json      # elsewhere (a file, or a folder for npu_check.json)
#   SKIP_BUILD=1 scripts/npu_check.sh       # reuse the in-place build
#   DEVICE_CHECK_S=3600 scripts/npu_check.sh  # all steps' deadline (default 1800 s: the first
#                                           # AscendC build alone may take most of 10 minutes,
#                                           # and no lent machine's 600 s a command applies)
#
# Needs CANN (its set_env.sh sourced: ASCEND_HOME_PATH or ASCEND_TOOLKIT_HOME), torch_npu for the
# installed torch, and an Ascend device; no network. Exit status: 0 every goal met, 1 a goal
# missed or a check failed (see the JSON; its goals are all checks, none on speed), 2 no device, no torch_npu or no CANN, 3 the build or
# the first-use check failed.
NAME=npu_check
# The shared steps default to 560 s, under a lent GPU machine's 600 s a command.
export DEVICE_CHECK_S=${DEVICE_CHECK_S:-1800}
source "$(dirname "$0")/device_check_steps.sh"

"$PYTHON" -c "import torch_npu" 2>/dev/null ||
  fail 2 "torch_npu is not importable with $PYTHON (install the build for torch $("$PYTHON" -c 'import torch; print(torch.__version__)'), and source CANN's set_env.sh)"
[[ -n "${ASCEND_HOME_PATH:-${ASCEND_TOOLKIT_HOME:-}}" ]] ||
  fail 2 "CANN is not set up: source its set_env.sh (ASCEND_HOME_PATH or ASCEND_TOOLKIT_HOME)"
"$PYTHON" -c "import torch, torch_npu, sys; sys.exit(not torch.npu.is_available())" ||
  fail 2 "torch sees no NPU (torch.npu.is_available() is False); nothing was checked"

build_backend EPLB_RT_NPU NPU 900
timeout "$(left 120)" "$PYTHON" -c "import eplb_rt; print('npu_check: build_info', eplb_rt.build_info())" ||
  fail 3 "eplb_rt does not import after the build (see above)"
# The first-use check: a tiny route_and_count on the device must equal the CPU op (it names the
# SoC the kernels were built for when it fails). Launches run one by one (torch_npu's task queue
# off), so a kernel's fault is reported by the call that launched it; a kernel that hangs ends
# the check, not the session's deadline.
ASCEND_LAUNCH_BLOCKING=1 timeout "$(left 300)" \
  "$PYTHON" -c "import torch, torch_npu, eplb_rt.ops as o; o.check_device('npu')" ||
  fail 3 "the NPU kernels fail their first-use check (see above; exit status 124: it hung)"

run_driver npu 900
