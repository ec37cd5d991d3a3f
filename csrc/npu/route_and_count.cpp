// NPU (PrivateUse1) implementations of route_and_count and count_from_group_list: check
// metadata, compute the tiling (ascendc_kernels/include/eplb_tiling.h), launch the AscendC kernel
// through torch_npu's task queue on the current stream. No synchronisation, no value reads.
#include <torch/library.h>

#include <optional>

#include "npu_launch.h"

namespace eplb_rt::npu {
namespace {

void route_and_count(const at::Tensor& topk_ids, const at::Tensor& log2phy,
                     const at::Tensor& logcnt, const std::optional<at::Tensor>& replica_share,
                     const at::Tensor& heat, const at::Tensor& step, const at::Tensor& phy_ids) {
  const at::Device device = topk_ids.device();
  CheckIndexDtype(topk_ids, "topk_ids");
  CheckDim(topk_ids, "topk_ids", 2);
  CheckContiguous(topk_ids, "topk_ids");
  CheckOnDevice(phy_ids, "phy_ids", device);
  TORCH_CHECK(phy_ids.scalar_type() == topk_ids.scalar_type(), "phy_ids: expected dtype ",
              topk_ids.scalar_type(), " (that of topk_ids), got ", phy_ids.scalar_type());
  TORCH_CHECK(phy_ids.sizes() == topk_ids.sizes(), "phy_ids: expected shape ", topk_ids.sizes(),
              ", got ", phy_ids.sizes());
  CheckContiguous(phy_ids, "phy_ids");
  CheckOnDevice(log2phy, "log2phy", device);
  CheckDtype(log2phy, "log2phy", at::kInt);
  CheckDim(log2phy, "log2phy", 2);
  CheckContiguous(log2phy, "log2phy");
  const int64_t num_experts = log2phy.size(0);
  const int64_t max_replicas = log2phy.size(1);
  TORCH_CHECK(num_experts >= 1 && max_replicas >= 1,
              "log2phy: expected [E, R] with E, R >= 1, got shape ", log2phy.sizes());
  CheckOnDevice(logcnt, "logcnt", device);
  CheckDtype(logcnt, "logcnt", at::kInt);
  TORCH_CHECK(logcnt.dim() == 1 && logcnt.size(0) == num_experts, "logcnt: expected shape [",
              num_experts, "], got ", logcnt.sizes());
  CheckContiguous(logcnt, "logcnt");
  if (replica_share.has_value()) {
    const at::Tensor& share = *replica_share;
    CheckOnDevice(share, "replica_share", device);
    CheckDtype(share, "replica_share", at::kFloat);
    TORCH_CHECK(share.sizes() == log2phy.sizes(), "replica_share: expected shape ", log2phy.sizes(),
                ", got ", share.sizes());
    CheckContiguous(share, "replica_share");
  }
  CheckHeat(heat, device);
  CheckStep(step, device);

  eplb_ascendc::RouteAndCountShape shape{};
  shape.numTokens = topk_ids.size(0);
  shape.topK = static_cast<int32_t>(topk_ids.size(1));
  shape.numExperts = static_cast<int32_t>(num_experts);
  shape.maxReplicas = static_cast<int32_t>(max_replicas);
  shape.numSlots = static_cast<int32_t>(heat.size(1));
  shape.heatRows = heat.size(0);
  shape.heatRowStride = heat.stride(0);
  shape.idBytes = static_cast<uint32_t>(topk_ids.element_size());
  shape.hasShare = replica_share.has_value();
  TORCH_CHECK(shape.topK >= 1, "topk_ids: expected K >= 1, got shape ", topk_ids.sizes());
  eplb_ascendc::RouteAndCountTiling tiling{};
  const std::string err = eplb_ascendc::ComputeRouteAndCountTiling(
      shape, VectorCoreNum(device), eplb_ascendc::kDefaultUbBytes, &tiling);
  TORCH_CHECK(err.empty(), err);
  if (tiling.blockDim == 0) return;  // empty batch

  const c10::OptionalDeviceGuard guard(device);
  const at::Tensor share = replica_share.has_value() ? *replica_share : at::Tensor();
  RunOnTaskQueue("eplb_route_and_count", [=](void* stream) {
    eplb_route_and_count(GmAddr(topk_ids), GmAddr(log2phy), GmAddr(logcnt),
                         share.defined() ? GmAddr(share) : nullptr, GmAddr(heat), GmAddr(step),
                         GmAddr(phy_ids), &tiling, stream);
  });
}

void count_from_group_list(const at::Tensor& group_list, const at::Tensor& heat,
                           const at::Tensor& step, int64_t slot_offset, bool cumulative) {
  const at::Device device = group_list.device();
  CheckIndexDtype(group_list, "group_list");
  CheckDim(group_list, "group_list", 1);
  CheckContiguous(group_list, "group_list");
  CheckHeat(heat, device);
  CheckStep(step, device);
  eplb_ascendc::CountFromGroupListTiling tiling{};
  const std::string err = eplb_ascendc::ComputeCountFromGroupListTiling(
      group_list.size(0), static_cast<uint32_t>(group_list.element_size()), cumulative, slot_offset,
      heat.size(1), heat.size(0), heat.stride(0), VectorCoreNum(device), &tiling);
  TORCH_CHECK(err.empty(), err);
  if (tiling.blockDim == 0) return;

  const c10::OptionalDeviceGuard guard(device);
  RunOnTaskQueue("eplb_count_from_group_list", [=](void* stream) {
    eplb_count_from_group_list(GmAddr(group_list), GmAddr(heat), GmAddr(step), &tiling, stream);
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(eplb_rt, PrivateUse1, m) {
  m.impl("route_and_count", &route_and_count);
  m.impl("count_from_group_list", &count_from_group_list);
}

}  // namespace eplb_rt::npu
