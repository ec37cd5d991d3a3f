// Meta kernels: the ops only write into their arguments, so shape/dtype checks are all there is.
#include <torch/library.h>

#include "common/checks.h"

namespace eplb_rt {
namespace {

void route_and_count_meta(const at::Tensor& topk_ids, const at::Tensor& log2phy,
                          const at::Tensor& logcnt, const std::optional<at::Tensor>& replica_share,
                          const at::Tensor& heat, const at::Tensor& step, const at::Tensor& phy_ids,
                          int64_t code_offset) {
  check_route_and_count_args(topk_ids, log2phy, logcnt, replica_share, heat, step, phy_ids);
  checked_code_offset(code_offset);
}

void count_from_group_list_meta(const at::Tensor& group_list, const at::Tensor& heat,
                                const at::Tensor& step, int64_t slot_offset, bool cumulative) {
  check_count_from_group_list_args(group_list, heat, step, slot_offset);
}

void update_expert_weights_meta(at::TensorList weights, at::TensorList staged,
                                const at::Tensor& slots) {
  check_update_expert_weights_args(weights, staged, slots);
}

void update_expert_map_meta(const at::Tensor& log2phy, const at::Tensor& logcnt,
                            const std::optional<at::Tensor>& replica_share,
                            const std::optional<at::Tensor>& expert_map,
                            const at::Tensor& new_log2phy, const at::Tensor& new_logcnt,
                            const std::optional<at::Tensor>& new_replica_share,
                            const std::optional<at::Tensor>& new_expert_map, int64_t num_slots) {
  check_update_expert_map_args(log2phy, logcnt, replica_share, expert_map, new_log2phy, new_logcnt,
                               new_replica_share, new_expert_map, num_slots);
}

}  // namespace

TORCH_LIBRARY_IMPL(eplb_rt, Meta, m) {
  m.impl("route_and_count", &route_and_count_meta);
  m.impl("count_from_group_list", &count_from_group_list_meta);
  m.impl("update_expert_weights_", &update_expert_weights_meta);
  m.impl("update_expert_map_", &update_expert_map_meta);
}

}  // namespace eplb_rt
