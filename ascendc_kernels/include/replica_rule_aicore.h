// The replica-selection rule of csrc/common/replica_rule.h for AI-core code.
//
// AI-core functions must be `__aicore__`, and a replica row lives in Unified Buffer (read with
// LocalTensor::GetValue, not through a host pointer), so the shared header cannot be included
// as is. This is the same arithmetic, operation for operation; tests/ascendc checks that it
// agrees with csrc/common/replica_rule.h on every code and count.
#pragma once

#include "kernel_operator.h"

namespace eplb_ascendc {

constexpr uint32_t kRuleTokenStride = 40503u;
constexpr uint32_t kRuleChoiceStride = 25033u;
constexpr uint32_t kRulePeriodBits = 16u;
constexpr float kRulePeriod = 65536.0f;

__aicore__ inline uint32_t PositionCode(int64_t step, int64_t numTokens, int64_t n, int64_t k) {
  const uint32_t global =
      static_cast<uint32_t>(step) * static_cast<uint32_t>(numTokens) + static_cast<uint32_t>(n);
  return (global * kRuleTokenStride + static_cast<uint32_t>(k) * kRuleChoiceStride) &
         ((1u << kRulePeriodBits) - 1u);
}

__aicore__ inline int32_t UniformReplica(uint32_t code, int32_t cnt) {
  return static_cast<int32_t>((code * static_cast<uint32_t>(cnt)) >> kRulePeriodBits);
}

// shareRow[base + r], r < cnt: one expert's replica_share row in UB.
__aicore__ inline int32_t WeightedReplica(uint32_t code,
                                          const AscendC::LocalTensor<float>& shareRow,
                                          uint32_t base, int32_t cnt) {
  const float u = static_cast<float>(code);
  float cum = 0.0f;
  for (int32_t r = 0; r + 1 < cnt; ++r) {
    cum += shareRow.GetValue(base + static_cast<uint32_t>(r));
    if (u < cum * kRulePeriod) return r;
  }
  return cnt - 1;
}

}  // namespace eplb_ascendc
