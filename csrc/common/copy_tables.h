// update_expert_map_ on a device with the new tables in host memory: one asynchronous
// host-to-device copy per table into the existing storage (captured graphs stay valid), on the
// current stream. Shared by the CUDA and NPU backends; the values were checked on the host first.
// From pinned memory the copies do not block the host; the caller keeps the host tables
// unchanged until the stream has passed them.
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>

namespace eplb_rt {

inline void copy_new_tables(const at::Tensor& log2phy, const at::Tensor& logcnt,
                            const std::optional<at::Tensor>& replica_share,
                            const std::optional<at::Tensor>& expert_map,
                            const at::Tensor& new_log2phy, const at::Tensor& new_logcnt,
                            const std::optional<at::Tensor>& new_replica_share,
                            const std::optional<at::Tensor>& new_expert_map) {
  log2phy.copy_(new_log2phy, /*non_blocking=*/true);
  logcnt.copy_(new_logcnt, /*non_blocking=*/true);
  if (replica_share.has_value()) replica_share->copy_(*new_replica_share, /*non_blocking=*/true);
  if (expert_map.has_value()) expert_map->copy_(*new_expert_map, /*non_blocking=*/true);
}

}  // namespace eplb_rt
