// update_expert_weights_ on the vector cores, one weight tensor of a layer per launch:
// weight[slots[i]] = staged[i] for i < M, rows of rowBytes bytes (any dtype: copied as bytes).
//
// Tiling (eplb_tiling.h, ComputeCopyRowsTiling): each row is cut into tilesPerRow tiles of
// tileBytes (<= 32 KiB, a multiple of 32); the M * tilesPerRow (row, tile) units are split into
// blockDim contiguous ranges of unitsPerCore, so one big expert slice is spread over all cores and
// many small rows (scales) are too. Each core looks up the destination slot of a row once
// (scalar GM read of slots[i], past the DataCache: each commit writes new ones) and moves its
// tiles GM -> UB -> GM through a double-buffered TQueBind (tile_copy.h): the MTE2 read of tile
// j+1 overlaps the MTE3 write of tile j. Whole
// tiles of 32-byte-aligned rows use DataCopy; tails and unaligned rows (e.g. a 28-byte row of
// seven float32 scales) use DataCopyPad. A bad plan (the device backend cannot check values
// without synchronising) leaves a defined result: a slot outside [0, S) is skipped, leaving that
// row unchanged, and of rows given the same slot only the last is copied (copied together, their
// tiles, spread over cores, would mix).
//
// UB: 2 * tileBytes (64 KiB). Expected bandwidth (estimate, no NPU here): the copy reads and
// writes each byte once, so it is bound by HBM at about half the ~1.6 TB/s of an Atlas A2 per
// direction pair, i.e. ~0.7-0.8 TB/s of payload with >= 20 cores busy: a 44 MiB DeepSeek-V3
// int8 expert (w13 + w2 + scales) in ~60 us; below ~1 MiB per launch the ~5 us launch dominates.
#include "fresh_read.h"
#include "kernel_operator.h"
#include "tile_copy.h"

using namespace AscendC;

namespace {

template <class SlotT>
class KernelUpdateExpertWeights {
 public:
  __aicore__ inline KernelUpdateExpertWeights() {}

  __aicore__ inline void Init(GM_ADDR weight, GM_ADDR staged, GM_ADDR slots, int64_t rowBytes,
                              int64_t numRows, int64_t numSlots, int64_t tilesPerRow,
                              int64_t unitsPerCore, uint32_t tileBytes, uint32_t alignedRows,
                              TPipe* pipe) {
    rowBytes_ = rowBytes;
    numRows_ = numRows;
    numSlots_ = numSlots;
    tilesPerRow_ = tilesPerRow;
    tileBytes_ = tileBytes;
    aligned_ = alignedRows != 0;
    const int64_t units = numRows * tilesPerRow;
    begin_ = unitsPerCore * GetBlockIdx();
    end_ = begin_ + unitsPerCore < units ? begin_ + unitsPerCore : units;
    if (begin_ >= end_) return;
    weightGm.SetGlobalBuffer((__gm__ uint8_t*)weight, numSlots * rowBytes);
    stagedGm.SetGlobalBuffer((__gm__ uint8_t*)staged, numRows * rowBytes);
    slotsGm.SetGlobalBuffer((__gm__ SlotT*)slots, numRows);
    tileCopy.Init(pipe, tileBytes);
  }

  __aicore__ inline void Process() {
    int64_t row = -1;
    int64_t slot = -1;
    for (int64_t unit = begin_; unit < end_; ++unit) {
      const int64_t r = unit / tilesPerRow_;
      if (r != row) {
        row = r;
        slot = static_cast<int64_t>(eplb_ascendc::ReadFresh(slotsGm, row));  // new each commit
        if (GivenLater(row, slot)) slot = -1;
      }
      if (slot < 0 || slot >= numSlots_) continue;
      const int64_t off = (unit - row * tilesPerRow_) * tileBytes_;
      const uint32_t len =
          static_cast<uint32_t>(rowBytes_ - off < tileBytes_ ? rowBytes_ - off : tileBytes_);
      tileCopy.CopyTile(weightGm[slot * rowBytes_ + off], stagedGm[row * rowBytes_ + off], len,
                        aligned_);
    }
  }

 private:
  // Whether a row after `row` is copied to `slot` too (then that one wins). M is a layer's moves
  // on this rank: a few scalar reads, once per row a core starts.
  __aicore__ inline bool GivenLater(int64_t row, int64_t slot) {
    for (int64_t later = row + 1; later < numRows_; ++later) {
      if (static_cast<int64_t>(eplb_ascendc::ReadFresh(slotsGm, later)) == slot) return true;
    }
    return false;
  }

  eplb_ascendc::TileCopy tileCopy;
  GlobalTensor<uint8_t> weightGm, stagedGm;
  GlobalTensor<SlotT> slotsGm;
  int64_t rowBytes_ = 0, numRows_ = 0, numSlots_ = 0, tilesPerRow_ = 1, begin_ = 0, end_ = 0;
  uint32_t tileBytes_ = 32;
  bool aligned_ = false;
};

template <class SlotT>
__aicore__ inline void RunUpdateExpertWeights(GM_ADDR weight, GM_ADDR staged, GM_ADDR slots,
                                              int64_t rowBytes, int64_t numRows, int64_t numSlots,
                                              int64_t tilesPerRow, int64_t unitsPerCore,
                                              uint32_t tileBytes, uint32_t alignedRows) {
  TPipe pipe;
  KernelUpdateExpertWeights<SlotT> op;
  op.Init(weight, staged, slots, rowBytes, numRows, numSlots, tilesPerRow, unitsPerCore, tileBytes,
          alignedRows, &pipe);
  op.Process();
}

}  // namespace

// One entry for both slot widths: slotBytes picks the instantiation on the core.
extern "C" __global__ __aicore__ void eplb_update_expert_weights_kernel(
    GM_ADDR weight, GM_ADDR staged, GM_ADDR slots, int64_t rowBytes, int64_t numRows,
    int64_t numSlots, int64_t tilesPerRow, int64_t unitsPerCore, uint32_t tileBytes,
    uint32_t alignedRows, uint32_t slotBytes) {
  KERNEL_TASK_TYPE_DEFAULT(KERNEL_TYPE_AIV_ONLY);  // blockDim counts vector cores
  if (slotBytes == 8) {
    RunUpdateExpertWeights<int64_t>(weight, staged, slots, rowBytes, numRows, numSlots, tilesPerRow,
                                    unitsPerCore, tileBytes, alignedRows);
  } else {
    RunUpdateExpertWeights<int32_t>(weight, staged, slots, rowBytes, numRows, numSlots, tilesPerRow,
                                    unitsPerCore, tileBytes, alignedRows);
  }
}
