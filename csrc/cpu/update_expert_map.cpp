// CPU kernel of update_expert_map_: validate the new tables, then copy them over the old ones in
// place (same storage, so captured graphs that read the tables stay valid).
#include <torch/library.h>

#include <cmath>
#include <cstring>

#include "common/checks.h"

namespace eplb_rt {
namespace {

void check_new_tables(const at::Tensor& new_log2phy, const at::Tensor& new_logcnt,
                      const std::optional<at::Tensor>& new_replica_share,
                      const std::optional<at::Tensor>& new_expert_map) {
  const int64_t E = new_log2phy.size(0);
  const int64_t R = new_log2phy.size(1);
  const int32_t* l2p = new_log2phy.const_data_ptr<int32_t>();
  const int32_t* cnt = new_logcnt.const_data_ptr<int32_t>();
  for (int64_t e = 0; e < E; ++e) {
    TORCH_CHECK(cnt[e] >= 1 && cnt[e] <= R, "update_expert_map_: new_logcnt[", e, "] = ", cnt[e],
                " must be in [1, R = ", R, "]");
    for (int64_t r = 0; r < R; ++r) {
      const int32_t p = l2p[e * R + r];
      if (r < cnt[e]) {
        TORCH_CHECK(p >= 0, "update_expert_map_: new_log2phy[", e, ", ", r, "] = ", p,
                    " must be a slot >= 0 (expert ", e, " has ", cnt[e], " replicas)");
      } else {
        TORCH_CHECK(p == -1, "update_expert_map_: new_log2phy[", e, ", ", r, "] = ", p,
                    " must be -1 (padding: expert ", e, " has ", cnt[e], " replicas)");
      }
    }
  }
  if (new_replica_share.has_value()) {
    const float* share = new_replica_share->const_data_ptr<float>();
    for (int64_t i = 0; i < E * R; ++i) {
      TORCH_CHECK(std::isfinite(share[i]) && share[i] >= 0.0f,
                  "update_expert_map_: ", "new_replica_share[", i / R, ", ", i % R,
                  "] = ", share[i], " must be finite and >= 0");
    }
  }
  if (new_expert_map.has_value()) {
    const int32_t* map = new_expert_map->const_data_ptr<int32_t>();
    for (int64_t e = 0; e < E; ++e) {
      TORCH_CHECK(map[e] >= -1, "update_expert_map_: new_expert_map[", e, "] = ", map[e],
                  " must be a local slot >= 0 or -1 (absent)");
    }
  }
}

void copy_table(const at::Tensor& dst, const at::Tensor& src) {
  // memmove: a table may be refreshed from itself.
  std::memmove(dst.data_ptr(), src.const_data_ptr(), src.nbytes());
}

void update_expert_map_cpu(const at::Tensor& log2phy, const at::Tensor& logcnt,
                           const std::optional<at::Tensor>& replica_share,
                           const std::optional<at::Tensor>& expert_map,
                           const at::Tensor& new_log2phy, const at::Tensor& new_logcnt,
                           const std::optional<at::Tensor>& new_replica_share,
                           const std::optional<at::Tensor>& new_expert_map) {
  check_update_expert_map_args(log2phy, logcnt, replica_share, expert_map, new_log2phy, new_logcnt,
                               new_replica_share, new_expert_map);
  check_new_tables(new_log2phy, new_logcnt, new_replica_share, new_expert_map);
  copy_table(log2phy, new_log2phy);
  copy_table(logcnt, new_logcnt);
  if (replica_share.has_value()) copy_table(*replica_share, *new_replica_share);
  if (expert_map.has_value()) copy_table(*expert_map, *new_expert_map);
}

}  // namespace

TORCH_LIBRARY_IMPL(eplb_rt, CPU, m) { m.impl("update_expert_map_", &update_expert_map_cpu); }

}  // namespace eplb_rt
