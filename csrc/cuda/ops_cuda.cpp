// CUDA implementations of the eplb_rt ops (schemas in csrc/torch_bindings.cpp): the one
// translator from tensors to the torch-free launchers of csrc/cuda/launchers.h.
//
// Each op first runs the metadata checks every backend shares (csrc/common/checks.h: dtypes,
// shapes, contiguity, devices), so CUDA rejects bad input with the same message as CPU, Meta and
// NPU; then the few checks only the CUDA kernels need (a CUDA tensor, int32 sizes). All of this
// runs before anything is launched. It then takes the current stream of the tensors' device and
// launches. Nothing here allocates, synchronises or reads a value back (.item()); so values that
// only the device holds (ids, counts, slots) are not checked here: launchers.h says what the
// kernels do with bad ones.
#include <ATen/core/Tensor.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/util/accumulate.h>
#include <torch/library.h>

#include <optional>
#include <vector>

#include "common/checks.h"
#include "common/copy_tables.h"
#include "launchers.h"

namespace eplb_rt::cuda {
namespace {

// The shared checks put all tensors of an op on one device, so one tensor tells whether it is CUDA.
void check_cuda(const at::Tensor& t, const char* op, const char* name) {
  TORCH_CHECK(t.is_cuda(), op, ": ", name, " must be a CUDA tensor, got ", t.device());
}

void route_and_count(const at::Tensor& topk_ids, const at::Tensor& log2phy,
                     const at::Tensor& logcnt, const std::optional<at::Tensor>& replica_share,
                     const at::Tensor& heat, const at::Tensor& step, const at::Tensor& phy_ids,
                     int64_t code_offset) {
  constexpr const char* op = "route_and_count";
  check_route_and_count_args(topk_ids, log2phy, logcnt, replica_share, heat, step, phy_ids);
  check_route_and_count_apart(topk_ids, log2phy, logcnt, replica_share, heat, step, phy_ids);
  const uint32_t offset = checked_code_offset(code_offset);
  check_cuda(topk_ids, op, "topk_ids");
  check_route_and_count_int32_sizes(topk_ids, log2phy, heat);  // launchers.h takes int32
  if (topk_ids.numel() == 0) return;

  const c10::cuda::CUDAGuard guard(topk_ids.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(topk_ids.device().index());
  const RouteAndCountParams params{topk_ids.size(0),
                                   static_cast<int32_t>(topk_ids.size(1)),
                                   static_cast<int32_t>(log2phy.size(0)),
                                   static_cast<int32_t>(log2phy.size(1)),
                                   static_cast<int32_t>(heat.size(1)),
                                   heat.size(0),
                                   heat.stride(0),
                                   offset};
  const float* share = replica_share.has_value() ? replica_share->data_ptr<float>() : nullptr;
  cudaError_t status;
  if (topk_ids.scalar_type() == at::kInt) {
    status = launch_route_and_count<int32_t>(
        topk_ids.data_ptr<int32_t>(), log2phy.data_ptr<int32_t>(), logcnt.data_ptr<int32_t>(),
        share, heat.data_ptr<int32_t>(), step.data_ptr<int64_t>(), phy_ids.data_ptr<int32_t>(),
        params, stream);
  } else {
    status = launch_route_and_count<int64_t>(
        topk_ids.data_ptr<int64_t>(), log2phy.data_ptr<int32_t>(), logcnt.data_ptr<int32_t>(),
        share, heat.data_ptr<int32_t>(), step.data_ptr<int64_t>(), phy_ids.data_ptr<int64_t>(),
        params, stream);
  }
  C10_CUDA_CHECK(status);
}

void count_from_group_list(const at::Tensor& group_list, const at::Tensor& heat,
                           const at::Tensor& step, int64_t slot_offset, bool cumulative) {
  constexpr const char* op = "count_from_group_list";
  check_count_from_group_list_args(group_list, heat, step, slot_offset);
  check_count_from_group_list_apart(group_list, heat, step);
  check_cuda(group_list, op, "group_list");
  // P as int32 (launchers.h), and so S_local and slot_offset: their sum is <= P.
  check_int32_size(heat, 1, op, "heat");
  const int64_t num_local = group_list.size(0);
  if (num_local == 0) return;

  const c10::cuda::CUDAGuard guard(group_list.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(group_list.device().index());
  const CountFromGroupListParams params{static_cast<int32_t>(num_local),
                                        static_cast<int32_t>(slot_offset), cumulative, heat.size(0),
                                        heat.stride(0)};
  cudaError_t status;
  if (group_list.scalar_type() == at::kInt) {
    status = launch_count_from_group_list<int32_t>(group_list.data_ptr<int32_t>(),
                                                   heat.data_ptr<int32_t>(),
                                                   step.data_ptr<int64_t>(), params, stream);
  } else {
    status = launch_count_from_group_list<int64_t>(group_list.data_ptr<int64_t>(),
                                                   heat.data_ptr<int32_t>(),
                                                   step.data_ptr<int64_t>(), params, stream);
  }
  C10_CUDA_CHECK(status);
}

void update_expert_weights(at::TensorList weights, at::TensorList staged, const at::Tensor& slots) {
  check_update_expert_weights_args(weights, staged, slots);
  check_update_expert_weights_apart(weights, staged, slots);
  check_cuda(slots, "update_expert_weights_", "slots");
  const int64_t num_moves = slots.size(0);
  std::vector<WeightCopyDesc> descs;
  descs.reserve(weights.size());
  for (size_t t = 0; t < weights.size(); ++t) {
    const at::Tensor& dst = weights[t];
    const int64_t bytes_per_slot =
        c10::multiply_integers(dst.sizes().slice(1)) * static_cast<int64_t>(dst.element_size());
    descs.push_back({dst.data_ptr(), staged[t].data_ptr(), bytes_per_slot, dst.size(0)});
  }
  if (num_moves == 0 || descs.empty()) return;

  const c10::cuda::CUDAGuard guard(slots.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(slots.device().index());
  const auto num_tensors = static_cast<int32_t>(descs.size());
  const cudaError_t status =
      slots.scalar_type() == at::kLong
          ? launch_update_expert_weights<int64_t>(descs.data(), num_tensors,
                                                  slots.data_ptr<int64_t>(), num_moves, stream)
          : launch_update_expert_weights<int32_t>(descs.data(), num_tensors,
                                                  slots.data_ptr<int32_t>(), num_moves, stream);
  C10_CUDA_CHECK(status);
}

// One table and its replacement; the shared checks made them alike (dtype, shape, contiguous,
// device), and every table holds 32-bit words (int32 or float32).
TableCopy table_copy(const at::Tensor& dst, const at::Tensor& src) {
  return {dst.data_ptr(), src.data_ptr(), dst.numel()};
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
  check_cuda(log2phy, "update_expert_map_", "log2phy");
  const c10::cuda::CUDAGuard guard(log2phy.device());
  if (update_map_from_host(log2phy, logcnt, replica_share, expert_map, new_log2phy, new_logcnt,
                           new_replica_share, new_expert_map, num_slots)) {
    return;
  }
  TableCopy tables[kNumMapTables] = {};
  tables[0] = table_copy(log2phy, new_log2phy);
  tables[1] = table_copy(logcnt, new_logcnt);
  if (replica_share.has_value()) tables[2] = table_copy(*replica_share, *new_replica_share);
  if (expert_map.has_value()) tables[3] = table_copy(*expert_map, *new_expert_map);

  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(log2phy.device().index());
  C10_CUDA_CHECK(launch_update_expert_map(tables, stream));
}

}  // namespace
}  // namespace eplb_rt::cuda

TORCH_LIBRARY_IMPL(eplb_rt, CUDA, m) {
  m.impl("route_and_count", &eplb_rt::cuda::route_and_count);
  m.impl("count_from_group_list", &eplb_rt::cuda::count_from_group_list);
  m.impl("update_expert_weights_", &eplb_rt::cuda::update_expert_weights);
  m.impl("update_expert_map_", &eplb_rt::cuda::update_expert_map);
}
