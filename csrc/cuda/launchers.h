// Plain launchers of the CUDA kernels of eplb_rt: pointers, sizes, a small params struct and an
// explicit stream. No torch here; csrc/cuda/ops_cuda.cpp is the one translator from tensors.
//
// Every launcher only enqueues work on `stream`: it never allocates device memory, never copies
// to or from the host and never synchronises, so it is safe inside CUDA graph capture. It returns
// the launch status (cudaGetLastError after the launch, or cudaErrorInvalidValue for sizes the
// kernels do not cover); the caller turns that into an error.
//
// Values that only the device sees cannot be checked without a synchronisation. The kernels
// therefore treat them as follows (the CPU backend raises an error for the same inputs):
//   * route_and_count: a pair whose id is < -1 or >= E, whose expert has logcnt outside [1, R], or
//     whose chosen log2phy entry is outside [0, P) is skipped: phy_ids gets -1, nothing is counted.
//     Compiled with EPLB_RT_CUDA_DEVICE_ASSERT, such a pair also fails a device-side assert.
//   * count_from_group_list: a negative count is skipped (heat never decreases), one past int32
//     is added as INT32_MAX (the int32 counter still wraps past INT32_MAX in all).
//   * update_expert_weights: a slot outside [0, S) is skipped; of moves to one slot, the last wins.
//   * update_expert_map: the new tables are copied as they are.
#pragma once

#include <cuda_runtime_api.h>
#include <stdint.h>

namespace eplb_rt::cuda {

// route_and_count for one layer. Shapes as in the op contract:
// topk_ids/phy_ids [N, K] contiguous, log2phy [E, R], logcnt [E], replica_share [E, R] or null,
// heat rows of P int32 counters `heat_row_stride` elements apart, H rows, step one int64 on the
// device (row = step mod H, read inside the kernel).
struct RouteAndCountParams {
  int64_t num_tokens;       // N
  int32_t top_k;            // K
  int32_t num_experts;      // E
  int32_t max_replicas;     // R
  int32_t num_slots;        // P
  int64_t ring_size;        // H >= 1
  int64_t heat_row_stride;  // elements between heat[h, 0] and heat[h + 1, 0]
  uint32_t code_offset;     // shift of the position codes, in [0, 2^16) (replica_rule.h)
};

// Id is int32_t or int64_t (the dtype of topk_ids and phy_ids).
template <typename Id>
cudaError_t launch_route_and_count(const Id* topk_ids, const int32_t* log2phy,
                                   const int32_t* logcnt, const float* replica_share, int32_t* heat,
                                   const int64_t* step, Id* phy_ids,
                                   const RouteAndCountParams& params, cudaStream_t stream);

// count_from_group_list: heat[row, slot_offset + i] += count_i for i in [0, num_local).
struct CountFromGroupListParams {
  int32_t num_local;  // S_local, entries of group_list
  int32_t slot_offset;
  bool cumulative;  // group_list holds inclusive prefix sums
  int64_t ring_size;
  int64_t heat_row_stride;
};

// G is int32_t or int64_t (the dtype of group_list).
template <typename G>
cudaError_t launch_count_from_group_list(const G* group_list, int32_t* heat, const int64_t* step,
                                         const CountFromGroupListParams& params,
                                         cudaStream_t stream);

// update_expert_weights: for every tensor t and move i, copy bytes_per_slot bytes from
// src_t + i * bytes_per_slot to dst_t + slots[i] * bytes_per_slot. The descriptors travel by
// value in the kernel parameters (no device allocation, no host-to-device copy, graph-safe);
// a layer with more than kMaxWeightTensors tensors is copied in several launches.
struct WeightCopyDesc {
  void* dst;               // weights[t] data, [num_slots, ...] contiguous
  const void* src;         // staged[t] data, [num_moves, ...] contiguous
  int64_t bytes_per_slot;  // bytes of one expert in this tensor
  int64_t num_slots;       // S of this tensor; slots outside [0, S) are skipped
};

constexpr int kMaxWeightTensors = 32;

template <typename Slot>
cudaError_t launch_update_expert_weights(const WeightCopyDesc* tensors, int32_t num_tensors,
                                         const Slot* slots, int64_t num_moves, cudaStream_t stream);

// update_expert_map: one launch copies the four tables of a layer (32-bit words each; float
// shares are copied bitwise). A table with count 0 (absent) is left alone.
struct TableCopy {
  void* dst;
  const void* src;
  int64_t count;  // 32-bit elements
};

constexpr int kNumMapTables = 4;  // log2phy, logcnt, replica_share, expert_map

cudaError_t launch_update_expert_map(const TableCopy (&tables)[kNumMapTables], cudaStream_t stream);

}  // namespace eplb_rt::cuda
