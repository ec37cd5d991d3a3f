// update_expert_map_ on a device with the new tables in host memory: their values checked on the
// host (checks.h), then one asynchronous host-to-device copy per table into the existing storage
// (captured graphs stay valid), on the current stream. Shared by the CUDA and NPU backends. From
// pinned memory the copies do not block the host; the caller keeps the host tables unchanged
// until the stream has passed them.
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>

#include "common/checks.h"

namespace eplb_rt {

// When the new tables are in host memory: checks their values, copies them, returns true. Else
// (tables on the device, copied by the backend's kernel) returns false having done nothing.
inline bool update_map_from_host(const at::Tensor& log2phy, const at::Tensor& logcnt,
                                 const std::optional<at::Tensor>& replica_share,
                                 const std::optional<at::Tensor>& expert_map,
                                 const at::Tensor& new_log2phy, const at::Tensor& new_logcnt,
                                 const std::optional<at::Tensor>& new_replica_share,
                                 const std::optional<at::Tensor>& new_expert_map,
                                 int64_t num_slots) {
  if (!new_log2phy.is_cpu()) return false;
  check_new_map_values(new_log2phy, new_logcnt, new_replica_share, new_expert_map, num_slots);
  log2phy.copy_(new_log2phy, /*non_blocking=*/true);
  logcnt.copy_(new_logcnt, /*non_blocking=*/true);
  if (replica_share.has_value()) replica_share->copy_(*new_replica_share, /*non_blocking=*/true);
  if (expert_map.has_value()) expert_map->copy_(*new_expert_map, /*non_blocking=*/true);
  return true;
}

}  // namespace eplb_rt
