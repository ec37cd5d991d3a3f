// count_from_group_list on the vector cores: receiver-side token counts per local slot (a dispatch
// kernel's group_list, plain or inclusive prefix sums) added into heat[step mod H, offset + i].
//
// Tiling (eplb_tiling.h, ComputeCountFromGroupListTiling): S_local entries in contiguous ranges of
// groupsPerCore (at least 1024, so the usual S_local <= 64 runs on one core: a second core costs
// more launch time than it saves). Each core streams its range in tiles of tileGroups through
// double-buffered tiles ordered by event pairs (scalar_tiles.h; DataCopyPad: S_local * 4 or 8
// bytes need not be a multiple of 32), turns values into int32 counts on the scalar unit
// (cumulative: count_i = gl[i] - gl[i-1], the entry before the core's range read once from GM),
// and adds the counts into the heat row with SetAtomicAdd<int32_t> + DataCopyPad: the ranges of
// the cores are disjoint, the atomic add is what makes `+=` into heat safe without reading it.
// Device backends never synchronise to check values: a negative count (a malformed group_list)
// is added as 0 instead of lowering heat, one past int32 as INT32_MAX (the int32 counter it lands
// in still wraps past that); the CPU backend rejects both.
//
// UB: 2 * tileGroups * (elemBytes + 4) bytes (<= 48 KiB). Expected time (estimate, no NPU here):
// one launch (~5 us) plus ~20 cycles per entry on the scalar unit: S_local = 64 is launch-bound.
#include "fresh_read.h"
#include "heat_row.h"
#include "kernel_operator.h"
#include "scalar_tiles.h"
#define EPLB_RT_AICORE
#include "group_count.h"

using namespace AscendC;

namespace {

template <class T>
class KernelCountFromGroupList {
 public:
  __aicore__ inline KernelCountFromGroupList() {}

  __aicore__ inline void Init(GM_ADDR groupList, GM_ADDR heat, GM_ADDR step, int64_t numGroups,
                              int64_t groupsPerCore, int64_t slotOffset, int64_t numSlots,
                              int64_t heatRows, int64_t heatRowStride, uint32_t tileGroups,
                              uint32_t cumulative, TPipe* pipe) {
    tileGroups_ = tileGroups;
    cumulative_ = cumulative != 0;
    begin_ = groupsPerCore * GetBlockIdx();
    end_ = begin_ + groupsPerCore < numGroups ? begin_ + groupsPerCore : numGroups;
    if (begin_ >= end_) return;
    groupListGm.SetGlobalBuffer((__gm__ T*)groupList, numGroups);
    heatGm.SetGlobalBuffer((__gm__ int32_t*)heat, (heatRows - 1) * heatRowStride + numSlots);
    stepGm.SetGlobalBuffer((__gm__ int64_t*)step, 1);
    pipe_ = pipe;
    tiles.Init(pipe, tileGroups);
    heatBase_ =
        eplb_ascendc::HeatRowOffset(eplb_ascendc::ReadFresh(stepGm, 0), heatRows, heatRowStride) +
        slotOffset;
    previous_ = (cumulative_ && begin_ > 0)
                    ? static_cast<int64_t>(eplb_ascendc::ReadFresh(groupListGm, begin_ - 1))
                    : 0;
  }

  __aicore__ inline void Process() {
    if (begin_ >= end_) return;
    tiles.Run(*this, groupListGm, heatGm[heatBase_], begin_, end_, tileGroups_, true, pipe_);
  }

  // The scalar loop of one tile: entries [start, start + len) of group_list, in order.
  __aicore__ inline void Compute(const LocalTensor<T>& groupsLocal,
                                 const LocalTensor<int32_t>& countsLocal, int64_t start,
                                 uint32_t len) {
    (void)start;
    for (uint32_t i = 0; i < len; ++i) {
      const int64_t value = static_cast<int64_t>(groupsLocal.GetValue(i));
      const int64_t count = eplb_rt::group_count(value, cumulative_ ? previous_ : 0);
      previous_ = value;
      // Clamped into int32's range: a count past it (a malformed list) must not wrap negative.
      const int64_t top = eplb_rt::kMaxGroupCount;
      countsLocal.SetValue(i, static_cast<int32_t>(count <= 0 ? 0 : count < top ? count : top));
    }
  }

 private:
  TPipe* pipe_ = nullptr;
  eplb_ascendc::ScalarTiles<T, int32_t> tiles;
  GlobalTensor<T> groupListGm;
  GlobalTensor<int32_t> heatGm;
  GlobalTensor<int64_t> stepGm;
  int64_t begin_ = 0, end_ = 0, heatBase_ = 0, previous_ = 0;
  uint32_t tileGroups_ = 8;
  bool cumulative_ = false;
};

template <class T>
__aicore__ inline void RunCountFromGroupList(GM_ADDR groupList, GM_ADDR heat, GM_ADDR step,
                                             int64_t numGroups, int64_t groupsPerCore,
                                             int64_t slotOffset, int64_t numSlots, int64_t heatRows,
                                             int64_t heatRowStride, uint32_t tileGroups,
                                             uint32_t cumulative) {
  TPipe pipe;
  KernelCountFromGroupList<T> op;
  op.Init(groupList, heat, step, numGroups, groupsPerCore, slotOffset, numSlots, heatRows,
          heatRowStride, tileGroups, cumulative, &pipe);
  op.Process();
}

}  // namespace

// One entry for both group_list widths: elemBytes picks the instantiation on the core.
extern "C" __global__ __aicore__ void eplb_count_from_group_list_kernel(
    GM_ADDR groupList, GM_ADDR heat, GM_ADDR step, int64_t numGroups, int64_t groupsPerCore,
    int64_t slotOffset, int64_t numSlots, int64_t heatRows, int64_t heatRowStride,
    uint32_t tileGroups, uint32_t cumulative, uint32_t elemBytes) {
  KERNEL_TASK_TYPE_DEFAULT(KERNEL_TYPE_AIV_ONLY);  // blockDim counts vector cores
  if (elemBytes == 8) {
    RunCountFromGroupList<int64_t>(groupList, heat, step, numGroups, groupsPerCore, slotOffset,
                                   numSlots, heatRows, heatRowStride, tileGroups, cumulative);
  } else {
    RunCountFromGroupList<int32_t>(groupList, heat, step, numGroups, groupsPerCore, slotOffset,
                                   numSlots, heatRows, heatRowStride, tileGroups, cumulative);
  }
}
