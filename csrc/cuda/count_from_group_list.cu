// count_from_group_list on CUDA: a dispatch kernel's per-local-expert token counts (plain, or
// inclusive prefix sums) added into heat[row, slot_offset + i]. One thread per local slot; the
// ring row comes from the device step counter. int32 atomics, because route_and_count or another
// stream may add into the same heat row.
#include "../common/group_count.h"
#include "device_common.cuh"
#include "launchers.h"

namespace eplb_rt::cuda {
namespace {

constexpr int kThreads = 256;

template <typename G>
__global__ void count_from_group_list_kernel(const G* __restrict__ group_list,
                                             int32_t* __restrict__ heat,
                                             const int64_t* __restrict__ step,
                                             CountFromGroupListParams p) {
  const int32_t i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= p.num_local) return;
  const int64_t previous =
      (p.cumulative && i > 0) ? static_cast<int64_t>(group_list[i - 1]) : int64_t{0};
  const int64_t count = group_count(static_cast<int64_t>(group_list[i]), previous);
  // A bad count cannot be reported without a synchronisation (see launchers.h): a negative one
  // is skipped, one past int32 added as INT32_MAX (the int32 counter it lands in still wraps
  // past that: such a count is malformed, as the CPU's refusal says). Zero needs no atomic.
  if (count <= 0) return;
  int32_t* heat_row = heat + ring_row(*step, p.ring_size) * p.heat_row_stride;
  atomicAdd(heat_row + p.slot_offset + i,
            static_cast<int32_t>(count < INT32_MAX ? count : INT32_MAX));
}

}  // namespace

template <typename G>
cudaError_t launch_count_from_group_list(const G* group_list, int32_t* heat, const int64_t* step,
                                         const CountFromGroupListParams& params,
                                         cudaStream_t stream) {
  if (params.num_local == 0) return cudaSuccess;
  if (params.num_local < 0 || params.slot_offset < 0 || params.ring_size < 1)
    return cudaErrorInvalidValue;
  const auto blocks = static_cast<unsigned>(ceil_div(params.num_local, kThreads));
  count_from_group_list_kernel<G><<<blocks, kThreads, 0, stream>>>(group_list, heat, step, params);
  return cudaGetLastError();
}

template cudaError_t launch_count_from_group_list<int32_t>(const int32_t*, int32_t*, const int64_t*,
                                                           const CountFromGroupListParams&,
                                                           cudaStream_t);
template cudaError_t launch_count_from_group_list<int64_t>(const int64_t*, int32_t*, const int64_t*,
                                                           const CountFromGroupListParams&,
                                                           cudaStream_t);

}  // namespace eplb_rt::cuda
