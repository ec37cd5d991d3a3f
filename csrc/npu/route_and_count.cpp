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
                     const at::Tensor& heat, const at::Tensor& step, const at::Tensor& phy_ids,
                     int64_t code_offset) {
  check_route_and_count_args(topk_ids, log2phy, logcnt, replica_share, heat, step, phy_ids);
  check_route_and_count_apart(topk_ids, log2phy, logcnt, replica_share, heat, step, phy_ids);
  const uint32_t offset = checked_code_offset(code_offset);
  check_route_and_count_int32_sizes(topk_ids, log2phy, heat);  // the tiling takes int32
  // Nothing to route or count (N = 0 or K = 0): return as the CPU and CUDA kernels do, before the
  // tiling, which needs K >= 1.
  if (topk_ids.numel() == 0) return;
  const at::Device device = topk_ids.device();

  // The tiling rejects what the kernel cannot take: K, E, P < 1, heat rows closer than P, a logcnt
  // and histogram larger than the Unified Buffer (log2phy and replica_share past it are read from
  // GM).
  eplb_ascendc::RouteAndCountShape shape{};
  shape.numTokens = topk_ids.size(0);
  shape.topK = static_cast<int32_t>(topk_ids.size(1));
  shape.numExperts = static_cast<int32_t>(log2phy.size(0));
  shape.maxReplicas = static_cast<int32_t>(log2phy.size(1));
  shape.numSlots = static_cast<int32_t>(heat.size(1));
  shape.heatRows = heat.size(0);
  shape.heatRowStride = heat.stride(0);
  shape.idBytes = static_cast<uint32_t>(topk_ids.element_size());
  shape.hasShare = replica_share.has_value();
  shape.codeOffset = offset;
  eplb_ascendc::RouteAndCountTiling tiling{};
  const std::string err = eplb_ascendc::ComputeRouteAndCountTiling(
      shape, VectorCoreNum(device), UbBytes(), &tiling);
  TORCH_CHECK(err.empty(), err);
  if (tiling.blockDim == 0) return;  // empty batch

  const c10::OptionalDeviceGuard guard(device);
  const at::Tensor share = replica_share.has_value() ? *replica_share : at::Tensor();
  RunOnTaskQueue("eplb_rt::route_and_count", [=](void* stream) {
    return eplb_route_and_count(GmAddr(topk_ids), GmAddr(log2phy), GmAddr(logcnt),
                         share.defined() ? GmAddr(share) : nullptr, GmAddr(heat), GmAddr(step),
                         GmAddr(phy_ids), &tiling, stream);
  });
}

void count_from_group_list(const at::Tensor& group_list, const at::Tensor& heat,
                           const at::Tensor& step, int64_t slot_offset, bool cumulative) {
  check_count_from_group_list_args(group_list, heat, step, slot_offset);
  check_count_from_group_list_apart(group_list, heat, step);
  const at::Device device = group_list.device();
  // The tiling rejects what the kernel cannot take: heat rows closer than P.
  eplb_ascendc::CountFromGroupListTiling tiling{};
  const std::string err = eplb_ascendc::ComputeCountFromGroupListTiling(
      group_list.size(0), static_cast<uint32_t>(group_list.element_size()), cumulative, slot_offset,
      heat.size(1), heat.size(0), heat.stride(0), VectorCoreNum(device), &tiling);
  TORCH_CHECK(err.empty(), err);
  if (tiling.blockDim == 0) return;

  const c10::OptionalDeviceGuard guard(device);
  RunOnTaskQueue("eplb_rt::count_from_group_list", [=](void* stream) {
    return eplb_count_from_group_list(GmAddr(group_list), GmAddr(heat), GmAddr(step), &tiling, stream);
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(eplb_rt, PrivateUse1, m) {
  m.impl("route_and_count", &route_and_count);
  m.impl("count_from_group_list", &count_from_group_list);
}

}  // namespace eplb_rt::npu
