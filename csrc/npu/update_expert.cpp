// NPU (PrivateUse1) implementations of update_expert_weights_ and update_expert_map_: in-place
// copies into the same storage (captured graphs stay valid), launched through torch_npu's task
// queue on the current stream, no synchronisation, no value reads on the host.
#include <torch/library.h>

#include <array>
#include <optional>

#include "npu_launch.h"

namespace eplb_rt::npu {
namespace {

void update_expert_weights(at::TensorList weights, at::TensorList staged, const at::Tensor& slots) {
  TORCH_CHECK(weights.size() == staged.size(),
              "update_expert_weights_: expected as many staged tensors as ", "weights (",
              weights.size(), "), got ", staged.size());
  CheckIndexDtype(slots, "slots");
  CheckDim(slots, "slots", 1);
  CheckContiguous(slots, "slots");
  const at::Device device = slots.device();
  const int64_t num_moved = slots.size(0);
  for (size_t t = 0; t < weights.size(); ++t) {
    const at::Tensor& w = weights[t];
    const at::Tensor& s = staged[t];
    CheckOnDevice(w, "weights[t]", device);
    CheckOnDevice(s, "staged[t]", device);
    CheckContiguous(w, "weights[t]");
    CheckContiguous(s, "staged[t]");
    TORCH_CHECK(w.dim() >= 1 && s.dim() == w.dim(), "staged[", t, "]: expected ", w.dim(),
                " dimensions, got shape ", s.sizes());
    TORCH_CHECK(s.scalar_type() == w.scalar_type(), "staged[", t, "]: expected dtype ",
                w.scalar_type(), ", got ", s.scalar_type());
    TORCH_CHECK(s.size(0) == num_moved && s.sizes().slice(1) == w.sizes().slice(1), "staged[", t,
                "]: expected shape [", num_moved, ", ", w.sizes().slice(1), "], got ", s.sizes());
  }
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
        cores, eplb_ascendc::kDefaultUbBytes, &tiling);
    TORCH_CHECK(err.empty(), err);
    if (tiling.blockDim == 0) continue;
    RunOnTaskQueue("eplb_update_expert_weights", [=](void* stream) {
      eplb_update_expert_weights(GmAddr(w), GmAddr(s), GmAddr(slots), &tiling, stream);
    });
  }
}

void CheckTablePair(const at::Tensor& dst, const at::Tensor& src, const char* name,
                    at::ScalarType dtype, const at::Device& device) {
  CheckOnDevice(dst, name, device);
  CheckOnDevice(src, name, device);
  CheckDtype(dst, name, dtype);
  CheckDtype(src, name, dtype);
  CheckContiguous(dst, name);
  CheckContiguous(src, name);
  TORCH_CHECK(dst.sizes() == src.sizes(), name, ": expected the new table to have shape ",
              dst.sizes(), ", got ", src.sizes());
}

void update_expert_map(const at::Tensor& log2phy, const at::Tensor& logcnt,
                       const std::optional<at::Tensor>& replica_share,
                       const std::optional<at::Tensor>& expert_map, const at::Tensor& new_log2phy,
                       const at::Tensor& new_logcnt,
                       const std::optional<at::Tensor>& new_replica_share,
                       const std::optional<at::Tensor>& new_expert_map) {
  const at::Device device = log2phy.device();
  CheckDim(log2phy, "log2phy", 2);
  CheckTablePair(log2phy, new_log2phy, "log2phy", at::kInt, device);
  TORCH_CHECK(logcnt.dim() == 1 && logcnt.size(0) == log2phy.size(0), "logcnt: expected shape [",
              log2phy.size(0), "], got ", logcnt.sizes());
  CheckTablePair(logcnt, new_logcnt, "logcnt", at::kInt, device);
  TORCH_CHECK(replica_share.has_value() == new_replica_share.has_value(),
              "update_expert_map_: replica_share and new_replica_share must both be given or both "
              "be None");
  TORCH_CHECK(expert_map.has_value() == new_expert_map.has_value(),
              "update_expert_map_: expert_map and new_expert_map must both be given or both be "
              "None");
  // The tables present, packed: one AI core copies each.
  std::array<at::Tensor, eplb_ascendc::kMaxMapTables> dst{log2phy, logcnt};
  std::array<at::Tensor, eplb_ascendc::kMaxMapTables> src{new_log2phy, new_logcnt};
  uint32_t count = 2;
  if (replica_share.has_value()) {
    TORCH_CHECK(replica_share->sizes() == log2phy.sizes(), "replica_share: expected shape ",
                log2phy.sizes(), ", got ", replica_share->sizes());
    CheckTablePair(*replica_share, *new_replica_share, "replica_share", at::kFloat, device);
    dst[count] = *replica_share;
    src[count] = *new_replica_share;
    ++count;
  }
  if (expert_map.has_value()) {
    TORCH_CHECK(expert_map->sizes() == logcnt.sizes(), "expert_map: expected shape ",
                logcnt.sizes(), ", got ", expert_map->sizes());
    CheckTablePair(*expert_map, *new_expert_map, "expert_map", at::kInt, device);
    dst[count] = *expert_map;
    src[count] = *new_expert_map;
    ++count;
  }
  std::array<int64_t, eplb_ascendc::kMaxMapTables> bytes{};
  for (uint32_t i = 0; i < count; ++i) bytes[i] = static_cast<int64_t>(dst[i].nbytes());
  eplb_ascendc::CopyTablesTiling tiling{};
  const std::string err = eplb_ascendc::ComputeCopyTablesTiling(
      bytes.data(), count, eplb_ascendc::kDefaultUbBytes, &tiling);
  TORCH_CHECK(err.empty(), err);

  const c10::OptionalDeviceGuard guard(device);
  RunOnTaskQueue("eplb_update_expert_map", [=](void* stream) {
    std::array<uint8_t*, eplb_ascendc::kMaxMapTables> d{}, s{};
    for (uint32_t i = 0; i < count; ++i) {
      d[i] = GmAddr(dst[i]);
      s[i] = GmAddr(src[i]);
    }
    eplb_update_expert_map(d.data(), s.data(), &tiling, stream);
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(eplb_rt, PrivateUse1, m) {
  m.impl("update_expert_weights_", &update_expert_weights);
  m.impl("update_expert_map_", &update_expert_map);
}

}  // namespace eplb_rt::npu
