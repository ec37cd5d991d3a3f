// CPU kernel of update_expert_weights_: weights[t][slots[i]] = staged[t][i], a memcpy per (t, i).
// The slots are validated (in range, unique) before the first byte is copied.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cstring>
#include <utility>
#include <vector>

#include "common/checks.h"

namespace eplb_rt {
namespace {

// Bytes below which the copies run on the calling thread.
constexpr int64_t kSerialBytes = 1 << 20;

// The slots as int64, each in [0, S) (S < 0: no weights, so only >= 0) and given once.
template <typename index_t>
std::vector<int64_t> checked_slots(const at::Tensor& slots, int64_t S) {
  const index_t* s = slots.const_data_ptr<index_t>();
  const int64_t M = slots.size(0);
  std::vector<int64_t> out(M);
  for (int64_t i = 0; i < M; ++i) {
    const int64_t slot = static_cast<int64_t>(s[i]);
    if (S < 0) {  // no weights to bound the slots: each still names one slot, once
      TORCH_CHECK(slot >= 0, "update_expert_weights_: slots[", i, "] = ", slot,
                  " must be a local slot (>= 0)");
    } else {
      TORCH_CHECK(slot >= 0 && slot < S, "update_expert_weights_: slots[", i, "] = ", slot,
                  " must be a local slot in [0, S = ", S, ")");
    }
    out[i] = slot;
  }
  std::vector<std::pair<int64_t, int64_t>> pairs(M);  // (slot, index): memory in M, not S
  for (int64_t i = 0; i < M; ++i) pairs[i] = {out[i], i};
  const size_t i = first_repeat(pairs);
  TORCH_CHECK(i == pairs.size(), "update_expert_weights_: slots[", pairs[i - 1].second,
              "] and slots[", pairs[i].second, "] are both slot ", pairs[i].first,
              "; slots must be unique");
  return out;
}

void update_expert_weights_cpu(at::TensorList weights, at::TensorList staged,
                               const at::Tensor& slots) {
  check_update_expert_weights_args(weights, staged, slots);
  check_update_expert_weights_apart(weights, staged, slots);
  const int64_t S = weights.empty() ? -1 : weights[0].size(0);
  const std::vector<int64_t> dst_slot = slots.scalar_type() == at::kInt
                                            ? checked_slots<int32_t>(slots, S)
                                            : checked_slots<int64_t>(slots, S);
  if (weights.empty()) return;
  const int64_t M = static_cast<int64_t>(dst_slot.size());
  const int64_t T = static_cast<int64_t>(weights.size());
  int64_t total_bytes = 0;
  for (const at::Tensor& s : staged) total_bytes += s.nbytes();
  // Pointers taken here, on the calling thread: data_ptr() may have to copy a copy-on-write
  // storage first, which torch forbids inside a parallel region.
  std::vector<char*> dst(T, nullptr);
  std::vector<const char*> src(T, nullptr);
  std::vector<int64_t> row_bytes(T, 0);
  for (int64_t t = 0; t < T; ++t) {
    row_bytes[t] = S == 0 ? 0 : static_cast<int64_t>(weights[t].nbytes()) / S;
    // A tensor of empty rows has no memory: memcpy's pointers must not be null, even for 0.
    if (row_bytes[t] == 0) continue;
    dst[t] = static_cast<char*>(weights[t].data_ptr());
    src[t] = static_cast<const char*>(staged[t].const_data_ptr());
  }
  auto copy_range = [&](int64_t begin, int64_t end) {
    for (int64_t job = begin; job < end; ++job) {
      const int64_t t = job / M;
      const int64_t i = job % M;
      if (row_bytes[t] == 0) continue;
      std::memcpy(dst[t] + dst_slot[i] * row_bytes[t], src[t] + i * row_bytes[t], row_bytes[t]);
    }
  };
  if (total_bytes < kSerialBytes) {
    copy_range(0, T * M);
  } else {
    at::parallel_for(0, T * M, 1, copy_range);
  }
}

}  // namespace

TORCH_LIBRARY_IMPL(eplb_rt, CPU, m) {
  m.impl("update_expert_weights_", &update_expert_weights_cpu);
}

}  // namespace eplb_rt
