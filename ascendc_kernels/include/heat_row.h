// The heat ring row of the current device step, shared by the two counting kernels.
#pragma once

#include "kernel_operator.h"

namespace eplb_ascendc {

// Element offset of heat[step mod H, 0] in a heat view with `heatRowStride` elements per row.
// The step counter lives in GM (int64[1]) and advances after the step, so a captured graph
// replays into the right row without host involvement.
__aicore__ inline int64_t HeatRowOffset(int64_t step, int64_t heatRows, int64_t heatRowStride) {
  const int64_t row = ((step % heatRows) + heatRows) % heatRows;
  return row * heatRowStride;
}

}  // namespace eplb_ascendc
