// update_expert_map on CUDA: overwrite a layer's log2phy, logcnt, replica_share and expert_map in
// place (same storage, so captured graphs that read them stay valid) with ONE launch: grid.y picks
// the table, grid.x strides over its 32-bit elements. Shares are copied bitwise as 32-bit words.
#include "device_common.cuh"
#include "launchers.h"

namespace eplb_rt::cuda {
namespace {

constexpr int kThreads = 256;
constexpr int64_t kMaxBlocksPerTable = 1024;

struct MapTables {
  TableCopy table[kNumMapTables];
};

__global__ void __launch_bounds__(kThreads)
    update_expert_map_kernel(const __grid_constant__ MapTables tables) {
  const TableCopy& t = tables.table[blockIdx.y];
  uint32_t* dst = static_cast<uint32_t*>(t.dst);
  const uint32_t* src = static_cast<const uint32_t*>(t.src);
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t j = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; j < t.count;
       j += stride)
    dst[j] = src[j];
}

}  // namespace

cudaError_t launch_update_expert_map(const TableCopy (&tables)[kNumMapTables],
                                     cudaStream_t stream) {
  MapTables batch{};
  int64_t max_count = 0;
  for (int i = 0; i < kNumMapTables; ++i) {
    if (tables[i].count < 0) return cudaErrorInvalidValue;
    batch.table[i] = tables[i];
    if (tables[i].count > max_count) max_count = tables[i].count;
  }
  if (max_count == 0) return cudaSuccess;
  int64_t blocks = ceil_div(max_count, kThreads);
  if (blocks > kMaxBlocksPerTable) blocks = kMaxBlocksPerTable;
  const dim3 grid(static_cast<unsigned>(blocks), kNumMapTables);
  update_expert_map_kernel<<<grid, kThreads, 0, stream>>>(batch);
  return cudaGetLastError();
}

}  // namespace eplb_rt::cuda
