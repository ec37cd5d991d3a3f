// Planted-fault kernels: each breaks one rule the hardware enforces, and the emulation must reject
// it with a message naming the rule. Each fault has a correct twin ("*_ok") that must pass, so a
// check that rejects everything is caught too.
#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <mutex>
#include <string>
#include <vector>

#include "eplb_launch.h"
#include "kernel_operator.h"

using namespace AscendC;

namespace {

constexpr uint32_t kLen = 64;  // int32 elements of the test buffers (256 bytes)

// Kernels whose every core would store the same bytes of y (a race the emulation reports) run
// their rule's case on core 0 alone.
__aicore__ inline bool NotFirstCore() { return GetBlockIdx() != 0; }

// Copies `count` int32 from xGm to yGm through a copy-through queue; `count` is the planted length.
class KernelCopyCount {
 public:
  __aicore__ inline void Init(GM_ADDR x, GM_ADDR y, uint32_t count, TPipe* pipe) {
    count_ = count;
    xGm.SetGlobalBuffer((__gm__ int32_t*)x, kLen);
    yGm.SetGlobalBuffer((__gm__ int32_t*)y, kLen);
    pipe->InitBuffer(inQueueX, 1, 2 * kLen * sizeof(int32_t));
  }
  __aicore__ inline void Process() {
    LocalTensor<int32_t> xLocal = inQueueX.AllocTensor<int32_t>();
    DataCopy(xLocal, xGm, count_);
    inQueueX.EnQue(xLocal);
    xLocal = inQueueX.DeQue<int32_t>();
    DataCopy(yGm, xLocal, count_);
    inQueueX.FreeTensor(xLocal);
  }

 private:
  TQueBind<TPosition::VECIN, TPosition::VECOUT, 1> inQueueX;
  GlobalTensor<int32_t> xGm, yGm;
  uint32_t count_ = 0;
};

__global__ __aicore__ void copy_count_kernel(GM_ADDR x, GM_ADDR y, uint32_t count) {
  KERNEL_TASK_TYPE_DEFAULT(KERNEL_TYPE_AIV_ONLY);
  if (NotFirstCore()) return;
  TPipe pipe;
  KernelCopyCount op;
  op.Init(x, y, count, &pipe);
  op.Process();
}

// Each core copies kLen int32 from x to y: all to the start of y (the planted race), or
// (`apart`) each to its own block of y.
__global__ __aicore__ void shared_store_kernel(GM_ADDR x, GM_ADDR y, uint32_t apart) {
  KERNEL_TASK_TYPE_DEFAULT(KERNEL_TYPE_AIV_ONLY);
  TPipe pipe;
  KernelCopyCount op;
  op.Init(x, apart != 0 ? y + GetBlockIdx() * kLen * sizeof(int32_t) : y, kLen, &pipe);
  op.Process();
}

__global__ __aicore__ void ub_overflow_kernel(uint32_t bytesPerBuffer) {
  KERNEL_TASK_TYPE_DEFAULT(KERNEL_TYPE_AIV_ONLY);
  TPipe pipe;
  TQue<TPosition::VECIN, 1> inQueueX;
  TQue<TPosition::VECOUT, 1> outQueueY;
  pipe.InitBuffer(inQueueX, 2, bytesPerBuffer);
  pipe.InitBuffer(outQueueY, 2, bytesPerBuffer);
}

// kLen int32 from x copied into a fresh buffer of `que` and enqueued; returns the (now enqueued)
// handle, which a correct kernel must not use again before DeQue.
__aicore__ inline LocalTensor<int32_t> CopyInEnqueued(TPipe& pipe, TQue<TPosition::VECIN, 1>& que,
                                                      GM_ADDR x) {
  GlobalTensor<int32_t> xGm;
  xGm.SetGlobalBuffer((__gm__ int32_t*)x, kLen);
  pipe.InitBuffer(que, 1, kLen * sizeof(int32_t));
  LocalTensor<int32_t> xLocal = que.AllocTensor<int32_t>();
  DataCopy(xLocal, xGm, kLen);
  que.EnQue(xLocal);
  return xLocal;
}

// Vector work on a tensor that is still enqueued (or, with `dequeue`, correctly dequeued).
__global__ __aicore__ void use_without_deque_kernel(GM_ADDR x, uint32_t dequeue) {
  KERNEL_TASK_TYPE_DEFAULT(KERNEL_TYPE_AIV_ONLY);
  TPipe pipe;
  TQue<TPosition::VECIN, 1> inQueueX;
  LocalTensor<int32_t> xLocal = CopyInEnqueued(pipe, inQueueX, x);  // still enqueued
  if (dequeue != 0) xLocal = inQueueX.DeQue<int32_t>();
  Adds(xLocal, xLocal, 1, kLen);
}

// Scalar read of a dequeued tensor after (or, without `freeFirst`, before) its FreeTensor.
__global__ __aicore__ void use_after_free_kernel(GM_ADDR x, uint32_t freeFirst) {
  KERNEL_TASK_TYPE_DEFAULT(KERNEL_TYPE_AIV_ONLY);
  TPipe pipe;
  TQue<TPosition::VECIN, 1> inQueueX;
  CopyInEnqueued(pipe, inQueueX, x);
  LocalTensor<int32_t> xLocal = inQueueX.DeQue<int32_t>();
  if (freeFirst != 0) inQueueX.FreeTensor(xLocal);
  PipeBarrier<PIPE_ALL>();
  const int32_t v = xLocal.GetValue(0);
  (void)v;
  if (freeFirst == 0) inQueueX.FreeTensor(xLocal);
}

// Two tensors enqueued into a depth-`depth` queue before the first DeQue.
template <int32_t DEPTH>
__global__ __aicore__ void queue_depth_kernel() {
  KERNEL_TASK_TYPE_DEFAULT(KERNEL_TYPE_AIV_ONLY);
  TPipe pipe;
  TQue<TPosition::VECIN, DEPTH> inQueueX;
  pipe.InitBuffer(inQueueX, 2, kLen * sizeof(int32_t));
  LocalTensor<int32_t> aLocal = inQueueX.template AllocTensor<int32_t>();
  LocalTensor<int32_t> bLocal = inQueueX.template AllocTensor<int32_t>();
  inQueueX.EnQue(aLocal);
  inQueueX.EnQue(bLocal);
  inQueueX.FreeTensor(inQueueX.template DeQue<int32_t>());
  inQueueX.FreeTensor(inQueueX.template DeQue<int32_t>());
}

// Atomic add of a UB buffer into GM with element type T (int64 is the planted fault).
template <class T>
__global__ __aicore__ void atomic_add_kernel(GM_ADDR y) {
  KERNEL_TASK_TYPE_DEFAULT(KERNEL_TYPE_AIV_ONLY);
  TPipe pipe;
  TBuf<TPosition::VECCALC> bufY;
  GlobalTensor<T> yGm;
  yGm.SetGlobalBuffer((__gm__ T*)y, kLen * sizeof(int32_t) / sizeof(T));
  pipe.InitBuffer(bufY, kLen * sizeof(int32_t));
  LocalTensor<T> yLocal = bufY.Get<T>();
  const uint32_t n = kLen * sizeof(int32_t) / sizeof(T);
  Duplicate(yLocal, static_cast<T>(1), n);
  PipeBarrier<PIPE_ALL>();
  SetAtomicAdd<T>();
  DataCopy(yGm, yLocal, n);
  SetAtomicNone();
}

// Copies kLen int32 from x into y at element `offset`: past the end when offset > 0.
__global__ __aicore__ void gm_bounds_kernel(GM_ADDR x, GM_ADDR y, uint32_t offset) {
  KERNEL_TASK_TYPE_DEFAULT(KERNEL_TYPE_AIV_ONLY);
  if (NotFirstCore()) return;
  TPipe pipe;
  TQueBind<TPosition::VECIN, TPosition::VECOUT, 1> queBind;
  GlobalTensor<int32_t> xGm, yGm;
  xGm.SetGlobalBuffer((__gm__ int32_t*)x, kLen);
  yGm.SetGlobalBuffer((__gm__ int32_t*)y, kLen);
  pipe.InitBuffer(queBind, 1, kLen * sizeof(int32_t));
  LocalTensor<int32_t> xLocal = queBind.AllocTensor<int32_t>();
  DataCopy(xLocal, xGm, kLen);
  queBind.EnQue(xLocal);
  xLocal = queBind.DeQue<int32_t>();
  DataCopy(yGm[offset], xLocal, kLen);
  queBind.FreeTensor(xLocal);
}

// Scalar read of a tile right after its DataCopy. mode 0: nothing in between; 1: a barrier;
// 2: an MTE2_S event pair (orders it); 3: an MTE2_V pair (orders the vector pipe, not S).
__global__ __aicore__ void pipe_race_kernel(GM_ADDR x, uint32_t mode) {
  KERNEL_TASK_TYPE_DEFAULT(KERNEL_TYPE_AIV_ONLY);
  TPipe pipe;
  TBuf<TPosition::VECCALC> bufX;
  GlobalTensor<int32_t> xGm;
  xGm.SetGlobalBuffer((__gm__ int32_t*)x, kLen);
  pipe.InitBuffer(bufX, kLen * sizeof(int32_t));
  LocalTensor<int32_t> xLocal = bufX.Get<int32_t>();
  DataCopy(xLocal, xGm, kLen);
  if (mode == 1) PipeBarrier<PIPE_ALL>();
  if (mode == 2) {
    SetFlag<HardEvent::MTE2_S>(EVENT_ID0);
    WaitFlag<HardEvent::MTE2_S>(EVENT_ID0);
  }
  if (mode == 3) {
    SetFlag<HardEvent::MTE2_V>(EVENT_ID0);
    WaitFlag<HardEvent::MTE2_V>(EVENT_ID0);
  }
  const int32_t v = xLocal.GetValue(3);
  (void)v;
}

// DataCopyPad of `blocks` blocks of `bytes` bytes GM -> UB -> GM in one call each way (past the
// ranges: 65536 bytes a block, 4096 blocks).
__global__ __aicore__ void pad_copy_kernel(GM_ADDR x, GM_ADDR y, uint32_t blocks, uint32_t bytes) {
  KERNEL_TASK_TYPE_DEFAULT(KERNEL_TYPE_AIV_ONLY);
  if (NotFirstCore()) return;
  TPipe pipe;
  TQueBind<TPosition::VECIN, TPosition::VECOUT, 1> queBind;
  GlobalTensor<uint8_t> xGm, yGm;
  xGm.SetGlobalBuffer((__gm__ uint8_t*)x, blocks * bytes);
  yGm.SetGlobalBuffer((__gm__ uint8_t*)y, blocks * bytes);
  pipe.InitBuffer(queBind, 1, blocks * ((bytes + 31) / 32 * 32));
  LocalTensor<uint8_t> xLocal = queBind.AllocTensor<uint8_t>();
  const uint16_t count = static_cast<uint16_t>(blocks);
  DataCopyPad(xLocal, xGm, {count, bytes, 0, 0, 0}, {false, 0, 0, 0});
  queBind.EnQue(xLocal);
  xLocal = queBind.DeQue<uint8_t>();
  DataCopyPad(yGm, xLocal, {count, bytes, 0, 0, 0});
  queBind.FreeTensor(xLocal);
}

// Scalar loop fills a VECOUT tile that MTE3 then copies out; only a barrier orders S -> MTE3.
__global__ __aicore__ void scalar_copy_out_kernel(GM_ADDR y, uint32_t barrier) {
  KERNEL_TASK_TYPE_DEFAULT(KERNEL_TYPE_AIV_ONLY);
  if (NotFirstCore()) return;
  TPipe pipe;
  TQue<TPosition::VECOUT, 1> outQueueY;
  GlobalTensor<int32_t> yGm;
  yGm.SetGlobalBuffer((__gm__ int32_t*)y, kLen);
  pipe.InitBuffer(outQueueY, 1, kLen * sizeof(int32_t));
  LocalTensor<int32_t> yLocal = outQueueY.AllocTensor<int32_t>();
  for (uint32_t i = 0; i < kLen; ++i) yLocal.SetValue(i, static_cast<int32_t>(i));
  if (barrier != 0) PipeBarrier<PIPE_ALL>();
  outQueueY.EnQue(yLocal);
  yLocal = outQueueY.DeQue<int32_t>();
  DataCopy(yGm, yLocal, kLen);
  outQueueY.FreeTensor(yLocal);
}

// Every core writes its index to y[core * 8], SyncAll, then checks its neighbour's entry.
// mode 0: all cores sync (correct); 1: core 0 returns first; 2: core 0 is stuck: it would arrive
// only after lateMs, and leaves as soon as another core gave up waiting (as a hung core would
// never arrive); a fixed sleep instead made the test depend on when the other threads started;
// 3: no SyncAll, the neighbour's entry read whenever it lands (a race reported at the end).
__global__ __aicore__ void sync_all_kernel(GM_ADDR y, uint32_t mode, uint32_t lateMs) {
  KERNEL_TASK_TYPE_DEFAULT(KERNEL_TYPE_AIV_ONLY);
  GlobalTensor<int32_t> yGm;
  const int64_t idx = GetBlockIdx();
  const int64_t num = GetBlockNum();
  yGm.SetGlobalBuffer((__gm__ int32_t*)y, num * 8);
  yGm.SetValue(idx * 8, static_cast<int32_t>(idx + 100));
  // written back from this core's DataCache for the others to see
  DataCacheCleanAndInvalid<int32_t, CacheLine::SINGLE_CACHE_LINE, DcciDst::CACHELINE_OUT>(
      yGm[idx * 8]);
  if (mode == 1 && idx == 0) return;
  if (mode == 2 && idx == 0) {
    host_sim::LaunchState& st = *host_sim::currentCore().launch;
    std::unique_lock<std::mutex> lock(st.mutex);
    if (st.cv.wait_for(lock, std::chrono::milliseconds(lateMs), [&] { return st.aborted; })) return;
  }
  if (mode != 3) SyncAll();
  const int64_t next = (idx + 1) % num;
  DataCacheCleanAndInvalid<int32_t, CacheLine::SINGLE_CACHE_LINE, DcciDst::CACHELINE_OUT>(
      yGm[next * 8]);
  const int32_t seen = yGm.GetValue(next * 8);
  if (mode != 3 && seen != next + 100) host_sim::fail("SyncAll did not order the GM writes");
}

// Every core atomically adds ones to y[0, kLen), then copies y back in (a count it would use).
// mode 0: SyncAll between (correct); 1: without (a read racing the adds); 2: core 0 stores its
// ones plainly while the others add (a store racing the adds).
__global__ __aicore__ void atomic_then_read_kernel(GM_ADDR y, uint32_t mode) {
  KERNEL_TASK_TYPE_DEFAULT(KERNEL_TYPE_AIV_ONLY);
  TPipe pipe;
  TBuf<TPosition::VECCALC> buf;
  GlobalTensor<int32_t> yGm;
  yGm.SetGlobalBuffer((__gm__ int32_t*)y, kLen);
  pipe.InitBuffer(buf, kLen * sizeof(int32_t));
  LocalTensor<int32_t> local = buf.Get<int32_t>();
  Duplicate(local, 1, kLen);
  PipeBarrier<PIPE_ALL>();
  const bool plain = mode == 2 && GetBlockIdx() == 0;
  if (!plain) SetAtomicAdd<int32_t>();
  DataCopy(yGm, local, kLen);
  if (!plain) SetAtomicNone();
  if (mode != 1) SyncAll();
  PipeBarrier<PIPE_ALL>();
  DataCopy(local, yGm, kLen);
  PipeBarrier<PIPE_ALL>();
}

// A scalar read of x[0] (a step counter, say), which the host rewrites between two launches:
// the second launch reads it past the DataCache only with `fresh`.
__global__ __aicore__ void scalar_gm_read_kernel(GM_ADDR x, GM_ADDR y, uint32_t fresh) {
  KERNEL_TASK_TYPE_DEFAULT(KERNEL_TYPE_AIV_ONLY);
  GlobalTensor<int32_t> xGm, yGm;
  xGm.SetGlobalBuffer((__gm__ int32_t*)x, kLen);
  yGm.SetGlobalBuffer((__gm__ int32_t*)y, kLen);
  if (fresh != 0) {
    DataCacheCleanAndInvalid<int32_t, CacheLine::SINGLE_CACHE_LINE, DcciDst::CACHELINE_OUT>(xGm);
  }
  if (GetBlockIdx() == 0) yGm.SetValue(0, xGm.GetValue(0));
}

// Two rounds of a scalar loop filling one buffer that MTE3 copies out; round 1 refills it while
// the copy-out of round 0 may still read it unless the MTE3_S event is waited for first.
__global__ __aicore__ void write_after_read_kernel(GM_ADDR y, uint32_t waitCopyOut) {
  KERNEL_TASK_TYPE_DEFAULT(KERNEL_TYPE_AIV_ONLY);
  if (NotFirstCore()) return;
  TPipe pipe;
  TBuf<TPosition::VECCALC> bufY;
  GlobalTensor<int32_t> yGm;
  yGm.SetGlobalBuffer((__gm__ int32_t*)y, 2 * kLen);
  pipe.InitBuffer(bufY, kLen * sizeof(int32_t));
  LocalTensor<int32_t> yLocal = bufY.Get<int32_t>();
  const event_t sToMte3 = static_cast<event_t>(pipe.AllocEventID<HardEvent::S_MTE3>());
  const event_t mte3ToS = static_cast<event_t>(pipe.AllocEventID<HardEvent::MTE3_S>());
  for (uint32_t round = 0; round < 2; ++round) {
    if (round > 0 && waitCopyOut != 0) WaitFlag<HardEvent::MTE3_S>(mte3ToS);
    for (uint32_t i = 0; i < kLen; ++i) yLocal.SetValue(i, static_cast<int32_t>(round * 100 + i));
    SetFlag<HardEvent::S_MTE3>(sToMte3);
    WaitFlag<HardEvent::S_MTE3>(sToMte3);
    DataCopy(yGm[round * kLen], yLocal, kLen);
    if (round == 0 && waitCopyOut != 0) SetFlag<HardEvent::MTE3_S>(mte3ToS);
  }
}

// mode 0: WaitFlag with no SetFlag; 1: SetFlag never waited for; 2: a matched pair.
__global__ __aicore__ void event_balance_kernel(uint32_t mode) {
  KERNEL_TASK_TYPE_DEFAULT(KERNEL_TYPE_AIV_ONLY);
  TPipe pipe;
  if (mode != 0) SetFlag<HardEvent::MTE3_S>(EVENT_ID1);
  if (mode != 1) WaitFlag<HardEvent::MTE3_S>(EVENT_ID1);
}

// Scratch memory declared at a queue position (VECIN) or, correctly, at VECCALC.
template <TPosition POS>
__global__ __aicore__ void tbuf_position_kernel() {
  KERNEL_TASK_TYPE_DEFAULT(KERNEL_TYPE_AIV_ONLY);
  TPipe pipe;
  TBuf<POS> buf;
  pipe.InitBuffer(buf, kLen * sizeof(int32_t));
}

// A kernel that does not pin its type (blockDim would count mixed AI cores on hardware).
__global__ __aicore__ void kernel_type_kernel(uint32_t pinned) {
  if (pinned != 0) KERNEL_TASK_TYPE_DEFAULT(KERNEL_TYPE_AIV_ONLY);
}

}  // namespace

namespace {

std::map<std::string, std::function<void(uint32_t)>> FaultTable() {
  using Bytes = std::vector<int32_t>;
  auto withBuffers = [](auto body) {
    return [body](uint32_t blockDim) {
      Bytes x(kLen * 8, 7), y(kLen * 8, 0);
      body(blockDim, reinterpret_cast<uint8_t*>(x.data()), reinterpret_cast<uint8_t*>(y.data()));
    };
  };
  std::map<std::string, std::function<void(uint32_t)>> t;
  t["datacopy_unaligned_length"] = withBuffers([](uint32_t b, uint8_t* x, uint8_t* y) {
    EPLB_LAUNCH_KERNEL(copy_count_kernel, b, nullptr, x, y, 7u);  // 28 bytes
  });
  t["datacopy_unaligned_length_ok"] = withBuffers([](uint32_t b, uint8_t* x, uint8_t* y) {
    EPLB_LAUNCH_KERNEL(copy_count_kernel, b, nullptr, x, y, 8u);  // 32 bytes
  });
  t["cores_store_same_bytes"] = withBuffers([](uint32_t b, uint8_t* x, uint8_t* y) {
    EPLB_LAUNCH_KERNEL(shared_store_kernel, b, nullptr, x, y, 0u);
  });
  t["cores_store_same_bytes_ok"] = withBuffers([](uint32_t b, uint8_t* x, uint8_t* y) {
    EPLB_LAUNCH_KERNEL(shared_store_kernel, b, nullptr, x, y, 1u);
  });
  t["datacopy_empty"] = withBuffers([](uint32_t b, uint8_t* x, uint8_t* y) {
    EPLB_LAUNCH_KERNEL(copy_count_kernel, b, nullptr, x, y, 0u);  // a burst of 0 blocks
  });
  t["ub_overflow"] = [](uint32_t b) {
    EPLB_LAUNCH_KERNEL(ub_overflow_kernel, b, nullptr, 50u * 1024u);
  };
  t["ub_overflow_ok"] = [](uint32_t b) {
    EPLB_LAUNCH_KERNEL(ub_overflow_kernel, b, nullptr, 46u * 1024u);  // 4 x 46 = 184 KiB
  };
  t["use_without_deque"] = withBuffers([](uint32_t b, uint8_t* x, uint8_t*) {
    EPLB_LAUNCH_KERNEL(use_without_deque_kernel, b, nullptr, x, 0u);
  });
  t["use_without_deque_ok"] = withBuffers([](uint32_t b, uint8_t* x, uint8_t*) {
    EPLB_LAUNCH_KERNEL(use_without_deque_kernel, b, nullptr, x, 1u);
  });
  t["use_after_free"] = withBuffers([](uint32_t b, uint8_t* x, uint8_t*) {
    EPLB_LAUNCH_KERNEL(use_after_free_kernel, b, nullptr, x, 1u);
  });
  t["use_after_free_ok"] = withBuffers([](uint32_t b, uint8_t* x, uint8_t*) {
    EPLB_LAUNCH_KERNEL(use_after_free_kernel, b, nullptr, x, 0u);
  });
  t["queue_depth_exceeded"] = [](uint32_t b) {
    EPLB_LAUNCH_KERNEL(queue_depth_kernel<1>, b, nullptr);
  };
  t["queue_depth_exceeded_ok"] = [](uint32_t b) {
    EPLB_LAUNCH_KERNEL(queue_depth_kernel<2>, b, nullptr);
  };
  t["atomic_add_int64"] = withBuffers([](uint32_t b, uint8_t*, uint8_t* y) {
    EPLB_LAUNCH_KERNEL(atomic_add_kernel<int64_t>, b, nullptr, y);
  });
  t["atomic_add_int64_ok"] = withBuffers([](uint32_t b, uint8_t*, uint8_t* y) {
    EPLB_LAUNCH_KERNEL(atomic_add_kernel<int32_t>, b, nullptr, y);
  });
  t["atomic_add_uint32"] = withBuffers([](uint32_t b, uint8_t*, uint8_t* y) {
    EPLB_LAUNCH_KERNEL(atomic_add_kernel<uint32_t>, b, nullptr, y);
  });
  t["gm_out_of_bounds"] = withBuffers([](uint32_t b, uint8_t* x, uint8_t* y) {
    EPLB_LAUNCH_KERNEL(gm_bounds_kernel, b, nullptr, x, y, 8u);
  });
  t["gm_out_of_bounds_ok"] = withBuffers([](uint32_t b, uint8_t* x, uint8_t* y) {
    EPLB_LAUNCH_KERNEL(gm_bounds_kernel, b, nullptr, x, y, 0u);
  });
  t["pipe_race"] = withBuffers([](uint32_t b, uint8_t* x, uint8_t*) {
    EPLB_LAUNCH_KERNEL(pipe_race_kernel, b, nullptr, x, 0u);
  });
  t["pipe_race_ok"] = withBuffers([](uint32_t b, uint8_t* x, uint8_t*) {
    EPLB_LAUNCH_KERNEL(pipe_race_kernel, b, nullptr, x, 1u);
  });
  auto padCopy = [](uint32_t blocks, uint32_t bytes) {
    return [blocks, bytes](uint32_t b) {
      std::vector<uint8_t> x(blocks * bytes, 3), y(blocks * bytes, 0);
      uint8_t* xData = x.data();
      uint8_t* yData = y.data();
      EPLB_LAUNCH_KERNEL(pad_copy_kernel, b, nullptr, xData, yData, blocks, bytes);
      if (y.back() != 3) host_sim::fail("DataCopyPad lost data");
    };
  };
  t["datacopypad_block_too_long"] = padCopy(1, 65536);
  t["datacopypad_block_too_long_ok"] = padCopy(1, 65535);
  t["datacopypad_too_many_blocks"] = padCopy(4096, 32);
  t["datacopypad_too_many_blocks_ok"] = padCopy(4095, 32);
  t["scalar_copy_out_race"] = withBuffers([](uint32_t b, uint8_t*, uint8_t* y) {
    EPLB_LAUNCH_KERNEL(scalar_copy_out_kernel, b, nullptr, y, 0u);
  });
  t["scalar_copy_out_race_ok"] = withBuffers([](uint32_t b, uint8_t*, uint8_t* y) {
    EPLB_LAUNCH_KERNEL(scalar_copy_out_kernel, b, nullptr, y, 1u);
  });
  t["syncall_missing_core"] = withBuffers([](uint32_t b, uint8_t*, uint8_t* y) {
    EPLB_LAUNCH_KERNEL(sync_all_kernel, b, nullptr, y, 1u, 0u);
  });
  t["syncall_timeout"] = withBuffers([](uint32_t b, uint8_t*, uint8_t* y) {
    const uint32_t late = static_cast<uint32_t>(host_sim::config().syncAllTimeoutMs) * 10;
    EPLB_LAUNCH_KERNEL(sync_all_kernel, b, nullptr, y, 2u, late);
  });
  t["write_after_read"] = withBuffers([](uint32_t b, uint8_t*, uint8_t* y) {
    EPLB_LAUNCH_KERNEL(write_after_read_kernel, b, nullptr, y, 0u);
  });
  t["write_after_read_ok"] = withBuffers([](uint32_t b, uint8_t*, uint8_t* y) {
    EPLB_LAUNCH_KERNEL(write_after_read_kernel, b, nullptr, y, 1u);
  });
  t["event_wrong_pipes"] = withBuffers([](uint32_t b, uint8_t* x, uint8_t*) {
    EPLB_LAUNCH_KERNEL(pipe_race_kernel, b, nullptr, x, 3u);
  });
  t["event_wrong_pipes_ok"] = withBuffers([](uint32_t b, uint8_t* x, uint8_t*) {
    EPLB_LAUNCH_KERNEL(pipe_race_kernel, b, nullptr, x, 2u);
  });
  t["event_wait_without_set"] = [](uint32_t b) {
    EPLB_LAUNCH_KERNEL(event_balance_kernel, b, nullptr, 0u);
  };
  t["event_set_never_waited"] = [](uint32_t b) {
    EPLB_LAUNCH_KERNEL(event_balance_kernel, b, nullptr, 1u);
  };
  t["event_balance_ok"] = [](uint32_t b) {
    EPLB_LAUNCH_KERNEL(event_balance_kernel, b, nullptr, 2u);
  };
  t["tbuf_position"] = [](uint32_t b) {
    EPLB_LAUNCH_KERNEL(tbuf_position_kernel<TPosition::VECIN>, b, nullptr);
  };
  t["tbuf_position_ok"] = [](uint32_t b) {
    EPLB_LAUNCH_KERNEL(tbuf_position_kernel<TPosition::VECCALC>, b, nullptr);
  };
  t["kernel_type_not_pinned"] = [](uint32_t b) {
    EPLB_LAUNCH_KERNEL(kernel_type_kernel, b, nullptr, 0u);
  };
  t["kernel_type_not_pinned_ok"] = [](uint32_t b) {
    EPLB_LAUNCH_KERNEL(kernel_type_kernel, b, nullptr, 1u);
  };
  auto twoLaunches = [withBuffers](uint32_t fresh) {
    return withBuffers([fresh](uint32_t b, uint8_t* x, uint8_t* y) {
      int32_t* counter = reinterpret_cast<int32_t*>(x);
      for (int32_t step = 1; step <= 2; ++step) {
        *counter = step;  // the host (or the previous step's kernel) advances it
        EPLB_LAUNCH_KERNEL(scalar_gm_read_kernel, b, nullptr, x, y, fresh);
        if (reinterpret_cast<int32_t*>(y)[0] != step) host_sim::fail("read a stale counter");
      }
    });
  };
  t["stale_data_cache"] = twoLaunches(0u);
  t["stale_data_cache_ok"] = twoLaunches(1u);
  t["syncall_ok"] = withBuffers([](uint32_t b, uint8_t*, uint8_t* y) {
    EPLB_LAUNCH_KERNEL(sync_all_kernel, b, nullptr, y, 0u, 0u);
  });
  t["read_without_syncall"] = withBuffers([](uint32_t b, uint8_t*, uint8_t* y) {
    EPLB_LAUNCH_KERNEL(sync_all_kernel, b, nullptr, y, 3u, 0u);
  });
  t["read_during_atomic_add"] = withBuffers([](uint32_t b, uint8_t*, uint8_t* y) {
    EPLB_LAUNCH_KERNEL(atomic_then_read_kernel, b, nullptr, y, 1u);
  });
  t["store_during_atomic_add"] = withBuffers([](uint32_t b, uint8_t*, uint8_t* y) {
    EPLB_LAUNCH_KERNEL(atomic_then_read_kernel, b, nullptr, y, 2u);
  });
  t["atomic_then_read_ok"] = withBuffers([](uint32_t b, uint8_t*, uint8_t* y) {
    EPLB_LAUNCH_KERNEL(atomic_then_read_kernel, b, nullptr, y, 0u);
  });
  return t;
}

}  // namespace

std::vector<std::string> FaultKernelNames() {
  std::vector<std::string> names;
  for (const auto& kv : FaultTable()) names.push_back(kv.first);
  return names;
}

void RunFaultKernel(const std::string& name, uint32_t blockDim) {
  const auto table = FaultTable();
  const auto it = table.find(name);
  if (it == table.end()) throw std::invalid_argument("unknown fault kernel " + name);
  it->second(blockDim);
}
