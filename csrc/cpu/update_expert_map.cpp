// CPU kernel of update_expert_map_: validate the new tables, then copy them over the old ones in
// place (same storage, so captured graphs that read the tables stay valid).
#include <torch/library.h>

#include <cstring>

#include "common/checks.h"

namespace eplb_rt {
namespace {

void copy_table(const at::Tensor& dst, const at::Tensor& src) {
  // memmove: a table may be refreshed from itself.
  std::memmove(dst.data_ptr(), src.const_data_ptr(), src.nbytes());
}

void update_expert_map_cpu(const at::Tensor& log2phy, const at::Tensor& logcnt,
                           const std::optional<at::Tensor>& replica_share,
                           const std::optional<at::Tensor>& expert_map,
                           const at::Tensor& new_log2phy, const at::Tensor& new_logcnt,
                           const std::optional<at::Tensor>& new_replica_share,
                           const std::optional<at::Tensor>& new_expert_map, int64_t num_slots) {
  check_update_expert_map_args(log2phy, logcnt, replica_share, expert_map, new_log2phy, new_logcnt,
                               new_replica_share, new_expert_map, num_slots);
  check_update_expert_map_apart(log2phy, logcnt, replica_share, expert_map, new_log2phy,
                                new_logcnt, new_replica_share, new_expert_map);
  check_new_map_values(new_log2phy, new_logcnt, new_replica_share, new_expert_map, num_slots);
  copy_table(log2phy, new_log2phy);
  copy_table(logcnt, new_logcnt);
  if (replica_share.has_value()) copy_table(*replica_share, *new_replica_share);
  if (expert_map.has_value()) copy_table(*expert_map, *new_expert_map);
}

}  // namespace

TORCH_LIBRARY_IMPL(eplb_rt, CPU, m) { m.impl("update_expert_map_", &update_expert_map_cpu); }

}  // namespace eplb_rt
