// route_and_count on CUDA: logical top-k ids -> physical ids by the shared replica rule, and the
// per-slot token counts added into the heat row of the current step, in one pass.
//
// Two paths, both one launch with the ring row read from the device step counter:
//   * decode (few pairs): a single block, one pair per thread, int32 atomics straight into the
//     heat row. At these sizes launch latency dominates; one block has nothing to merge.
//   * prefill: a grid of blocks, each counting into a shared-memory histogram of the P slots and
//     merging its non-zero bins into the heat row with int32 atomicAdd. topk_ids / phy_ids move in
//     16-byte vectors when both are 16-byte aligned (4 int32 or 2 int64 ids per load), with a
//     scalar tail. When P int32 bins do not fit in shared memory the grid counts in global memory.
//     Each block also copies the routing tables (logcnt, log2phy, replica_share) into shared
//     memory when they fit beside the histogram, so a warp's 32 scattered table reads are served
//     by shared memory, not one L1 line at a time.
//
// The prefill geometry is measured (benchmarks/cuda/route_geometry.cu on an H200, N=262144, K=8,
// E=256): 4 blocks of 256 threads per SM are 1.15-1.33x faster than 8 (more pairs per thread,
// half the histogram merges), and staged tables 0-4 % faster than the read-only cache. The
// kernel stays bound by its per-pair work there, not by the ids' bytes (int64 ids take 10 %
// longer than int32 for twice the bytes), nor by loads in flight: two or four vectors loaded per
// thread before routing them changed nothing (within 2 %), so each thread loads one.
#include <assert.h>

#include <algorithm>

#include "../common/replica_rule.h"
#include "device_common.cuh"
#include "launchers.h"

namespace eplb_rt::cuda {
namespace {

constexpr int kThreads = 256;                   // prefill block size
constexpr int kMaxThreads = 1024;               // decode block size limit
constexpr uint32_t kDecodeMaxPairs = 1024;      // at most this many pairs: one block
constexpr int64_t kMaxSharedBytes = 48 * 1024;  // no opt-in needed below 48 KiB

// How the prefill path spreads its pairs; benchmarks/cuda/route_geometry.cu sweeps it.
struct PrefillGeometry {
  int blocks_per_sm = 4;                // 4 x 256 threads per SM (measured best of 2-16)
  uint32_t min_pairs_per_block = 2048;  // amortises a block's set-up and histogram merge
  bool stage_tables = true;             // routing tables in shared memory when they fit
};

struct RouteTables {
  const int32_t* log2phy;  // [E, R]
  const int32_t* logcnt;   // [E]
  const float* share;      // [E, R] or null (uniform)
};

// A table entry: through the read-only cache from global memory, plainly from shared memory
// (__ldg is a global-memory load).
template <bool kShared, typename T>
__device__ __forceinline__ T table_load(const T* p) {
  if constexpr (kShared) {
    return *p;
  } else {
    return __ldg(p);
  }
}

#if defined(EPLB_RT_CUDA_DEVICE_ASSERT)
#define EPLB_RT_DEVICE_CHECK(cond, what) assert((cond) && what)
#else
#define EPLB_RT_DEVICE_CHECK(cond, what) ((void)0)
#endif

// Slot of pair (token n, choice k) with logical id `id`, or -1 for padding and for values the
// host could not check (see launchers.h).
template <typename Id, bool kWeighted, bool kSharedTables>
__device__ __forceinline__ int32_t route_pair(Id id, uint32_t n, uint32_t k,
                                              const RouteTables& tables, int64_t step,
                                              const RouteAndCountParams& p) {
  if (id < 0 || id >= p.num_experts) {
    EPLB_RT_DEVICE_CHECK(id == -1, "route_and_count: topk id out of [-1, E)");
    return -1;
  }
  const int32_t expert = static_cast<int32_t>(id);
  const int32_t cnt = table_load<kSharedTables>(tables.logcnt + expert);
  if (cnt < 1 || cnt > p.max_replicas) {
    EPLB_RT_DEVICE_CHECK(false, "route_and_count: logcnt out of [1, R]");
    return -1;
  }
  const uint32_t code = position_code(step, p.num_tokens, n, k, p.code_offset);
  const int64_t row = static_cast<int64_t>(expert) * p.max_replicas;
  int32_t r;
  if constexpr (kWeighted) {
    r = weighted_replica(code, tables.share + row, cnt);
  } else {
    r = uniform_replica(code, cnt);
  }
  const int32_t slot = table_load<kSharedTables>(tables.log2phy + row + r);
  if (slot < 0 || slot >= p.num_slots) {
    EPLB_RT_DEVICE_CHECK(false, "route_and_count: log2phy entry out of [0, P)");
    return -1;
  }
  return slot;
}

// kSharedHist: count into a shared-memory histogram of P bins (dynamic shared memory) and merge
// into the heat row at the end; otherwise count into the heat row directly. kSharedTables (only
// with kSharedHist): the routing tables are read from copies after the bins in shared memory.
template <typename Id, bool kWeighted, bool kSharedHist, bool kSharedTables>
__global__ void __launch_bounds__(kMaxThreads)
    route_and_count_kernel(const Id* __restrict__ topk_ids, RouteTables tables,
                           int32_t* __restrict__ heat, const int64_t* __restrict__ step_ptr,
                           Id* __restrict__ phy_ids, RouteAndCountParams p, uint32_t num_pairs,
                           bool vectorized) {
  static_assert(kSharedHist || !kSharedTables, "the tables are staged after the histogram");
  extern __shared__ int32_t shared_hist[];
  const int64_t step = *step_ptr;
  int32_t* heat_row = heat + ring_row(step, p.ring_size) * p.heat_row_stride;
  int32_t* counts = kSharedHist ? shared_hist : heat_row;
  if constexpr (kSharedHist) {
    for (int32_t j = threadIdx.x; j < p.num_slots; j += blockDim.x) shared_hist[j] = 0;
  }
  if constexpr (kSharedTables) {
    const int32_t entries = p.num_experts * p.max_replicas;
    int32_t* logcnt = shared_hist + p.num_slots;
    int32_t* log2phy = logcnt + p.num_experts;
    float* share = reinterpret_cast<float*>(log2phy + entries);
    for (int32_t j = threadIdx.x; j < p.num_experts; j += blockDim.x)
      logcnt[j] = __ldg(tables.logcnt + j);
    for (int32_t j = threadIdx.x; j < entries; j += blockDim.x) {
      log2phy[j] = __ldg(tables.log2phy + j);
      if constexpr (kWeighted) share[j] = __ldg(tables.share + j);
    }
    tables = RouteTables{log2phy, logcnt, kWeighted ? share : nullptr};
  }
  if constexpr (kSharedHist) __syncthreads();

  const uint32_t first = blockIdx.x * blockDim.x + threadIdx.x;
  const uint32_t stride = gridDim.x * blockDim.x;
  const auto top_k = static_cast<uint32_t>(p.top_k);
  uint32_t scalar_begin = 0;
  if (vectorized) {
    constexpr int kVec = 16 / sizeof(Id);
    union IdVec {
      uint4 raw;
      Id id[kVec];
    };
    const uint32_t num_vecs = num_pairs / kVec;
    const uint4* in = reinterpret_cast<const uint4*>(topk_ids);
    uint4* out = reinterpret_cast<uint4*>(phy_ids);
    for (uint32_t v = first; v < num_vecs; v += stride) {
      IdVec ids;
      ids.raw = __ldg(in + v);
      IdVec slots;
      // One division per vector; (n, k) then advance pair by pair.
      uint32_t n = v * kVec / top_k;
      uint32_t k = v * kVec - n * top_k;
#pragma unroll
      for (int j = 0; j < kVec; ++j) {
        const int32_t slot =
            route_pair<Id, kWeighted, kSharedTables>(ids.id[j], n, k, tables, step, p);
        slots.id[j] = static_cast<Id>(slot);
        if (slot >= 0) atomicAdd(counts + slot, 1);
        if (++k == top_k) {
          k = 0;
          ++n;
        }
      }
      out[v] = slots.raw;
    }
    scalar_begin = num_vecs * kVec;
  }
  for (uint32_t i = scalar_begin + first; i < num_pairs; i += stride) {
    const uint32_t n = i / top_k;
    const int32_t slot =
        route_pair<Id, kWeighted, kSharedTables>(topk_ids[i], n, i - n * top_k, tables, step, p);
    phy_ids[i] = static_cast<Id>(slot);
    if (slot >= 0) atomicAdd(counts + slot, 1);
  }

  if constexpr (kSharedHist) {
    __syncthreads();
    for (int32_t j = threadIdx.x; j < p.num_slots; j += blockDim.x) {
      const int32_t c = shared_hist[j];
      if (c != 0) atomicAdd(heat_row + j, c);
    }
  }
}

template <typename Id, bool kWeighted>
void launch_kernel(const Id* topk_ids, const RouteTables& tables, int32_t* heat,
                   const int64_t* step, Id* phy_ids, const RouteAndCountParams& p,
                   uint32_t num_pairs, cudaStream_t stream, const PrefillGeometry& geometry = {}) {
  if (num_pairs <= kDecodeMaxPairs) {
    const int threads = static_cast<int>(ceil_div(num_pairs, 32) * 32);
    route_and_count_kernel<Id, kWeighted, false, false>
        <<<1, threads, 0, stream>>>(topk_ids, tables, heat, step, phy_ids, p, num_pairs, false);
    return;
  }
  const bool vectorized = reinterpret_cast<uintptr_t>(topk_ids) % 16 == 0 &&
                          reinterpret_cast<uintptr_t>(phy_ids) % 16 == 0;
  const int64_t max_blocks = static_cast<int64_t>(geometry.blocks_per_sm) * current_sm_count();
  const auto blocks = static_cast<unsigned>(std::max<int64_t>(
      1, std::min(ceil_div(num_pairs, geometry.min_pairs_per_block), max_blocks)));
  const int64_t hist_bytes = static_cast<int64_t>(p.num_slots) * sizeof(int32_t);
  const int64_t table_bytes = static_cast<int64_t>(p.num_experts) * sizeof(int32_t) *
                              (1 + int64_t{p.max_replicas} * (kWeighted ? 2 : 1));
  if (geometry.stage_tables && hist_bytes + table_bytes <= kMaxSharedBytes) {
    const auto bytes = static_cast<size_t>(hist_bytes + table_bytes);
    route_and_count_kernel<Id, kWeighted, true, true><<<blocks, kThreads, bytes, stream>>>(
        topk_ids, tables, heat, step, phy_ids, p, num_pairs, vectorized);
  } else if (hist_bytes <= kMaxSharedBytes) {
    const auto bytes = static_cast<size_t>(hist_bytes);
    route_and_count_kernel<Id, kWeighted, true, false><<<blocks, kThreads, bytes, stream>>>(
        topk_ids, tables, heat, step, phy_ids, p, num_pairs, vectorized);
  } else {
    route_and_count_kernel<Id, kWeighted, false, false><<<blocks, kThreads, 0, stream>>>(
        topk_ids, tables, heat, step, phy_ids, p, num_pairs, vectorized);
  }
}

}  // namespace

template <typename Id>
cudaError_t launch_route_and_count(const Id* topk_ids, const int32_t* log2phy,
                                   const int32_t* logcnt, const float* replica_share, int32_t* heat,
                                   const int64_t* step, Id* phy_ids,
                                   const RouteAndCountParams& params, cudaStream_t stream) {
  const int64_t num_pairs = params.num_tokens * params.top_k;
  if (num_pairs == 0) return cudaSuccess;
  // 32-bit pair indices keep the per-pair division cheap; 2^31 pairs is far beyond a batch.
  if (num_pairs < 0 || num_pairs > INT32_MAX || params.ring_size < 1 || params.num_slots < 0 ||
      params.max_replicas < 1)
    return cudaErrorInvalidValue;
  const RouteTables tables{log2phy, logcnt, replica_share};
  const auto n = static_cast<uint32_t>(num_pairs);
  if (replica_share != nullptr) {
    launch_kernel<Id, true>(topk_ids, tables, heat, step, phy_ids, params, n, stream);
  } else {
    launch_kernel<Id, false>(topk_ids, tables, heat, step, phy_ids, params, n, stream);
  }
  return cudaGetLastError();
}

template cudaError_t launch_route_and_count<int32_t>(const int32_t*, const int32_t*, const int32_t*,
                                                     const float*, int32_t*, const int64_t*,
                                                     int32_t*, const RouteAndCountParams&,
                                                     cudaStream_t);
template cudaError_t launch_route_and_count<int64_t>(const int64_t*, const int32_t*, const int32_t*,
                                                     const float*, int32_t*, const int64_t*,
                                                     int64_t*, const RouteAndCountParams&,
                                                     cudaStream_t);

}  // namespace eplb_rt::cuda
