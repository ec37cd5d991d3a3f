// route_and_count on the vector cores: logical top-k ids -> physical ids, and per-slot token
// counts added into the heat ring row of the current step, in one pass.
//
// Tiling (eplb_tiling.h, ComputeRouteAndCountTiling): the N*K (token, choice) pairs are cut into
// blockDim contiguous ranges of pairsPerCore (a multiple of 8) ids, one per AIV core. Each core
//   Init:    loads this layer's log2phy [E, R], logcnt [E] and replica_share [E, R] into UB once
//            (DataCopyPad in <= 32 KiB chunks: E*R*4 bytes need not be a multiple of 32) and zeroes
//            a [P] int32 histogram in UB. Where log2phy and replica_share do not fit (tablesInUb
//            0: E x R past about 24K entries with shares), only logcnt goes to UB and the scalar
//            unit reads the rows it needs from GM, its DataCache emptied first (a commit
//            rewrites the tables between launches);
//   Process: streams its ids in tiles of tilePairs through double-buffered tiles ordered by event
//            pairs (scalar_tiles.h): the copy-in of tile t+1 and the copy-out of tile t overlap
//            the scalar loop of tile t, which maps each id with the replica rule
//            (csrc/common/replica_rule.h, the one C++ copy), counts it in the UB histogram and
//            writes the physical id;
//   finally  adds its histogram into heat[step mod H, :] with SetAtomicAdd<int32_t> and one
//            chunked DataCopyPad of P*4 bytes (int32: the hardware has no 64-bit atomic add), so
//            the partial counts of all cores combine in GM without a second pass or a SyncAll.
// Padding (-1) and, since device backends do not synchronise to check values, ids outside
// [0, E), replica counts outside [1, R] and slots outside [0, P) are skipped: phy id -1, not
// counted. The step counter is read from GM, so the kernel is graph-capture safe.
//
// UB: tables 4*(2*E*R + E + P) bytes (E=256, R=8, P=320: 18 KiB; 4*(E + P) with the tables in
// GM) + 2*2*tilePairs*idBytes (tilePairs 2048, int64: 64 KiB), within the SoC's UB
// (eplb_platform.h); the tiling refuses only a logcnt and histogram that do not fit. Cycle estimates per tile, and why the map stays on the scalar unit
// (no vector Gather path), are in BENCHMARKS.md section 7.
#include "fresh_read.h"
#include "heat_row.h"
#include "kernel_operator.h"
#include "pad_copy.h"
#include "scalar_tiles.h"
#define EPLB_RT_AICORE
#include "replica_rule.h"

using namespace AscendC;

namespace {

// The share row of one expert, in UB or in GM, as replica_rule.h's weighted_replica_at reads it.
struct UbShareRow {
  LocalTensor<float> table;
  uint32_t base;
  __aicore__ inline float operator()(int32_t r) const {
    return table.GetValue(base + static_cast<uint32_t>(r));
  }
};

struct GmShareRow {
  GlobalTensor<float> table;
  uint64_t base;
  __aicore__ inline float operator()(int32_t r) const {
    return table.GetValue(base + static_cast<uint64_t>(r));
  }
};

template <class IdT>
class KernelRouteAndCount {
 public:
  __aicore__ inline KernelRouteAndCount() {}

  __aicore__ inline void Init(GM_ADDR topkIds, GM_ADDR log2phy, GM_ADDR logcnt, GM_ADDR share,
                              GM_ADDR heat, GM_ADDR step, GM_ADDR phyIds, int64_t numTokens,
                              int32_t topK, int32_t numExperts, int32_t maxReplicas,
                              int32_t numSlots, int64_t heatRows, int64_t heatRowStride,
                              int64_t pairsPerCore, uint32_t tilePairs, uint32_t hasShare,
                              uint32_t tablesInUb, uint32_t codeOffset, TPipe* pipe) {
    numTokens_ = numTokens;
    codeOffset_ = codeOffset;
    topK_ = topK;
    numExperts_ = numExperts;
    maxReplicas_ = maxReplicas;
    numSlots_ = numSlots;
    heatRows_ = heatRows;
    heatRowStride_ = heatRowStride;
    tilePairs_ = tilePairs;
    hasShare_ = hasShare != 0;
    tablesInUb_ = tablesInUb != 0;
    const int64_t numPairs = numTokens * topK;
    begin_ = pairsPerCore * GetBlockIdx();
    end_ = begin_ + pairsPerCore < numPairs ? begin_ + pairsPerCore : numPairs;
    if (begin_ >= end_) return;  // an idle core touches nothing

    const uint64_t tableLen = static_cast<uint64_t>(numExperts) * maxReplicas;
    topkIdsGm.SetGlobalBuffer((__gm__ IdT*)topkIds, numPairs);
    phyIdsGm.SetGlobalBuffer((__gm__ IdT*)phyIds, numPairs);
    log2phyGm.SetGlobalBuffer((__gm__ int32_t*)log2phy, tableLen);
    logcntGm.SetGlobalBuffer((__gm__ int32_t*)logcnt, numExperts);
    heatGm.SetGlobalBuffer((__gm__ int32_t*)heat, (heatRows - 1) * heatRowStride + numSlots);
    stepGm.SetGlobalBuffer((__gm__ int64_t*)step, 1);

    if (hasShare_) shareGm.SetGlobalBuffer((__gm__ float*)share, tableLen);
    pipe_ = pipe;
    tiles.Init(pipe, tilePairs);
    pipe->InitBuffer(logcntBuf, numExperts * sizeof(int32_t));
    pipe->InitBuffer(histBuf, numSlots * sizeof(int32_t));
    logcntLocal = logcntBuf.Get<int32_t>();
    histLocal = histBuf.Get<int32_t>();
    eplb_ascendc::PadCopyIn(logcntLocal, logcntGm, static_cast<uint64_t>(numExperts));
    if (tablesInUb_) {
      pipe->InitBuffer(log2phyBuf, tableLen * sizeof(int32_t));
      log2phyLocal = log2phyBuf.Get<int32_t>();
      eplb_ascendc::PadCopyIn(log2phyLocal, log2phyGm, tableLen);
      if (hasShare_) {
        pipe->InitBuffer(shareBuf, tableLen * sizeof(float));
        shareLocal = shareBuf.Get<float>();
        eplb_ascendc::PadCopyIn(shareLocal, shareGm, tableLen);
      }
    } else {
      // The rows are read below through the DataCache, which may hold lines of the tables a
      // commit has since rewritten: empty it once per launch.
      DataCacheCleanAndInvalid<int32_t, CacheLine::ENTIRE_DATA_CACHE, DcciDst::CACHELINE_OUT>(
          log2phyGm);
    }
    Duplicate(histLocal, 0, numSlots);
    // Once per launch, not per tile: the scalar unit reads the tables and the histogram below.
    PipeBarrier<PIPE_ALL>();
    step_ = eplb_ascendc::ReadFresh(stepGm, 0);
    heatRowOffset_ = eplb_ascendc::HeatRowOffset(step_, heatRows, heatRowStride);
  }

  __aicore__ inline void Process() {
    if (begin_ >= end_) return;
    tiles.Run(*this, topkIdsGm, phyIdsGm, begin_, end_, tilePairs_, false, pipe_);
    FlushHistogram();
  }

  // The scalar loop of one tile: pairs [start, start + len) of the batch.
  __aicore__ inline void Compute(const LocalTensor<IdT>& idsLocal, const LocalTensor<IdT>& phyLocal,
                                 int64_t start, uint32_t len) {
    // (token n, choice k) of the tile's first pair; stepped without a 64-bit division per pair.
    int64_t n = start / topK_;
    int32_t k = static_cast<int32_t>(start - n * topK_);
    for (uint32_t i = 0; i < len; ++i) {
      phyLocal.SetValue(
          i, static_cast<IdT>(MapPair(static_cast<int64_t>(idsLocal.GetValue(i)), n, k)));
      if (++k == topK_) {
        k = 0;
        ++n;
      }
    }
  }

 private:
  // Physical slot of logical id `e` chosen by token n, choice k, counted in the histogram; -1 if
  // skipped.
  __aicore__ inline int32_t MapPair(int64_t e, int64_t n, int32_t k) {
    if (e < 0 || e >= numExperts_) return -1;
    const int32_t cnt = logcntLocal.GetValue(static_cast<uint32_t>(e));
    if (cnt < 1 || cnt > maxReplicas_) return -1;
    const uint32_t code = eplb_rt::position_code(step_, numTokens_, n, k, codeOffset_);
    const uint64_t rowBase = static_cast<uint64_t>(e) * static_cast<uint64_t>(maxReplicas_);
    int32_t r = 0;
    if (!hasShare_) {
      r = eplb_rt::uniform_replica(code, cnt);
    } else if (tablesInUb_) {
      const UbShareRow row{shareLocal, static_cast<uint32_t>(rowBase)};
      r = eplb_rt::weighted_replica_at(code, row, cnt);
    } else {
      r = eplb_rt::weighted_replica_at(code, GmShareRow{shareGm, rowBase}, cnt);
    }
    const uint64_t at = rowBase + static_cast<uint64_t>(r);
    const int32_t p = tablesInUb_ ? log2phyLocal.GetValue(static_cast<uint32_t>(at))
                                  : log2phyGm.GetValue(at);
    if (p < 0 || p >= numSlots_) return -1;
    histLocal.SetValue(static_cast<uint32_t>(p), histLocal.GetValue(static_cast<uint32_t>(p)) + 1);
    return p;
  }

  __aicore__ inline void FlushHistogram() {
    PipeBarrier<PIPE_ALL>();  // once per launch: MTE3 reads what the scalar unit wrote
    SetAtomicAdd<int32_t>();
    eplb_ascendc::PadCopyOut(heatGm[heatRowOffset_], histLocal, static_cast<uint64_t>(numSlots_));
    SetAtomicNone();
  }

  TPipe* pipe_ = nullptr;
  eplb_ascendc::ScalarTiles<IdT, IdT> tiles;
  TBuf<TPosition::VECCALC> log2phyBuf, logcntBuf, shareBuf, histBuf;
  GlobalTensor<IdT> topkIdsGm, phyIdsGm;
  GlobalTensor<int32_t> log2phyGm, logcntGm, heatGm;
  GlobalTensor<float> shareGm;
  GlobalTensor<int64_t> stepGm;
  LocalTensor<int32_t> log2phyLocal, logcntLocal, histLocal;
  LocalTensor<float> shareLocal;
  int64_t numTokens_ = 0, begin_ = 0, end_ = 0, heatRows_ = 1, heatRowStride_ = 0,
          heatRowOffset_ = 0;
  int64_t step_ = 0;
  int32_t topK_ = 1, numExperts_ = 0, maxReplicas_ = 1, numSlots_ = 0;
  uint32_t tilePairs_ = 8;
  uint32_t codeOffset_ = 0;
  bool hasShare_ = false;
  bool tablesInUb_ = true;
};

template <class IdT>
__aicore__ inline void RunRouteAndCount(GM_ADDR topkIds, GM_ADDR log2phy, GM_ADDR logcnt,
                                        GM_ADDR share, GM_ADDR heat, GM_ADDR step, GM_ADDR phyIds,
                                        int64_t numTokens, int32_t topK, int32_t numExperts,
                                        int32_t maxReplicas, int32_t numSlots, int64_t heatRows,
                                        int64_t heatRowStride, int64_t pairsPerCore,
                                        uint32_t tilePairs, uint32_t hasShare, uint32_t tablesInUb,
                                        uint32_t codeOffset) {
  TPipe pipe;
  KernelRouteAndCount<IdT> op;
  op.Init(topkIds, log2phy, logcnt, share, heat, step, phyIds, numTokens, topK, numExperts,
          maxReplicas, numSlots, heatRows, heatRowStride, pairsPerCore, tilePairs, hasShare,
          tablesInUb, codeOffset, &pipe);
  op.Process();
}

}  // namespace

// One entry for both id widths: idBytes picks the instantiation on the core.
extern "C" __global__ __aicore__ void eplb_route_and_count_kernel(
    GM_ADDR topkIds, GM_ADDR log2phy, GM_ADDR logcnt, GM_ADDR share, GM_ADDR heat, GM_ADDR step,
    GM_ADDR phyIds, int64_t numTokens, int32_t topK, int32_t numExperts, int32_t maxReplicas,
    int32_t numSlots, int64_t heatRows, int64_t heatRowStride, int64_t pairsPerCore,
    uint32_t tilePairs, uint32_t hasShare, uint32_t tablesInUb, uint32_t codeOffset,
    uint32_t idBytes) {
  KERNEL_TASK_TYPE_DEFAULT(KERNEL_TYPE_AIV_ONLY);  // blockDim counts vector cores
  if (idBytes == 8) {
    RunRouteAndCount<int64_t>(topkIds, log2phy, logcnt, share, heat, step, phyIds, numTokens, topK,
                              numExperts, maxReplicas, numSlots, heatRows, heatRowStride,
                              pairsPerCore, tilePairs, hasShare, tablesInUb, codeOffset);
  } else {
    RunRouteAndCount<int32_t>(topkIds, log2phy, logcnt, share, heat, step, phyIds, numTokens, topK,
                              numExperts, maxReplicas, numSlots, heatRows, heatRowStride,
                              pairsPerCore, tilePairs, hasShare, tablesInUb, codeOffset);
  }
}
