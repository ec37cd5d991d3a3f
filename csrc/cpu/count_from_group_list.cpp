// CPU kernel of count_from_group_list: heat[row, slot_offset + i] += count_i, where count_i is
// group_list[i] (plain) or group_list[i] - group_list[i - 1] (inclusive prefix sums).
// S_local is small (slots per rank), so one serial pass validates and a second one adds.
#include <torch/library.h>

#include "common/checks.h"
#include "common/group_count.h"
#include "cpu/cpu_common.h"

namespace eplb_rt {
namespace {

template <typename index_t>
void count_typed(const at::Tensor& group_list, const at::Tensor& heat, const at::Tensor& step,
                 int64_t slot_offset, bool cumulative) {
  const index_t* gl = group_list.const_data_ptr<index_t>();
  const int64_t S = group_list.size(0);
  auto previous = [&](int64_t i) -> int64_t {
    return cumulative && i > 0 ? static_cast<int64_t>(gl[i - 1]) : 0;
  };
  for (int64_t i = 0; i < S; ++i) {
    const int64_t c = group_count(static_cast<int64_t>(gl[i]), previous(i));
    if (c >= 0 && c <= kMaxGroupCount) continue;
    // The count as the caller wrote it (its two entries: their difference may not fit int64).
    if (cumulative && i > 0) {
      TORCH_CHECK(false, "count_from_group_list: group_list[i] - group_list[i - 1] for i = ", i,
                  " is ", static_cast<int64_t>(gl[i]), " - ", static_cast<int64_t>(gl[i - 1]),
                  ", a token count must be in [0, 2^31) (cumulative=True needs non-decreasing ",
                  "prefix sums)");
    }
    TORCH_CHECK(false, "count_from_group_list: group_list[i] for i = ", i, " is ",
                static_cast<int64_t>(gl[i]), ", a token count must be in [0, 2^31)",
                cumulative ? " (cumulative=True needs non-decreasing prefix sums)" : "");
  }
  int32_t* out =
      heat.data_ptr<int32_t>() + ring_row(step, heat.size(0)) * heat.stride(0) + slot_offset;
  for (int64_t i = 0; i < S; ++i) {
    out[i] = wrapping_add(out[i], group_count(static_cast<int64_t>(gl[i]), previous(i)));
  }
}

void count_from_group_list_cpu(const at::Tensor& group_list, const at::Tensor& heat,
                               const at::Tensor& step, int64_t slot_offset, bool cumulative) {
  check_count_from_group_list_args(group_list, heat, step, slot_offset);
  check_count_from_group_list_apart(group_list, heat, step);
  if (group_list.scalar_type() == at::kInt) {
    count_typed<int32_t>(group_list, heat, step, slot_offset, cumulative);
  } else {
    count_typed<int64_t>(group_list, heat, step, slot_offset, cumulative);
  }
}

}  // namespace

TORCH_LIBRARY_IMPL(eplb_rt, CPU, m) { m.impl("count_from_group_list", &count_from_group_list_cpu); }

}  // namespace eplb_rt
