// NPU (PrivateUse1) implementations of update_expert_weights_ and update_expert_map_: in-place
// copies into the same storage (captured graphs stay valid), launched through torch_npu's task
// queue on the current stream, no synchronisation, no value reads on the host.
#include <torch/library.h>

#include <array>
#include <optional>

#include "common/copy_tables.h"
#include "npu_launch.h"

namespace eplb_rt::npu {
namespace {

void update_expert_weights(at::TensorList weights, at::TensorList staged, const at::Tensor& slots) {
  check_update_expert_weights_args(weights, staged, slots);
  check_update_expert_weights_apart(weights, staged, slots);
  const at::Device device = slots.device();
  const int64_t num_moved = slots.size(0);
  const uint32_t cores = weights.empty() ? 1 : VectorCoreNum(device);
  const c10::OptionalDeviceGuard guard(device);
  for (size_t t = 0; t < weights.size(); ++t) {
    const at::Tensor w = weights[t];
    const at::Tensor s = staged[t];
    const int64_t row_bytes = w.size(0) == 0 ? 0 : w.numel() / w.size(0) * w.element_size();
    const bool aligned =
        reinterpret_cast<uintptr_t>(w.data_ptr()) % eplb_ascendc::kBlockBytes == 0 &&
        reinterpret_cast<uintptr_t>(s.data_ptr()) % eplb_ascendc::kBlockBytes == 0;
    eplb_ascendc::CopyRowsTiling tiling{};
    const std::string err = eplb_ascendc::ComputeCopyRowsTiling(
        row_bytes, num_moved, w.size(0), static_cast<uint32_t>(slots.element_size()), aligned,
        cores, UbBytes(), &tiling);
    TORCH_CHECK(err.empty(), err);
    if (tiling.blockDim == 0) continue;
    RunOnTaskQueue("eplb_rt::update_expert_weights_", [=](void* stream) {
      return eplb_update_expert_weights(GmAddr(w), GmAddr(s), GmAddr(slots), &tiling, stream);
    });
  }
}

void update_expert_map(const at::Tensor& log2phy, const at::Tensor& logcnt,
                       const std::optional<at::Tensor>& replica_share,
                       const std::optional<at::Tensor>& expert_map, const at::Tensor& new_log2phy,
                       const at::Tensor& new_logcnt,
                       const std::optional<at::Tensor>& new_replica_share,
                       const std::optional<at::Tensor>& new_expert_map, int64_t num_slots) {
  check_update_expert_map_args(log2phy, logcnt, replica_share, expert_map, new_log2phy, new_logcnt,
                               new_replica_share, new_expert_map, num_slots);
  check_update_expert_map_apart(log2phy, logcnt, replica_share, expert_map, new_log2phy,
                                new_logcnt, new_replica_share, new_expert_map);
  const at::Device device = log2phy.device();
  const c10::OptionalDeviceGuard guard(device);
  if (update_map_from_host(log2phy, logcnt, replica_share, expert_map, new_log2phy, new_logcnt,
                           new_replica_share, new_expert_map, num_slots)) {
    return;
  }
  // The tables present, packed: one AI core copies each.
  std::array<at::Tensor, eplb_ascendc::kMaxMapTables> dst{log2phy, logcnt};
  std::array<at::Tensor, eplb_ascendc::kMaxMapTables> src{new_log2phy, new_logcnt};
  uint32_t count = 2;
  if (replica_share.has_value()) {
    dst[count] = *replica_share;
    src[count] = *new_replica_share;
    ++count;
  }
  if (expert_map.has_value()) {
    dst[count] = *expert_map;
    src[count] = *new_expert_map;
    ++count;
  }
  std::array<int64_t, eplb_ascendc::kMaxMapTables> bytes{};
  for (uint32_t i = 0; i < count; ++i) bytes[i] = static_cast<int64_t>(dst[i].nbytes());
  eplb_ascendc::CopyTablesTiling tiling{};
  const std::string err = eplb_ascendc::ComputeCopyTablesTiling(
      bytes.data(), count, UbBytes(), &tiling);
  TORCH_CHECK(err.empty(), err);

  RunOnTaskQueue("eplb_rt::update_expert_map_", [=](void* stream) {
    std::array<uint8_t*, eplb_ascendc::kMaxMapTables> d{}, s{};
    for (uint32_t i = 0; i < count; ++i) {
      d[i] = GmAddr(dst[i]);
      s[i] = GmAddr(src[i]);
    }
    return eplb_update_expert_map(d.data(), s.data(), &tiling, stream);
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(eplb_rt, PrivateUse1, m) {
  m.impl("update_expert_weights_", &update_expert_weights);
  m.impl("update_expert_map_", &update_expert_map);
}

}  // namespace eplb_rt::npu
