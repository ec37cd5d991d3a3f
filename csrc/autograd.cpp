// Autograd and ADInplaceOrView kernels of the four ops (every backend), as torch splits its own
// in-place ops. The ops write into their arguments and have no derivative.
//
// ADInplaceOrView (called for every op outside torch.inference_mode, and inside it where an
// argument was made outside it): outside inference mode, a written tensor made under it (which
// torch cannot version) is refused before anything is written, as torch refuses an in-place op
// on one; after the write, the version of each tensor written is bumped, so a backward that saved
// one refuses to run on the overwritten values (inside inference mode too, for tensors made
// outside it, as torch's in-place ops bump them there; an inference tensor keeps no version).
//
// Autograd (outside inference mode, where an argument has autograd keys): while grad mode is on,
// a written tensor that requires grad (only weights can: the tables and heat are integers) is
// refused before anything is written.
#include <ATen/core/LegacyTypeDispatch.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/core/GradMode.h>
#include <c10/core/InferenceMode.h>
#include <torch/library.h>

#include <optional>
#include <string>

namespace eplb_rt {
namespace {

using OptTensor = std::optional<at::Tensor>;

// ``name`` and ``index``: "weights[3]"; index -1: the name alone.
void check_no_grad(const at::Tensor& t, const char* op, const char* name, int64_t index = -1) {
  if (!(t.requires_grad() && c10::GradMode::is_enabled())) return;
  TORCH_CHECK(false, op, ": ", name, index >= 0 ? "[" + std::to_string(index) + "]" : "",
              " requires grad, and the op writes into it without a derivative: call it under "
              "torch.no_grad() or torch.inference_mode()");
}

// Outside inference mode, the written tensor ``name`` (``index``: see check_no_grad) must not be
// an inference tensor: its version cannot be bumped, and the write would land before that
// refusal did. Inside inference mode any tensor may be written.
void check_not_inference(const at::Tensor& t, const char* op, const char* name,
                         int64_t index = -1) {
  if (!t.is_inference() || c10::InferenceMode::is_enabled()) return;
  TORCH_CHECK(false, op, ": ", name, index >= 0 ? "[" + std::to_string(index) + "]" : "",
              " was made under torch.inference_mode, and the op writes into it outside "
              "inference mode, which torch does not allow for an inference tensor: call the op "
              "under torch.inference_mode(), or make the tensor outside it");
}

void check_not_inference(const OptTensor& t, const char* op, const char* name) {
  if (t.has_value()) check_not_inference(*t, op, name);
}

void bump(const at::Tensor& t) { t.unsafeGetTensorImpl()->bump_version(); }

void bump(const OptTensor& t) {
  if (t.has_value()) bump(*t);
}

template <class Signature>
c10::TypedOperatorHandle<Signature> op_handle(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Signature>();
}

using RouteAndCount = void(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                           const OptTensor&, const at::Tensor&, const at::Tensor&,
                           const at::Tensor&, int64_t);
using CountFromGroupList = void(const at::Tensor&, const at::Tensor&, const at::Tensor&, int64_t,
                                bool);
using UpdateExpertWeights = void(at::TensorList, at::TensorList, const at::Tensor&);
using UpdateExpertMap = void(const at::Tensor&, const at::Tensor&, const OptTensor&,
                             const OptTensor&, const at::Tensor&, const at::Tensor&,
                             const OptTensor&, const OptTensor&, int64_t);

void route_and_count_autograd(const at::Tensor& topk_ids, const at::Tensor& log2phy,
                              const at::Tensor& logcnt, const OptTensor& replica_share,
                              const at::Tensor& heat, const at::Tensor& step,
                              const at::Tensor& phy_ids, int64_t code_offset) {
  static const auto op = op_handle<RouteAndCount>("eplb_rt::route_and_count");
  const at::AutoDispatchBelowAutograd guard;
  op.call(topk_ids, log2phy, logcnt, replica_share, heat, step, phy_ids, code_offset);
}

void route_and_count_inplace(const at::Tensor& topk_ids, const at::Tensor& log2phy,
                             const at::Tensor& logcnt, const OptTensor& replica_share,
                             const at::Tensor& heat, const at::Tensor& step,
                             const at::Tensor& phy_ids, int64_t code_offset) {
  static const auto op = op_handle<RouteAndCount>("eplb_rt::route_and_count");
  check_not_inference(heat, "route_and_count", "heat");
  check_not_inference(phy_ids, "route_and_count", "out");
  {
    const at::AutoDispatchBelowADInplaceOrView guard;
    op.call(topk_ids, log2phy, logcnt, replica_share, heat, step, phy_ids, code_offset);
  }
  bump(heat);
  bump(phy_ids);
}

void count_from_group_list_autograd(const at::Tensor& group_list, const at::Tensor& heat,
                                    const at::Tensor& step, int64_t slot_offset, bool cumulative) {
  static const auto op = op_handle<CountFromGroupList>("eplb_rt::count_from_group_list");
  const at::AutoDispatchBelowAutograd guard;
  op.call(group_list, heat, step, slot_offset, cumulative);
}

void count_from_group_list_inplace(const at::Tensor& group_list, const at::Tensor& heat,
                                   const at::Tensor& step, int64_t slot_offset, bool cumulative) {
  static const auto op = op_handle<CountFromGroupList>("eplb_rt::count_from_group_list");
  check_not_inference(heat, "count_from_group_list", "heat");
  {
    const at::AutoDispatchBelowADInplaceOrView guard;
    op.call(group_list, heat, step, slot_offset, cumulative);
  }
  bump(heat);
}

void update_expert_weights_autograd(at::TensorList weights, at::TensorList staged,
                                    const at::Tensor& slots) {
  static const auto op = op_handle<UpdateExpertWeights>("eplb_rt::update_expert_weights_");
  for (size_t t = 0; t < weights.size(); ++t) {
    check_no_grad(weights[t], "update_expert_weights_", "weights", static_cast<int64_t>(t));
  }
  const at::AutoDispatchBelowAutograd guard;
  op.call(weights, staged, slots);
}

void update_expert_weights_inplace(at::TensorList weights, at::TensorList staged,
                                   const at::Tensor& slots) {
  static const auto op = op_handle<UpdateExpertWeights>("eplb_rt::update_expert_weights_");
  for (size_t t = 0; t < weights.size(); ++t) {
    check_not_inference(weights[t], "update_expert_weights_", "weights", static_cast<int64_t>(t));
  }
  {
    const at::AutoDispatchBelowADInplaceOrView guard;
    op.call(weights, staged, slots);
  }
  for (const at::Tensor& w : weights) bump(w);
}

void update_expert_map_autograd(const at::Tensor& log2phy, const at::Tensor& logcnt,
                                const OptTensor& replica_share, const OptTensor& expert_map,
                                const at::Tensor& new_log2phy, const at::Tensor& new_logcnt,
                                const OptTensor& new_replica_share, const OptTensor& new_expert_map,
                                int64_t num_slots) {
  static const auto op = op_handle<UpdateExpertMap>("eplb_rt::update_expert_map_");
  if (replica_share.has_value()) {
    check_no_grad(*replica_share, "update_expert_map_", "replica_share");
  }
  const at::AutoDispatchBelowAutograd guard;
  op.call(log2phy, logcnt, replica_share, expert_map, new_log2phy, new_logcnt, new_replica_share,
          new_expert_map, num_slots);
}

void update_expert_map_inplace(const at::Tensor& log2phy, const at::Tensor& logcnt,
                               const OptTensor& replica_share, const OptTensor& expert_map,
                               const at::Tensor& new_log2phy, const at::Tensor& new_logcnt,
                               const OptTensor& new_replica_share, const OptTensor& new_expert_map,
                               int64_t num_slots) {
  static const auto op = op_handle<UpdateExpertMap>("eplb_rt::update_expert_map_");
  check_not_inference(log2phy, "update_expert_map_", "log2phy");
  check_not_inference(logcnt, "update_expert_map_", "logcnt");
  check_not_inference(replica_share, "update_expert_map_", "replica_share");
  check_not_inference(expert_map, "update_expert_map_", "expert_map");
  {
    const at::AutoDispatchBelowADInplaceOrView guard;
    op.call(log2phy, logcnt, replica_share, expert_map, new_log2phy, new_logcnt, new_replica_share,
            new_expert_map, num_slots);
  }
  bump(log2phy);
  bump(logcnt);
  bump(replica_share);
  bump(expert_map);
}

}  // namespace

TORCH_LIBRARY_IMPL(eplb_rt, Autograd, m) {
  m.impl("route_and_count", &route_and_count_autograd);
  m.impl("count_from_group_list", &count_from_group_list_autograd);
  m.impl("update_expert_weights_", &update_expert_weights_autograd);
  m.impl("update_expert_map_", &update_expert_map_autograd);
}

TORCH_LIBRARY_IMPL(eplb_rt, ADInplaceOrView, m) {
  m.impl("route_and_count", &route_and_count_inplace);
  m.impl("count_from_group_list", &count_from_group_list_inplace);
  m.impl("update_expert_weights_", &update_expert_weights_inplace);
  m.impl("update_expert_map_", &update_expert_map_inplace);
}

}  // namespace eplb_rt
