// CUDA implementations of the eplb_rt ops (schemas in csrc/torch_bindings.cpp): the one
// translator from tensors to the torch-free launchers of csrc/cuda/launchers.h.
//
// Each op checks dtypes, shapes, contiguity and devices (a clear error naming expected vs got,
// before anything is launched), takes the current stream of the tensors' device and launches.
// Nothing here allocates, synchronises or reads a value back (.item()); so values that only the
// device holds (ids, counts, slots) are not checked here: launchers.h says what the kernels do with
// bad ones.
#include <ATen/core/Tensor.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/util/accumulate.h>
#include <torch/library.h>

#include <optional>
#include <vector>

#include "launchers.h"

namespace eplb_rt::cuda {
namespace {

void check_on(const at::Tensor& t, const at::Tensor& ref, const char* op, const char* name) {
  TORCH_CHECK(t.device() == ref.device(), op, ": ", name, " must be on ", ref.device(), ", got ",
              t.device());
}

void check_dtype(const at::Tensor& t, at::ScalarType dtype, const char* op, const char* name) {
  TORCH_CHECK(t.scalar_type() == dtype, op, ": ", name, " must be ", dtype, ", got ",
              t.scalar_type());
}

void check_index_dtype(const at::Tensor& t, const char* op, const char* name) {
  TORCH_CHECK(t.scalar_type() == at::kInt || t.scalar_type() == at::kLong, op, ": ", name,
              " must be int32 or int64, got ", t.scalar_type());
}

void check_shape(const at::Tensor& t, at::IntArrayRef shape, const char* op, const char* name) {
  TORCH_CHECK(t.sizes() == shape, op, ": ", name, " must have shape ", shape, ", got ", t.sizes());
}

void check_contiguous(const at::Tensor& t, const char* op, const char* name) {
  TORCH_CHECK(t.is_contiguous(), op, ": ", name, " must be contiguous, got strides ", t.strides());
}

void check_dim(const at::Tensor& t, int64_t dim, const char* op, const char* name) {
  TORCH_CHECK(t.dim() == dim, op, ": ", name, " must have ", dim, " dims, got shape ", t.sizes());
}

// heat [H, P] int32, unit stride in the last dim (rows may be apart, e.g. heat_ring[:, layer, :]).
void check_heat(const at::Tensor& heat, const at::Tensor& ref, const char* op) {
  check_on(heat, ref, op, "heat");
  check_dtype(heat, at::kInt, op, "heat");
  check_dim(heat, 2, op, "heat");
  TORCH_CHECK(heat.size(0) >= 1, op, ": heat must have at least one ring row, got shape ",
              heat.sizes());
  TORCH_CHECK(heat.size(1) <= 1 || heat.stride(1) == 1, op,
              ": heat must have unit stride in the last dim, got strides ", heat.strides());
  TORCH_CHECK(heat.size(1) <= INT32_MAX, op, ": heat has too many slots: ", heat.size(1));
}

void check_step(const at::Tensor& step, const at::Tensor& ref, const char* op) {
  check_on(step, ref, op, "step");
  check_dtype(step, at::kLong, op, "step");
  TORCH_CHECK(step.numel() == 1, op, ": step must have one element, got shape ", step.sizes());
}

void route_and_count(const at::Tensor& topk_ids, const at::Tensor& log2phy,
                     const at::Tensor& logcnt, const std::optional<at::Tensor>& replica_share,
                     const at::Tensor& heat, const at::Tensor& step, const at::Tensor& phy_ids) {
  constexpr const char* op = "route_and_count";
  TORCH_CHECK(topk_ids.is_cuda(), op, ": topk_ids must be a CUDA tensor, got ", topk_ids.device());
  check_index_dtype(topk_ids, op, "topk_ids");
  check_dim(topk_ids, 2, op, "topk_ids");
  check_contiguous(topk_ids, op, "topk_ids");
  check_on(log2phy, topk_ids, op, "log2phy");
  check_dtype(log2phy, at::kInt, op, "log2phy");
  check_dim(log2phy, 2, op, "log2phy");
  check_contiguous(log2phy, op, "log2phy");
  const int64_t num_experts = log2phy.size(0);
  const int64_t max_replicas = log2phy.size(1);
  TORCH_CHECK(max_replicas >= 1 && num_experts <= INT32_MAX && max_replicas <= INT32_MAX, op,
              ": log2phy must be [E, R] with R >= 1, got shape ", log2phy.sizes());
  check_on(logcnt, topk_ids, op, "logcnt");
  check_dtype(logcnt, at::kInt, op, "logcnt");
  check_shape(logcnt, {num_experts}, op, "logcnt");
  check_contiguous(logcnt, op, "logcnt");
  if (replica_share.has_value()) {
    check_on(*replica_share, topk_ids, op, "replica_share");
    check_dtype(*replica_share, at::kFloat, op, "replica_share");
    check_shape(*replica_share, log2phy.sizes(), op, "replica_share");
    check_contiguous(*replica_share, op, "replica_share");
  }
  check_heat(heat, topk_ids, op);
  check_step(step, topk_ids, op);
  check_on(phy_ids, topk_ids, op, "phy_ids");
  check_dtype(phy_ids, topk_ids.scalar_type(), op, "phy_ids");
  check_shape(phy_ids, topk_ids.sizes(), op, "phy_ids");
  check_contiguous(phy_ids, op, "phy_ids");
  if (topk_ids.numel() == 0) return;

  const c10::cuda::CUDAGuard guard(topk_ids.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(topk_ids.device().index());
  const RouteAndCountParams params{topk_ids.size(0),
                                   static_cast<int32_t>(topk_ids.size(1)),
                                   static_cast<int32_t>(num_experts),
                                   static_cast<int32_t>(max_replicas),
                                   static_cast<int32_t>(heat.size(1)),
                                   heat.size(0),
                                   heat.stride(0)};
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
  TORCH_CHECK(group_list.is_cuda(), op, ": group_list must be a CUDA tensor, got ",
              group_list.device());
  check_index_dtype(group_list, op, "group_list");
  check_dim(group_list, 1, op, "group_list");
  check_contiguous(group_list, op, "group_list");
  check_heat(heat, group_list, op);
  check_step(step, group_list, op);
  const int64_t num_local = group_list.size(0);
  TORCH_CHECK(slot_offset >= 0 && slot_offset + num_local <= heat.size(1), op,
              ": slot_offset + len(group_list) must be in [0, P=", heat.size(1), "], got ",
              slot_offset, " + ", num_local);
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
  constexpr const char* op = "update_expert_weights_";
  TORCH_CHECK(weights.size() == staged.size(), op,
              ": weights and staged must hold the same number of tensors, got ", weights.size(),
              " and ", staged.size());
  TORCH_CHECK(slots.is_cuda(), op, ": slots must be a CUDA tensor, got ", slots.device());
  check_index_dtype(slots, op, "slots");
  check_dim(slots, 1, op, "slots");
  check_contiguous(slots, op, "slots");
  const int64_t num_moves = slots.size(0);
  std::vector<WeightCopyDesc> descs;
  descs.reserve(weights.size());
  for (size_t t = 0; t < weights.size(); ++t) {
    const at::Tensor& dst = weights[t];
    const at::Tensor& src = staged[t];
    const std::string dst_name = "weights[" + std::to_string(t) + "]";
    const std::string src_name = "staged[" + std::to_string(t) + "]";
    check_on(dst, slots, op, dst_name.c_str());
    check_on(src, slots, op, src_name.c_str());
    TORCH_CHECK(dst.dim() >= 1, op, ": ", dst_name, " must be [S, ...], got a scalar");
    check_contiguous(dst, op, dst_name.c_str());
    check_contiguous(src, op, src_name.c_str());
    check_dtype(src, dst.scalar_type(), op, src_name.c_str());
    std::vector<int64_t> shape = dst.sizes().vec();
    shape[0] = num_moves;
    check_shape(src, shape, op, src_name.c_str());
    const int64_t bytes_per_slot =
        c10::multiply_integers(dst.sizes().slice(1)) * static_cast<int64_t>(dst.element_size());
    descs.push_back({dst.data_ptr(), src.data_ptr(), bytes_per_slot, dst.size(0)});
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

// One table and its replacement: same device, dtype, shape; both contiguous.
TableCopy table_copy(const at::Tensor& dst, const at::Tensor& src, const at::Tensor& ref,
                     at::ScalarType dtype, at::IntArrayRef shape, const char* dst_name,
                     const char* src_name) {
  constexpr const char* op = "update_expert_map_";
  for (const auto& [t, name] : {std::pair{&dst, dst_name}, std::pair{&src, src_name}}) {
    check_on(*t, ref, op, name);
    check_dtype(*t, dtype, op, name);
    check_shape(*t, shape, op, name);
    check_contiguous(*t, op, name);
  }
  return {dst.data_ptr(), src.data_ptr(), dst.numel()};
}

void update_expert_map(const at::Tensor& log2phy, const at::Tensor& logcnt,
                       const std::optional<at::Tensor>& replica_share,
                       const std::optional<at::Tensor>& expert_map, const at::Tensor& new_log2phy,
                       const at::Tensor& new_logcnt,
                       const std::optional<at::Tensor>& new_replica_share,
                       const std::optional<at::Tensor>& new_expert_map) {
  constexpr const char* op = "update_expert_map_";
  TORCH_CHECK(log2phy.is_cuda(), op, ": log2phy must be a CUDA tensor, got ", log2phy.device());
  check_dim(log2phy, 2, op, "log2phy");
  TORCH_CHECK(replica_share.has_value() == new_replica_share.has_value(), op,
              ": replica_share and new_replica_share must both be given or both be None, got ",
              replica_share.has_value() ? "a tensor" : "None", " and ",
              new_replica_share.has_value() ? "a tensor" : "None");
  TORCH_CHECK(expert_map.has_value() == new_expert_map.has_value(), op,
              ": expert_map and new_expert_map must both be given or both be None, got ",
              expert_map.has_value() ? "a tensor" : "None", " and ",
              new_expert_map.has_value() ? "a tensor" : "None");
  const int64_t num_experts = log2phy.size(0);
  TableCopy tables[kNumMapTables] = {};
  tables[0] = table_copy(log2phy, new_log2phy, log2phy, at::kInt, log2phy.sizes(), "log2phy",
                         "new_log2phy");
  tables[1] =
      table_copy(logcnt, new_logcnt, log2phy, at::kInt, {num_experts}, "logcnt", "new_logcnt");
  if (replica_share.has_value()) {
    tables[2] = table_copy(*replica_share, *new_replica_share, log2phy, at::kFloat, log2phy.sizes(),
                           "replica_share", "new_replica_share");
  }
  if (expert_map.has_value()) {
    tables[3] = table_copy(*expert_map, *new_expert_map, log2phy, at::kInt, {num_experts},
                           "expert_map", "new_expert_map");
  }

  const c10::cuda::CUDAGuard guard(log2phy.device());
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
