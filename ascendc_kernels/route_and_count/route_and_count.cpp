// route_and_count on the AI cores: logical top-k ids -> physical ids, and per-slot token counts
// added into the heat ring row of the current step, in one pass.
//
// Tiling (eplb_tiling.h, ComputeRouteAndCountTiling): the N*K (token, choice) pairs are cut into
// blockDim contiguous ranges of pairsPerCore (a multiple of 8) ids, one per AI core. Each core
//   Init:    loads this layer's log2phy [E, R], logcnt [E] and replica_share [E, R] into UB once
//            (DataCopyPad in <= 32 KiB chunks: E*R*4 bytes need not be a multiple of 32) and zeroes
//            a [P] int32 histogram in UB;
//   Process: streams its ids in tiles of tilePairs through a double-buffered VECIN queue,
//            maps each id on the scalar unit with the replica rule (replica_rule_aicore.h, the
//            same arithmetic as csrc/common/replica_rule.h), counts it in the UB histogram, and
//            streams physical ids out through a double-buffered VECOUT queue;
//   finally  adds its histogram into heat[step mod H, :] with SetAtomicAdd<int32_t> and one
//            chunked DataCopyPad of P*4 bytes (int32: the hardware has no 64-bit atomic add), so
//            the partial counts of all cores combine in GM without a second pass or a SyncAll.
// Padding (-1) and, since device backends do not synchronise to check values, ids outside
// [0, E), replica counts outside [1, R] and slots outside [0, P) are skipped: phy id -1, not
// counted. The step counter is read from GM, so the kernel is graph-capture safe.
//
// UB: tables 4*(2*E*R + E + P) bytes (E=256, R=8, P=320: 18 KiB) + 2*2*tilePairs*idBytes
// (tilePairs 2048, int64: 64 KiB); the tiling refuses tables that do not fit.
// Expected time (estimate, not measured: no NPU here): the scalar unit maps roughly one pair per
// 30-60 cycles, so 8192 tokens x top-8 on 40 vector cores (1639 pairs each) is ~30-60 us at
// 1.8 GHz plus ~5 us launch; memory traffic (ids in and out, 2*N*K*idBytes = 1 MiB) is < 1 us of
// HBM time. The scalar map dominates; a vectorised uniform path is the next step if it matters.
#include "eplb_kernels.h"
#include "eplb_launch.h"
#include "heat_row.h"
#include "kernel_operator.h"
#include "pad_copy.h"
#include "replica_rule_aicore.h"

using namespace AscendC;

namespace {

constexpr int32_t kBufferNum = 2;

template <class IdT>
class KernelRouteAndCount {
 public:
  __aicore__ inline KernelRouteAndCount() {}

  __aicore__ inline void Init(GM_ADDR topkIds, GM_ADDR log2phy, GM_ADDR logcnt, GM_ADDR share,
                              GM_ADDR heat, GM_ADDR step, GM_ADDR phyIds, int64_t numTokens,
                              int32_t topK, int32_t numExperts, int32_t maxReplicas,
                              int32_t numSlots, int64_t heatRows, int64_t heatRowStride,
                              int64_t pairsPerCore, uint32_t tilePairs, uint32_t hasShare,
                              TPipe* pipe) {
    numTokens_ = numTokens;
    topK_ = topK;
    numExperts_ = numExperts;
    maxReplicas_ = maxReplicas;
    numSlots_ = numSlots;
    heatRows_ = heatRows;
    heatRowStride_ = heatRowStride;
    tilePairs_ = tilePairs;
    hasShare_ = hasShare != 0;
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

    pipe->InitBuffer(inQueueIds, kBufferNum, tilePairs * sizeof(IdT));
    pipe->InitBuffer(outQueuePhy, kBufferNum, tilePairs * sizeof(IdT));
    pipe->InitBuffer(log2phyBuf, tableLen * sizeof(int32_t));
    pipe->InitBuffer(logcntBuf, numExperts * sizeof(int32_t));
    pipe->InitBuffer(histBuf, numSlots * sizeof(int32_t));
    log2phyLocal = log2phyBuf.Get<int32_t>();
    logcntLocal = logcntBuf.Get<int32_t>();
    histLocal = histBuf.Get<int32_t>();
    eplb_ascendc::PadCopyIn(log2phyLocal, log2phyGm, tableLen);
    eplb_ascendc::PadCopyIn(logcntLocal, logcntGm, static_cast<uint64_t>(numExperts));
    if (hasShare_) {
      shareGm.SetGlobalBuffer((__gm__ float*)share, tableLen);
      pipe->InitBuffer(shareBuf, tableLen * sizeof(float));
      shareLocal = shareBuf.Get<float>();
      eplb_ascendc::PadCopyIn(shareLocal, shareGm, tableLen);
    }
    Duplicate(histLocal, 0, numSlots);
    // The scalar unit reads the tables and the histogram below: wait for MTE2 and V.
    PipeBarrier<PIPE_ALL>();
    step_ = stepGm.GetValue(0);
    heatRowOffset_ = eplb_ascendc::HeatRowOffset(step_, heatRows, heatRowStride);
  }

  __aicore__ inline void Process() {
    if (begin_ >= end_) return;
    const int64_t count = end_ - begin_;
    const int64_t tiles = (count + tilePairs_ - 1) / tilePairs_;
    for (int64_t t = 0; t < tiles; ++t) {
      const int64_t start = begin_ + t * tilePairs_;
      const uint32_t len =
          static_cast<uint32_t>(end_ - start < tilePairs_ ? end_ - start : tilePairs_);
      CopyIn(start, len);
      Compute(start, len);
      CopyOut(start, len);
    }
    FlushHistogram();
  }

 private:
  __aicore__ inline void CopyIn(int64_t start, uint32_t len) {
    LocalTensor<IdT> idsLocal = inQueueIds.AllocTensor<IdT>();
    DataCopyPad(idsLocal, topkIdsGm[start], {1, static_cast<uint32_t>(len * sizeof(IdT)), 0, 0, 0},
                {false, 0, 0, 0});
    inQueueIds.EnQue(idsLocal);
  }

  __aicore__ inline void Compute(int64_t start, uint32_t len) {
    LocalTensor<IdT> idsLocal = inQueueIds.DeQue<IdT>();
    LocalTensor<IdT> phyLocal = outQueuePhy.AllocTensor<IdT>();
    PipeBarrier<PIPE_ALL>();  // scalar reads of a tile written by MTE2
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
    PipeBarrier<PIPE_ALL>();  // MTE3 reads what the scalar unit wrote
    outQueuePhy.EnQue(phyLocal);
    inQueueIds.FreeTensor(idsLocal);
  }

  __aicore__ inline void CopyOut(int64_t start, uint32_t len) {
    LocalTensor<IdT> phyLocal = outQueuePhy.DeQue<IdT>();
    DataCopyPad(phyIdsGm[start], phyLocal, {1, static_cast<uint32_t>(len * sizeof(IdT)), 0, 0, 0});
    outQueuePhy.FreeTensor(phyLocal);
  }

  // Physical slot of logical id `e` chosen by token n, choice k, counted in the histogram; -1 if
  // skipped.
  __aicore__ inline int32_t MapPair(int64_t e, int64_t n, int32_t k) {
    if (e < 0 || e >= numExperts_) return -1;
    const int32_t cnt = logcntLocal.GetValue(static_cast<uint32_t>(e));
    if (cnt < 1 || cnt > maxReplicas_) return -1;
    const uint32_t code = eplb_ascendc::PositionCode(step_, numTokens_, n, k);
    const uint32_t rowBase = static_cast<uint32_t>(e * maxReplicas_);
    const int32_t r = hasShare_ ? eplb_ascendc::WeightedReplica(code, shareLocal, rowBase, cnt)
                                : eplb_ascendc::UniformReplica(code, cnt);
    const int32_t p = log2phyLocal.GetValue(rowBase + static_cast<uint32_t>(r));
    if (p < 0 || p >= numSlots_) return -1;
    histLocal.SetValue(static_cast<uint32_t>(p), histLocal.GetValue(static_cast<uint32_t>(p)) + 1);
    return p;
  }

  __aicore__ inline void FlushHistogram() {
    PipeBarrier<PIPE_ALL>();  // MTE3 reads what the scalar unit wrote
    SetAtomicAdd<int32_t>();
    eplb_ascendc::PadCopyOut(heatGm[heatRowOffset_], histLocal, static_cast<uint64_t>(numSlots_));
    SetAtomicNone();
  }

  TQue<TPosition::VECIN, 1> inQueueIds;
  TQue<TPosition::VECOUT, 1> outQueuePhy;
  // Tables arrive from GM (VECIN); the histogram leaves for GM (VECOUT).
  TBuf<TPosition::VECIN> log2phyBuf, logcntBuf, shareBuf;
  TBuf<TPosition::VECOUT> histBuf;
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
  bool hasShare_ = false;
};

template <class IdT>
__aicore__ inline void RunRouteAndCount(GM_ADDR topkIds, GM_ADDR log2phy, GM_ADDR logcnt,
                                        GM_ADDR share, GM_ADDR heat, GM_ADDR step, GM_ADDR phyIds,
                                        int64_t numTokens, int32_t topK, int32_t numExperts,
                                        int32_t maxReplicas, int32_t numSlots, int64_t heatRows,
                                        int64_t heatRowStride, int64_t pairsPerCore,
                                        uint32_t tilePairs, uint32_t hasShare) {
  TPipe pipe;
  KernelRouteAndCount<IdT> op;
  op.Init(topkIds, log2phy, logcnt, share, heat, step, phyIds, numTokens, topK, numExperts,
          maxReplicas, numSlots, heatRows, heatRowStride, pairsPerCore, tilePairs, hasShare, &pipe);
  op.Process();
}

}  // namespace

// One entry for both id widths: idBytes picks the instantiation on the core.
extern "C" __global__ __aicore__ void eplb_route_and_count_kernel(
    GM_ADDR topkIds, GM_ADDR log2phy, GM_ADDR logcnt, GM_ADDR share, GM_ADDR heat, GM_ADDR step,
    GM_ADDR phyIds, int64_t numTokens, int32_t topK, int32_t numExperts, int32_t maxReplicas,
    int32_t numSlots, int64_t heatRows, int64_t heatRowStride, int64_t pairsPerCore,
    uint32_t tilePairs, uint32_t hasShare, uint32_t idBytes) {
  if (idBytes == 8) {
    RunRouteAndCount<int64_t>(topkIds, log2phy, logcnt, share, heat, step, phyIds, numTokens, topK,
                              numExperts, maxReplicas, numSlots, heatRows, heatRowStride,
                              pairsPerCore, tilePairs, hasShare);
  } else {
    RunRouteAndCount<int32_t>(topkIds, log2phy, logcnt, share, heat, step, phyIds, numTokens, topK,
                              numExperts, maxReplicas, numSlots, heatRows, heatRowStride,
                              pairsPerCore, tilePairs, hasShare);
  }
}

extern "C" void eplb_route_and_count(uint8_t* topkIds, uint8_t* log2phy, uint8_t* logcnt,
                                     uint8_t* share, uint8_t* heat, uint8_t* step, uint8_t* phyIds,
                                     const eplb_ascendc::RouteAndCountTiling* tiling,
                                     void* stream) {
  const eplb_ascendc::RouteAndCountTiling t = *tiling;
  if (t.blockDim == 0) return;
  EPLB_LAUNCH_KERNEL(eplb_route_and_count_kernel, t.blockDim, stream, topkIds, log2phy, logcnt,
                     share, heat, step, phyIds, t.numTokens, t.topK, t.numExperts, t.maxReplicas,
                     t.numSlots, t.heatRows, t.heatRowStride, t.pairsPerCore, t.tilePairs,
                     t.hasShare, t.idBytes);
}
