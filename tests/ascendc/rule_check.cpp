// Checks that the AI-core copy of the replica rule (ascendc_kernels/include/replica_rule_aicore.h)
// gives the same answers as csrc/common/replica_rule.h: every 16-bit code, every replica count,
// the given share rows, and the position code over the given (step, num_tokens) pairs.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstdint>
#include <vector>

#include "eplb_launch.h"
#include "kernel_operator.h"
#include "replica_rule.h"
#include "replica_rule_aicore.h"

namespace py = pybind11;
using namespace AscendC;

namespace {

// One emulated core: the share rows go to UB as the kernel's table does, then every code is tried.
__global__ __aicore__ void weighted_rule_kernel(GM_ADDR shares, int64_t rows, int32_t maxReplicas,
                                                int64_t* mismatches) {
  TPipe pipe;
  TBuf<TPosition::VECIN> shareBuf;
  GlobalTensor<float> shareGm;
  const uint64_t len = static_cast<uint64_t>(rows) * maxReplicas;
  shareGm.SetGlobalBuffer((__gm__ float*)shares, len);
  pipe.InitBuffer(shareBuf, len * sizeof(float));
  LocalTensor<float> shareLocal = shareBuf.Get<float>();
  DataCopyPad(shareLocal, shareGm, {1, static_cast<uint32_t>(len * sizeof(float)), 0, 0, 0},
              {false, 0, 0, 0.0f});
  PipeBarrier<PIPE_ALL>();
  const float* host = reinterpret_cast<const float*>(shares);
  for (int64_t row = 0; row < rows; ++row) {
    const uint32_t base = static_cast<uint32_t>(row * maxReplicas);
    for (int32_t cnt = 1; cnt <= maxReplicas; ++cnt) {
      for (uint32_t code = 0; code < 65536u; ++code) {
        if (eplb_ascendc::WeightedReplica(code, shareLocal, base, cnt) !=
            eplb_rt::weighted_replica(code, host + base, cnt)) {
          ++*mismatches;
        }
      }
    }
  }
}

}  // namespace

int64_t CountRuleMismatches(py::array_t<float, py::array::c_style> shares,
                            py::array_t<int64_t> steps, py::array_t<int64_t> numTokens) {
  int64_t mismatches = 0;
  const int64_t rows = shares.shape(0);
  const int32_t maxReplicas = static_cast<int32_t>(shares.shape(1));
  for (int32_t cnt = 1; cnt <= maxReplicas; ++cnt) {
    for (uint32_t code = 0; code < 65536u; ++code) {
      if (eplb_ascendc::UniformReplica(code, cnt) != eplb_rt::uniform_replica(code, cnt))
        ++mismatches;
    }
  }
  auto s = steps.unchecked<1>();
  auto n = numTokens.unchecked<1>();
  for (py::ssize_t i = 0; i < s.shape(0); ++i) {
    for (int64_t tok : {int64_t{0}, int64_t{1}, n(i) / 2, n(i) - 1}) {
      for (int64_t k = 0; k < 9; ++k) {
        if (eplb_ascendc::PositionCode(s(i), n(i), tok, k) !=
            eplb_rt::position_code(s(i), n(i), tok, k)) {
          ++mismatches;
        }
      }
    }
  }
  if (rows > 0) {
    int64_t* out = &mismatches;
    uint8_t* data = reinterpret_cast<uint8_t*>(shares.mutable_data());
    EPLB_LAUNCH_KERNEL(weighted_rule_kernel, 1, nullptr, data, rows, maxReplicas, out);
  }
  return mismatches;
}
