// update_expert_map_ on the vector cores: overwrite a layer's routing tables in place
// (log2phy [E, R], logcnt [E], and replica_share [E, R] / expert_map [E] when given), same
// storage, so captured graphs that read them stay valid.
//
// Tiling (eplb_tiling.h, ComputeCopyTablesTiling): one vector core per table (2 or 4 cores); each
// copies its table GM -> UB -> GM in tiles of up to 32 KiB through the double-buffered
// TQueBind of tile_copy.h, DataCopyPad for sizes that are not a multiple of 32 bytes (E*4 bytes
// usually is not). The tables are small (E=256, R=8: 8 KiB), so the launch (~5 us, estimate, no
// NPU here) is the whole cost; the data moves in well under a microsecond.
#include "kernel_operator.h"
#include "tile_copy.h"

using namespace AscendC;

namespace {

class KernelUpdateExpertMap {
 public:
  __aicore__ inline KernelUpdateExpertMap() {}

  // This core's table: dst <- src, `bytes` long.
  __aicore__ inline void Init(GM_ADDR dst, GM_ADDR src, int64_t bytes, uint32_t tileBytes,
                              TPipe* pipe) {
    bytes_ = bytes;
    if (bytes_ <= 0) return;
    // Plain DataCopy only when both tables start on a 32-byte boundary (a view may not).
    aligned_ = (reinterpret_cast<uint64_t>(dst) | reinterpret_cast<uint64_t>(src)) % 32 == 0;
    dstGm.SetGlobalBuffer((__gm__ uint8_t*)dst, bytes);
    srcGm.SetGlobalBuffer((__gm__ uint8_t*)src, bytes);
    tileCopy.Init(pipe, tileBytes);
  }

  __aicore__ inline void Process() {
    if (bytes_ <= 0) return;
    tileCopy.CopyBytes(dstGm, srcGm, static_cast<uint64_t>(bytes_), aligned_);
  }

 private:
  eplb_ascendc::TileCopy tileCopy;
  GlobalTensor<uint8_t> dstGm, srcGm;
  int64_t bytes_ = 0;
  bool aligned_ = false;
};

}  // namespace

extern "C" __global__ __aicore__ void eplb_update_expert_map_kernel(
    GM_ADDR dst0, GM_ADDR src0, int64_t bytes0, GM_ADDR dst1, GM_ADDR src1, int64_t bytes1,
    GM_ADDR dst2, GM_ADDR src2, int64_t bytes2, GM_ADDR dst3, GM_ADDR src3, int64_t bytes3,
    uint32_t tileBytes) {
  KERNEL_TASK_TYPE_DEFAULT(KERNEL_TYPE_AIV_ONLY);  // blockDim counts vector cores
  const int64_t idx = GetBlockIdx();
  GM_ADDR dst = idx == 0 ? dst0 : idx == 1 ? dst1 : idx == 2 ? dst2 : dst3;
  GM_ADDR src = idx == 0 ? src0 : idx == 1 ? src1 : idx == 2 ? src2 : src3;
  const int64_t bytes = idx == 0 ? bytes0 : idx == 1 ? bytes1 : idx == 2 ? bytes2 : bytes3;
  TPipe pipe;
  KernelUpdateExpertMap op;
  op.Init(dst, src, bytes, tileBytes, &pipe);
  op.Process();
}
