// update_expert_weights on CUDA: weights[t][slots[i]] = staged[t][i] for every tensor t of a layer
// (w13, w2, scales, biases, any dtype) in ONE launch: grid.z = tensor, grid.y = move, grid.x =
// blocks sharing one expert's bytes. The descriptors ride in the kernel parameters, so nothing is
// allocated or copied from the host, and the launch can be captured in a graph.
//
// Copies move 16-byte words when source and destination are 16-byte aligned (4-byte words when
// only that holds, bytes otherwise) and finish with a byte tail. Loads and stores are streaming
// (evict-first): the expert weights are touched once here and must not push the forward pass's
// working set out of L2 while the migration overlaps it.
#include "device_common.cuh"
#include "launchers.h"

namespace eplb_rt::cuda {
namespace {

constexpr int kThreads = 256;
constexpr int64_t kMaxMovesPerLaunch = 65535;  // grid.y limit
constexpr int kBlocksPerSm = 4;

struct WeightCopyBatch {
  WeightCopyDesc tensor[kMaxWeightTensors];
};

template <typename Word>
__device__ __forceinline__ void copy_bytes(char* dst, const char* src, int64_t bytes, int64_t first,
                                           int64_t stride) {
  const int64_t num_words = bytes / static_cast<int64_t>(sizeof(Word));
  Word* dst_words = reinterpret_cast<Word*>(dst);
  const Word* src_words = reinterpret_cast<const Word*>(src);
  for (int64_t j = first; j < num_words; j += stride) __stcs(dst_words + j, __ldcs(src_words + j));
  for (int64_t j = num_words * static_cast<int64_t>(sizeof(Word)) + first; j < bytes; j += stride)
    dst[j] = src[j];
}

template <typename Slot>
__global__ void __launch_bounds__(kThreads)
    update_expert_weights_kernel(const __grid_constant__ WeightCopyBatch batch,
                                 const Slot* __restrict__ slots, int64_t first_move,
                                 int64_t num_moves) {
  const WeightCopyDesc& desc = batch.tensor[blockIdx.z];
  const int64_t move = first_move + blockIdx.y;
  const int64_t slot = slots[move];
  // Bad slots cannot be reported without a synchronisation: one out of range is skipped, and of
  // moves to the same slot only the last is copied (copied together, their words would mix).
  if (slot < 0 || slot >= desc.num_slots) return;
  for (int64_t later = move + 1; later < num_moves; ++later) {
    if (slots[later] == slot) return;
  }
  char* dst = static_cast<char*>(desc.dst) + slot * desc.bytes_per_slot;
  const char* src = static_cast<const char*>(desc.src) + move * desc.bytes_per_slot;
  const int64_t first = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  const uintptr_t misalignment =
      reinterpret_cast<uintptr_t>(dst) | reinterpret_cast<uintptr_t>(src);
  if (misalignment % 16 == 0) {
    copy_bytes<uint4>(dst, src, desc.bytes_per_slot, first, stride);
  } else if (misalignment % 4 == 0) {
    copy_bytes<unsigned int>(dst, src, desc.bytes_per_slot, first, stride);
  } else {
    copy_bytes<unsigned char>(dst, src, desc.bytes_per_slot, first, stride);
  }
}

}  // namespace

template <typename Slot>
cudaError_t launch_update_expert_weights(const WeightCopyDesc* tensors, int32_t num_tensors,
                                         const Slot* slots, int64_t num_moves,
                                         cudaStream_t stream) {
  if (num_tensors < 0 || num_moves < 0) return cudaErrorInvalidValue;
  if (num_tensors == 0 || num_moves == 0) return cudaSuccess;
  const int64_t target_blocks = static_cast<int64_t>(kBlocksPerSm) * current_sm_count();
  for (int32_t t0 = 0; t0 < num_tensors; t0 += kMaxWeightTensors) {
    const int32_t batch_tensors =
        num_tensors - t0 < kMaxWeightTensors ? num_tensors - t0 : kMaxWeightTensors;
    WeightCopyBatch batch{};
    int64_t max_bytes = 0;
    for (int32_t t = 0; t < batch_tensors; ++t) {
      batch.tensor[t] = tensors[t0 + t];
      if (batch.tensor[t].bytes_per_slot < 0) return cudaErrorInvalidValue;
      if (batch.tensor[t].bytes_per_slot > max_bytes) max_bytes = batch.tensor[t].bytes_per_slot;
    }
    if (max_bytes == 0) continue;
    for (int64_t m0 = 0; m0 < num_moves; m0 += kMaxMovesPerLaunch) {
      const int64_t moves =
          num_moves - m0 < kMaxMovesPerLaunch ? num_moves - m0 : kMaxMovesPerLaunch;
      // Enough blocks in all to fill the device, none with less than one 16-byte word per thread.
      int64_t blocks_per_copy = ceil_div(target_blocks, moves * batch_tensors);
      const int64_t useful = ceil_div(max_bytes, kThreads * 16);
      if (blocks_per_copy > useful) blocks_per_copy = useful;
      const dim3 grid(static_cast<unsigned>(blocks_per_copy), static_cast<unsigned>(moves),
                      static_cast<unsigned>(batch_tensors));
      update_expert_weights_kernel<Slot>
          <<<grid, kThreads, 0, stream>>>(batch, slots, m0, num_moves);
      const cudaError_t status = cudaGetLastError();
      if (status != cudaSuccess) return status;
    }
  }
  return cudaSuccess;
}

template cudaError_t launch_update_expert_weights<int32_t>(const WeightCopyDesc*, int32_t,
                                                           const int32_t*, int64_t, cudaStream_t);
template cudaError_t launch_update_expert_weights<int64_t>(const WeightCopyDesc*, int32_t,
                                                           const int64_t*, int64_t, cudaStream_t);

}  // namespace eplb_rt::cuda
