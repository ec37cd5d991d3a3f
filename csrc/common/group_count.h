// The token count of one group_list entry, as every backend of count_from_group_list reads it:
// the entry itself, or with inclusive prefix sums its difference from the entry before.
//
// Computed without signed overflow: two int64 entries of a malformed list may differ by more than
// int64 holds (5 and INT64_MIN), and a wrapped difference would turn a falling list into a large
// count or a huge rise into a negative one. The count is saturated to [-1, 2^31]: -1 stands for
// any negative count, 2^31 for any count past int32 (a heat counter's range); those in between
// are exact.
#pragma once

#include <stdint.h>

#include "portable.h"

namespace eplb_rt {

constexpr int64_t kMaxGroupCount = 2147483647;  // INT32_MAX: heat holds int32 counts

// `value - previous` saturated as above (previous = 0 for a plain list or the first entry).
EPLB_RT_HD int64_t group_count(int64_t value, int64_t previous) {
  if (value < previous) return -1;
  const uint64_t rise = static_cast<uint64_t>(value) - static_cast<uint64_t>(previous);
  return rise > static_cast<uint64_t>(kMaxGroupCount) ? kMaxGroupCount + 1
                                                      : static_cast<int64_t>(rise);
}

}  // namespace eplb_rt
