// Argument checks of the four ops that need no tensor values: dtypes, shapes, strides, devices.
// Every backend (CPU, Meta, CUDA, NPU) calls these first, so all of them reject the same inputs
// with the same message. Sizes are compared as SymInts, so the Meta kernels also work under
// torch.compile with dynamic shapes. Value checks of tensors the device holds are backend
// specific (a device backend cannot read them without synchronising); the new routing tables of
// update_expert_map_ are checked here, by every backend, whenever they are in host memory.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace eplb_rt {

// A dtype as Python names it (int32, not c10's Int), as a copy: torch 2.11 returns the names as
// strings by value (2.13 as views of static ones), so a view of them would dangle there (the
// first GPU run read freed bytes in an error message).
inline std::string dtype_name(at::ScalarType type) {
  return std::string(c10::getDtypeNames(type).first);
}

inline void check_dtype(const at::Tensor& t, const char* op, const char* name,
                        at::ScalarType want) {
  TORCH_CHECK(t.scalar_type() == want, op, ": ", name, " must be ", dtype_name(want), ", got ",
              dtype_name(t.scalar_type()));
}

inline void check_index_dtype(const at::Tensor& t, const char* op, const char* name) {
  TORCH_CHECK(t.scalar_type() == at::kInt || t.scalar_type() == at::kLong, op, ": ", name,
              " must be int32 or int64, got ", dtype_name(t.scalar_type()));
}

inline void check_dim(const at::Tensor& t, const char* op, const char* name, int64_t dim) {
  TORCH_CHECK(t.dim() == dim, op, ": ", name, " must be ", dim, "-D, got shape ", t.sym_sizes());
}

inline void check_contiguous(const at::Tensor& t, const char* op, const char* name) {
  TORCH_CHECK(t.is_contiguous(), op, ": ", name, " must be contiguous, got strides ",
              t.sym_strides(), " for shape ", t.sym_sizes());
}

inline void check_same_device(const at::Tensor& t, const char* op, const char* name,
                              const at::Tensor& ref, const char* ref_name) {
  TORCH_CHECK(t.device() == ref.device(), op, ": ", name, " must be on the device of ", ref_name,
              " (", ref.device(), "), got ", t.device());
}

inline void check_same_shape(const at::Tensor& t, const char* op, const char* name,
                             const at::Tensor& ref, const char* ref_name) {
  TORCH_CHECK(t.sym_sizes() == ref.sym_sizes(), op, ": ", name, " must have the shape of ",
              ref_name, " ", ref.sym_sizes(), ", got ", t.sym_sizes());
}

// The device step counter: one int64 element.
inline void check_step(const at::Tensor& step, const char* op, const at::Tensor& heat) {
  check_dtype(step, op, "step", at::kLong);
  TORCH_CHECK(step.sym_numel() == 1, op, ": step must have one element, got shape ",
              step.sym_sizes());
  check_same_device(step, op, "step", heat, "heat");
}

// heat [H, P] int32, unit stride in the last dimension (a row of the [H, L, P] ring per layer).
inline void check_heat(const at::Tensor& heat, const char* op) {
  check_dtype(heat, op, "heat", at::kInt);
  check_dim(heat, op, "heat", 2);
  TORCH_CHECK(heat.sym_size(0) >= 1, op, ": heat must have at least one row (H >= 1), got shape ",
              heat.sym_sizes());
  TORCH_CHECK(heat.sym_size(1) >= 1, op, ": heat must have at least one slot (P >= 1), got shape ",
              heat.sym_sizes());
  TORCH_CHECK(heat.sym_stride(1) == 1 || heat.sym_size(1) <= 1, op,
              ": heat must have unit stride in its last dimension, got strides ",
              heat.sym_strides());
  // Rows that overlap (an expanded row) would count every token once per row that shares it.
  TORCH_CHECK(heat.sym_size(0) == 1 || heat.sym_stride(0) >= heat.sym_size(1), op,
              ": heat rows must not overlap (row stride >= P), got shape ", heat.sym_sizes(),
              " and strides ", heat.sym_strides());
}

// route_and_count's code_offset: a shift of the 16-bit position codes (replica_rule.h).
inline uint32_t checked_code_offset(int64_t code_offset) {
  TORCH_CHECK(code_offset >= 0 && code_offset < 65536,
              "route_and_count: code_offset must be in [0, 65536), got ", code_offset);
  return static_cast<uint32_t>(code_offset);
}

inline void check_route_and_count_args(const at::Tensor& topk_ids, const at::Tensor& log2phy,
                                       const at::Tensor& logcnt,
                                       const std::optional<at::Tensor>& replica_share,
                                       const at::Tensor& heat, const at::Tensor& step,
                                       const at::Tensor& phy_ids) {
  constexpr const char* op = "route_and_count";
  check_index_dtype(topk_ids, op, "topk_ids");
  check_dim(topk_ids, op, "topk_ids", 2);
  check_contiguous(topk_ids, op, "topk_ids");
  check_dtype(log2phy, op, "log2phy", at::kInt);
  check_dim(log2phy, op, "log2phy", 2);
  check_contiguous(log2phy, op, "log2phy");
  TORCH_CHECK(log2phy.sym_size(0) >= 1 && log2phy.sym_size(1) >= 1, op,
              ": log2phy [E, R] needs E >= 1 and R >= 1, got shape ", log2phy.sym_sizes());
  // The replica rule's position code has 16 bits: it splits an expert over at most 2^16.
  TORCH_CHECK(log2phy.sym_size(1) <= 65536, op,
              ": log2phy [E, R] needs R <= 65536 (replicas an expert's tokens split over), got "
              "shape ",
              log2phy.sym_sizes());
  check_same_device(log2phy, op, "log2phy", topk_ids, "topk_ids");
  check_dtype(logcnt, op, "logcnt", at::kInt);
  check_dim(logcnt, op, "logcnt", 1);
  check_contiguous(logcnt, op, "logcnt");
  TORCH_CHECK(logcnt.sym_size(0) == log2phy.sym_size(0), op, ": logcnt must have shape [E] = [",
              log2phy.sym_size(0), "] like log2phy [E, R], got ", logcnt.sym_sizes());
  check_same_device(logcnt, op, "logcnt", topk_ids, "topk_ids");
  if (replica_share.has_value()) {
    check_dtype(*replica_share, op, "replica_share", at::kFloat);
    check_same_shape(*replica_share, op, "replica_share", log2phy, "log2phy");
    check_contiguous(*replica_share, op, "replica_share");
    check_same_device(*replica_share, op, "replica_share", topk_ids, "topk_ids");
  }
  check_heat(heat, op);
  check_same_device(heat, op, "heat", topk_ids, "topk_ids");
  check_step(step, op, heat);
  TORCH_CHECK(phy_ids.scalar_type() == topk_ids.scalar_type(), op,
              ": phy_ids must have the dtype of topk_ids (", dtype_name(topk_ids.scalar_type()),
              "), got ", dtype_name(phy_ids.scalar_type()));
  check_same_shape(phy_ids, op, "phy_ids", topk_ids, "topk_ids");
  check_contiguous(phy_ids, op, "phy_ids");
  check_same_device(phy_ids, op, "phy_ids", topk_ids, "topk_ids");
}

// Memory an op writes must not be memory it reads: the kernels read and write in an order of
// their own, so an output aliasing an input gives results that depend on it (or, for memcpy,
// undefined behaviour). These read data pointers, so the backends with real memory call them
// (CPU, CUDA, NPU), the Meta kernels do not. ``same_ok``: the output may be that input itself.
inline bool spans_meet(const at::Tensor& a, const at::Tensor& b) {
  // The bytes from each tensor's lowest element to the end of its highest: for views with gaps
  // (a layer's rows of the heat ring), which torch's own test cannot decide.
  auto span = [](const at::Tensor& t) {
    const char* base = static_cast<const char*>(t.const_data_ptr());
    const at::IntArrayRef sizes = t.sizes();
    const at::IntArrayRef strides = t.strides();
    int64_t low = 0;
    int64_t high = 0;
    for (size_t d = 0; d < sizes.size(); ++d) {
      const int64_t reach = strides[d] * (sizes[d] - 1);
      (reach < 0 ? low : high) += reach;
    }
    const int64_t item = static_cast<int64_t>(t.element_size());
    return std::make_pair(base + low * item, base + (high + 1) * item);
  };
  const auto [a_begin, a_end] = span(a);
  const auto [b_begin, b_end] = span(b);
  return a_begin < b_end && b_begin < a_end;
}

inline void check_apart(const at::Tensor& out, const char* op, const char* out_name,
                        const at::Tensor& in, const char* in_name, bool same_ok = false) {
  if (out.numel() == 0 || in.numel() == 0) return;
  // A lazy (copy-on-write) clone shares its source's bytes, under another storage, until it is
  // written: it gets its own now, as the write would give it.
  static_cast<void>(out.mutable_data_ptr());
  // Spans first: a few integer operations settle the usual case (a call at decode takes 3 us).
  if (!spans_meet(out, in)) return;
  if (out.device() != in.device()) return;  // addresses of different memories
  // Spans that meet share memory whichever storage each tensor came from: torch's own test
  // (at::get_overlap_status) compares addresses only within one storage, and the same bytes
  // can have two (from_dlpack, from_numpy twice on one array). A view with gaps whose span
  // meets the other's is taken as sharing too.
  const bool same = same_ok && out.const_data_ptr() == in.const_data_ptr() &&
                    out.sizes() == in.sizes() && out.strides() == in.strides() &&
                    out.element_size() == in.element_size();
  TORCH_CHECK(same, op, ": ", out_name, " must not share memory with ", in_name,
              same_ok ? " unless it is that tensor" : "");
}

inline void check_route_and_count_apart(const at::Tensor& topk_ids, const at::Tensor& log2phy,
                                        const at::Tensor& logcnt,
                                        const std::optional<at::Tensor>& replica_share,
                                        const at::Tensor& heat, const at::Tensor& step,
                                        const at::Tensor& phy_ids) {
  constexpr const char* op = "route_and_count";
  auto apart_from_tables = [&](const at::Tensor& out, const char* out_name) {
    check_apart(out, op, out_name, log2phy, "log2phy");
    check_apart(out, op, out_name, logcnt, "logcnt");
    if (replica_share.has_value()) check_apart(out, op, out_name, *replica_share, "replica_share");
    check_apart(out, op, out_name, step, "step");
  };
  apart_from_tables(phy_ids, "phy_ids");
  apart_from_tables(heat, "heat");
  check_apart(phy_ids, op, "phy_ids", topk_ids, "topk_ids", /*same_ok=*/true);  // in place
  check_apart(heat, op, "heat", topk_ids, "topk_ids");
  check_apart(heat, op, "heat", phy_ids, "phy_ids");
}

inline void check_count_from_group_list_apart(const at::Tensor& group_list, const at::Tensor& heat,
                                              const at::Tensor& step) {
  check_apart(heat, "count_from_group_list", "heat", group_list, "group_list");
  check_apart(heat, "count_from_group_list", "heat", step, "step");
}

inline void check_update_expert_weights_apart(at::TensorList weights, at::TensorList staged,
                                              const at::Tensor& slots) {
  constexpr const char* op = "update_expert_weights_";
  for (size_t t = 0; t < weights.size(); ++t) {
    check_apart(weights[t], op, "a weight tensor", slots, "slots");
    for (size_t u = 0; u < staged.size(); ++u) {
      check_apart(weights[t], op, "a weight tensor", staged[u], "a staged tensor");
    }
    // Views of one buffer are fine where they do not overlap; where they do, the copies'
    // order would decide the weights.
    for (size_t u = t + 1; u < weights.size(); ++u) {
      check_apart(weights[t], op, "a weight tensor", weights[u], "another weight tensor");
    }
  }
}

// A table may be refreshed from itself; no table may be written from another's memory.
inline void check_update_expert_map_apart(const at::Tensor& log2phy, const at::Tensor& logcnt,
                                          const std::optional<at::Tensor>& replica_share,
                                          const std::optional<at::Tensor>& expert_map,
                                          const at::Tensor& new_log2phy,
                                          const at::Tensor& new_logcnt,
                                          const std::optional<at::Tensor>& new_replica_share,
                                          const std::optional<at::Tensor>& new_expert_map) {
  constexpr const char* op = "update_expert_map_";
  using Named = std::pair<const at::Tensor*, const char*>;
  std::vector<Named> dst{{&log2phy, "log2phy"}, {&logcnt, "logcnt"}};
  std::vector<Named> src{{&new_log2phy, "new_log2phy"}, {&new_logcnt, "new_logcnt"}};
  if (replica_share.has_value()) {
    dst.emplace_back(&*replica_share, "replica_share");
    src.emplace_back(&*new_replica_share, "new_replica_share");
  }
  if (expert_map.has_value()) {
    dst.emplace_back(&*expert_map, "expert_map");
    src.emplace_back(&*new_expert_map, "new_expert_map");
  }
  for (size_t i = 0; i < dst.size(); ++i) {
    for (size_t j = 0; j < src.size(); ++j) {
      check_apart(*dst[i].first, op, dst[i].second, *src[j].first, src[j].second, i == j);
    }
    // Two tables in one memory: the second copy would overwrite the first's checked values.
    for (size_t j = i + 1; j < dst.size(); ++j) {
      check_apart(*dst[i].first, op, dst[i].second, *dst[j].first, dst[j].second);
    }
  }
}

// For backends whose kernels take sizes as int32 (CUDA, NPU; the CPU and Meta kernels do not).
// Such sizes only come with tensors of many GiB, but must be rejected before a cast wraps them.
inline void check_int32_size(const at::Tensor& t, int64_t dim, const char* op, const char* name) {
  TORCH_CHECK(t.size(dim) <= INT32_MAX, op, ": ", name, " must have at most ", INT32_MAX,
              " entries in dimension ", dim, " on ", t.device().type(), ", got shape ", t.sizes());
}

// K, E, R and P of route_and_count, for the kernels that take them as int32, and N * K, which
// the CUDA kernel indexes with 32 bits.
inline void check_route_and_count_int32_sizes(const at::Tensor& topk_ids, const at::Tensor& log2phy,
                                              const at::Tensor& heat) {
  constexpr const char* op = "route_and_count";
  TORCH_CHECK(topk_ids.numel() <= INT32_MAX, op, ": topk_ids must hold at most ", INT32_MAX,
              " ids (N * K) on ", topk_ids.device().type(), ", got shape ", topk_ids.sizes());
  check_int32_size(topk_ids, 1, op, "topk_ids");
  check_int32_size(log2phy, 0, op, "log2phy");
  check_int32_size(log2phy, 1, op, "log2phy");
  check_int32_size(heat, 1, op, "heat");
}

inline void check_count_from_group_list_args(const at::Tensor& group_list, const at::Tensor& heat,
                                             const at::Tensor& step, int64_t slot_offset) {
  constexpr const char* op = "count_from_group_list";
  check_index_dtype(group_list, op, "group_list");
  check_dim(group_list, op, "group_list", 1);
  check_contiguous(group_list, op, "group_list");
  check_heat(heat, op);
  check_same_device(group_list, op, "group_list", heat, "heat");
  check_step(step, op, heat);
  TORCH_CHECK(slot_offset >= 0, op, ": slot_offset must be >= 0, got ", slot_offset);
  // Written so that no sum can overflow (a slot_offset near 2^63 would wrap past the check).
  TORCH_CHECK(slot_offset <= heat.sym_size(1) &&
                  group_list.sym_size(0) <= heat.sym_size(1) - slot_offset,
              op, ": slot_offset + S_local must be <= P = ", heat.sym_size(1), ", got ",
              slot_offset, " + ", group_list.sym_size(0));
}

inline void check_update_expert_weights_args(at::TensorList weights, at::TensorList staged,
                                             const at::Tensor& slots) {
  constexpr const char* op = "update_expert_weights_";
  TORCH_CHECK(weights.size() == staged.size(), op,
              ": weights and staged must hold as many tensors,", " got ", weights.size(), " and ",
              staged.size());
  check_index_dtype(slots, op, "slots");
  check_dim(slots, op, "slots", 1);
  check_contiguous(slots, op, "slots");
  for (size_t t = 0; t < weights.size(); ++t) {
    const at::Tensor& w = weights[t];
    const at::Tensor& s = staged[t];
    TORCH_CHECK(w.dim() >= 1, op, ": weights[", t, "] must have a slot dimension, got a scalar");
    TORCH_CHECK(w.is_contiguous(), op, ": weights[", t, "] must be contiguous, got strides ",
                w.sym_strides(), " for shape ", w.sym_sizes());
    TORCH_CHECK(w.sym_size(0) == weights[0].sym_size(0), op, ": weights[", t,
                "] must have S = ", weights[0].sym_size(0), " slots like weights[0], got shape ",
                w.sym_sizes());
    TORCH_CHECK(s.scalar_type() == w.scalar_type(), op, ": staged[", t,
                "] must have the dtype of weights[", t, "] (", dtype_name(w.scalar_type()),
                "), got ", dtype_name(s.scalar_type()));
    if (!(s.dim() == w.dim() && s.sym_size(0) == slots.sym_size(0) &&
          s.sym_sizes().slice(1) == w.sym_sizes().slice(1))) {
      std::vector<c10::SymInt> want(w.sym_sizes().begin(), w.sym_sizes().end());
      want[0] = slots.sym_size(0);
      TORCH_CHECK(false, op, ": staged[", t, "] must have shape [M, ...] = ",
                  c10::SymIntArrayRef(want), " (M = len(slots), ... of weights[", t, "]), got ",
                  s.sym_sizes());
    }
    TORCH_CHECK(s.is_contiguous(), op, ": staged[", t, "] must be contiguous, got strides ",
                s.sym_strides(), " for shape ", s.sym_sizes());
    TORCH_CHECK(w.device() == slots.device() && s.device() == slots.device(), op, ": weights[", t,
                "] (", w.device(), ") and staged[", t, "] (", s.device(),
                ") must be on the device of slots (", slots.device(), ")");
  }
}

// The new tables may be in host memory while the tables they replace are on a device (staged
// from pinned memory: the device backends then check their values and copy them asynchronously).
inline void check_update_expert_map_args(const at::Tensor& log2phy, const at::Tensor& logcnt,
                                         const std::optional<at::Tensor>& replica_share,
                                         const std::optional<at::Tensor>& expert_map,
                                         const at::Tensor& new_log2phy,
                                         const at::Tensor& new_logcnt,
                                         const std::optional<at::Tensor>& new_replica_share,
                                         const std::optional<at::Tensor>& new_expert_map,
                                         int64_t num_slots) {
  constexpr const char* op = "update_expert_map_";
  TORCH_CHECK(replica_share.has_value() == new_replica_share.has_value(), op,
              ": replica_share and new_replica_share must both be given or both be None, got ",
              replica_share.has_value() ? "a tensor" : "None", " and ",
              new_replica_share.has_value() ? "a tensor" : "None");
  TORCH_CHECK(expert_map.has_value() == new_expert_map.has_value(), op,
              ": expert_map and new_expert_map must both be given or both be None, got ",
              expert_map.has_value() ? "a tensor" : "None", " and ",
              new_expert_map.has_value() ? "a tensor" : "None");
  TORCH_CHECK(num_slots >= 1, op, ": num_slots (P) must be >= 1, got ", num_slots);
  check_dtype(log2phy, op, "log2phy", at::kInt);
  check_dim(log2phy, op, "log2phy", 2);
  TORCH_CHECK(log2phy.sym_size(0) >= 1 && log2phy.sym_size(1) >= 1, op,
              ": log2phy [E, R] needs E >= 1 and R >= 1, got shape ", log2phy.sym_sizes());
  check_dtype(logcnt, op, "logcnt", at::kInt);
  TORCH_CHECK(logcnt.dim() == 1 && logcnt.sym_size(0) == log2phy.sym_size(0), op,
              ": logcnt must have shape [E] = [", log2phy.sym_size(0), "], got ",
              logcnt.sym_sizes());
  // The new tables all live together, on log2phy's device or in host memory.
  const at::Device src_device = new_log2phy.device();
  TORCH_CHECK(src_device == log2phy.device() || src_device.is_cpu(), op,
              ": new_log2phy must be on the device of log2phy (", log2phy.device(),
              ") or in host memory, got ", src_device);
  // (target, source, its name) pairs share every metadata check.
  auto pair = [&](const at::Tensor& dst, const at::Tensor& src, const char* name,
                  const char* new_name) {
    check_contiguous(dst, op, name);
    check_contiguous(src, op, new_name);
    TORCH_CHECK(src.scalar_type() == dst.scalar_type(), op, ": ", new_name,
                " must have the dtype of ", name, " (", dtype_name(dst.scalar_type()), "), got ",
                dtype_name(src.scalar_type()));
    check_same_shape(src, op, new_name, dst, name);
    check_same_device(dst, op, name, log2phy, "log2phy");
    check_same_device(src, op, new_name, new_log2phy, "new_log2phy");
  };
  pair(log2phy, new_log2phy, "log2phy", "new_log2phy");
  pair(logcnt, new_logcnt, "logcnt", "new_logcnt");
  if (replica_share.has_value()) {
    check_dtype(*replica_share, op, "replica_share", at::kFloat);
    check_same_shape(*replica_share, op, "replica_share", log2phy, "log2phy");
    pair(*replica_share, *new_replica_share, "replica_share", "new_replica_share");
  }
  if (expert_map.has_value()) {
    check_dtype(*expert_map, op, "expert_map", at::kInt);
    check_same_shape(*expert_map, op, "expert_map", logcnt, "logcnt");
    pair(*expert_map, *new_expert_map, "expert_map", "new_expert_map");
  }
}

// Sorts (value, index) pairs and returns the position of the first whose value repeats the one
// before it, or pairs.size() where none does: a check for repeated values in memory of their
// count, whatever their range (a slot id may be as large as P).
inline size_t first_repeat(std::vector<std::pair<int64_t, int64_t>>& pairs) {
  std::sort(pairs.begin(), pairs.end());
  for (size_t i = 1; i < pairs.size(); ++i) {
    if (pairs[i].first == pairs[i - 1].first) return i;
  }
  return pairs.size();
}

// |sum of an expert's shares - 1| allowed: float32 rounding of a few terms, far below the 2^-16
// resolution of the replica rule's position code.
constexpr float kShareSumTolerance = 1e-4f;

// The rule of an expert's shares over its cnt >= 1 replicas (a split of its tokens): each finite
// and >= 0, summing to 1 within kShareSumTolerance. Returns -1 where `row` keeps it, else the first
// replica whose share is not finite or negative, or cnt where each is and their sum is off
// (then in *sum). The one statement of the rule: route_and_count reads it for the tables in
// force, update_expert_map_ for new ones.
inline int32_t share_fault(const float* row, int32_t cnt, float* sum) {
  *sum = 0.0f;
  for (int32_t r = 0; r < cnt; ++r) {
    if (!(std::isfinite(row[r]) && row[r] >= 0.0f)) return r;
    *sum += row[r];
  }
  return std::fabs(*sum - 1.0f) <= kShareSumTolerance ? -1 : cnt;
}

// Values of the new tables, in host memory (CPU tensors, metadata already checked): every
// expert has 1..R replicas on slots in [0, P) then -1 padding; shares finite, >= 0, each
// expert's shares over its replicas summing to 1; expert_map a local slot in [0, P) or -1,
// no slot given to two experts.
inline void check_new_map_values(const at::Tensor& new_log2phy, const at::Tensor& new_logcnt,
                                 const std::optional<at::Tensor>& new_replica_share,
                                 const std::optional<at::Tensor>& new_expert_map,
                                 int64_t num_slots) {
  constexpr const char* op = "update_expert_map_";
  const int64_t E = new_log2phy.size(0);
  const int64_t R = new_log2phy.size(1);
  const int32_t* l2p = new_log2phy.const_data_ptr<int32_t>();
  const int32_t* cnt = new_logcnt.const_data_ptr<int32_t>();
  const float* share =
      new_replica_share.has_value() ? new_replica_share->const_data_ptr<float>() : nullptr;
  std::vector<std::pair<int64_t, int64_t>> used;  // (slot, e * R + r) of every replica
  for (int64_t e = 0; e < E; ++e) {
    TORCH_CHECK(cnt[e] >= 1 && cnt[e] <= R, op, ": new_logcnt[", e, "] = ", cnt[e],
                " must be in [1, R = ", R, "]");
    for (int64_t r = 0; r < R; ++r) {
      const int32_t p = l2p[e * R + r];
      if (r < cnt[e]) {
        TORCH_CHECK(p >= 0 && p < num_slots, op, ": new_log2phy[", e, ", ", r, "] = ", p,
                    " must be a slot in [0, P = ", num_slots, ") (expert ", e, " has ", cnt[e],
                    " replicas)");
        used.emplace_back(p, e * R + r);
      } else {
        TORCH_CHECK(p == -1, op, ": new_log2phy[", e, ", ", r, "] = ", p,
                    " must be -1 (padding: expert ", e, " has ", cnt[e], " replicas)");
      }
    }
    if (share == nullptr) continue;
    // Padding's shares too (no kernel reads them): a table holds finite shares >= 0 throughout.
    float sum = 0.0f;
    const int32_t fault = share_fault(share + e * R, cnt[e], &sum);
    for (int64_t r = fault < 0 ? cnt[e] : fault; r < R; ++r) {
      const float w = share[e * R + r];
      TORCH_CHECK(std::isfinite(w) && w >= 0.0f, op, ": new_replica_share[", e, ", ", r, "] = ", w,
                  " must be finite and >= 0");
    }
    TORCH_CHECK(fault < 0, op, ": the shares of expert ", e, " over its ", cnt[e],
                " replicas (new_replica_share[", e, ", :", cnt[e], "]) must sum to 1 within ",
                kShareSumTolerance, ", got ", sum);
  }
  // A slot holds one replica: heat counted for it would be credited to two (expert, replica).
  const size_t twice = first_repeat(used);
  TORCH_CHECK(twice == used.size(), op, ": new_log2phy[", used[twice - 1].second / R, ", ",
              used[twice - 1].second % R, "] and new_log2phy[", used[twice].second / R, ", ",
              used[twice].second % R, "] are both slot ", used[twice].first,
              " (a slot holds one replica)");
  if (new_expert_map.has_value()) {
    const int32_t* map = new_expert_map->const_data_ptr<int32_t>();
    // A local slot holds one expert: two experts on one slot would route both to its weights.
    // (slot, expert) pairs sorted: memory in E, whatever P is.
    std::vector<std::pair<int64_t, int64_t>> held;
    for (int64_t e = 0; e < E; ++e) {
      TORCH_CHECK(map[e] >= -1 && map[e] < num_slots, op, ": new_expert_map[", e, "] = ", map[e],
                  " must be a local slot in [0, P = ", num_slots, ") or -1 (absent)");
      if (map[e] >= 0) held.emplace_back(map[e], e);
    }
    const size_t i = first_repeat(held);
    TORCH_CHECK(i == held.size(), op, ": new_expert_map[", held[i - 1].second,
                "] and new_expert_map[", held[i].second, "] are both local slot ", held[i].first,
                " (a slot holds one expert)");
  }
}

}  // namespace eplb_rt
