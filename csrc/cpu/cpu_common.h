// Small helpers shared by the CPU kernels.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>

namespace eplb_rt {

// Ring row of the current step: step mod H, rounded towards -inf so a negative step stays in range.
inline int64_t ring_row(const at::Tensor& step, int64_t num_rows) {
  const int64_t s = *step.const_data_ptr<int64_t>();
  const int64_t row = s % num_rows;
  return row < 0 ? row + num_rows : row;
}

// Adds with wrap-around, as int32 heat counters do on every backend (no signed-overflow UB).
inline int32_t wrapping_add(int32_t a, int64_t b) {
  return static_cast<int32_t>(static_cast<uint32_t>(a) + static_cast<uint32_t>(b));
}

}  // namespace eplb_rt
