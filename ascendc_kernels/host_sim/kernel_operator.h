// Host emulation of the AscendC API subset used by eplb_rt's kernels (header-only, C++17).
//
// Kernels include "kernel_operator.h"; with -I ascendc_kernels/host_sim and -DASCENDC_HOST_SIM
// they get this file instead of CANN's, compile with g++ and run on the CPU (host_sim::Launch runs
// one thread per vector core). Semantics follow the public AscendC documentation; every rule the
// hardware enforces by faulting, hanging or corrupting data is checked and raises host_sim::Error:
//
//   * DataCopy moves whole 32-byte blocks: a length that is not a multiple of 32 bytes, or a UB
//     address that is not 32-byte aligned, is rejected (DataCopyPad is the tool for tails);
//     DataCopyPad blocks must hold 1..65535 bytes;
//   * TPipe::InitBuffer past the Unified Buffer capacity of the SoC (eplb_platform.h, the table
//     the tiling uses) is rejected; TBuf is VECCALC only;
//   * the kernel pins its type to vector cores (KERNEL_TASK_TYPE_DEFAULT(KERNEL_TYPE_AIV_ONLY)),
//     so blockDim counts AIV cores and GetBlockIdx runs over [0, blockDim);
//   * queue discipline: a LocalTensor is usable after AllocTensor (producer) or DeQue (consumer),
//     not while it sits enqueued and not after FreeTensor; EnQue beyond the queue depth, DeQue of
//     an empty queue, AllocTensor with every buffer taken are errors (on hardware: a dropped
//     tensor or a hang);
//   * asynchronous pipes: MTE2 (copy-in), MTE3 (copy-out) and V (vector) run on their own; the
//     scalar unit (S) waits for its own reads only. A buffer written by one pipe and touched by
//     another (read-after-write), or overwritten by one pipe while another may still read it
//     (write-after-read, e.g. the scalar unit refilling a tile that MTE3 is copying out), is a
//     race unless an event pair (SetFlag/WaitFlag<HardEvent::A_B>), a queue hand-over or
//     PipeBarrier<PIPE_ALL> orders exactly those two pipes. EnQue orders the queue's producer
//     before its consumer (VECIN: MTE2 -> V, VECOUT: V -> MTE3, TQueBind: MTE2 -> MTE3);
//     AllocTensor after FreeTensor orders the consumer's reads before the producer's writes;
//     none of them orders the scalar unit. A WaitFlag without its SetFlag, a SetFlag set twice
//     and a kernel ending with flags still set are reported too;
//   * SetAtomicAdd on a type the hardware cannot add atomically (unsigned, 64-bit) is rejected,
//     DataCopy and DataCopyPad outside their documented block counts and lengths too, and the
//     element type of an atomic copy must match the one set;
//   * every GlobalTensor knows its size (SetGlobalBuffer) and every access is bounds-checked;
//   * the scalar unit reads GM through its core's DataCache, which outlives the launch: reading
//     again an address whose GM value changed, without DataCacheCleanAndInvalid in between, is
//     reported (host_sim::DataCacheModel);
//   * SyncAll with a core that never arrives fails after a timeout instead of hanging;
//   * two cores touching the same GM bytes with no SyncAll between, where one stores them
//     without an atomic add or one reads what the other stores or atomically adds, are
//     reported at the end of the launch (a race: which lands last, or which value a read
//     sees, varies); atomic adds together and reads together are fine.
// Fresh UB buffers are filled with a poison byte, so a kernel that reads what it never wrote
// computes garbage here too.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <deque>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <type_traits>
#include <typeinfo>
#include <vector>

#include "host_sim_runtime.h"

#define __global__
#define __aicore__
#define __gm__
#ifndef GM_ADDR
#define GM_ADDR uint8_t*
#endif

// Event ids (a compiler built-in type in CANN, hence outside the namespace).
enum event_t : int32_t {
  EVENT_ID0, EVENT_ID1, EVENT_ID2, EVENT_ID3, EVENT_ID4, EVENT_ID5, EVENT_ID6, EVENT_ID7
};

namespace AscendC {

enum class TPosition : uint8_t { GM, VECIN, VECOUT, VECCALC };
using QuePosition = TPosition;

enum pipe_t { PIPE_S, PIPE_V, PIPE_MTE2, PIPE_MTE3, PIPE_ALL };

constexpr uint32_t kBlockBytes = 32;  // DataCopy granule and UB alignment
constexpr uint8_t kPoisonByte = 0xA5;

namespace detail {

inline const char* pipeName(pipe_t p) {
  switch (p) {
    case PIPE_S:
      return "scalar (S)";
    case PIPE_V:
      return "vector (V)";
    case PIPE_MTE2:
      return "copy-in (MTE2)";
    case PIPE_MTE3:
      return "copy-out (MTE3)";
    default:
      return "all";
  }
}

inline uint32_t pipeBit(pipe_t p) { return 1u << static_cast<uint32_t>(p); }

// The pipe that fills a buffer of a queue position, and the one that drains it.
inline pipe_t producerPipe(TPosition pos) { return pos == TPosition::VECIN ? PIPE_MTE2 : PIPE_V; }
inline pipe_t consumerPipe(TPosition pos) { return pos == TPosition::VECOUT ? PIPE_MTE3 : PIPE_V; }

template <class T>
const char* typeName() {
  if (std::is_same<T, int64_t>::value) return "int64";
  if (std::is_same<T, uint64_t>::value) return "uint64";
  if (std::is_same<T, int32_t>::value) return "int32";
  if (std::is_same<T, uint32_t>::value) return "uint32";
  if (std::is_same<T, int16_t>::value) return "int16";
  if (std::is_same<T, int8_t>::value) return "int8";
  if (std::is_same<T, uint8_t>::value) return "uint8";
  if (std::is_same<T, float>::value) return "float32";
  if (std::is_same<T, double>::value) return "float64";
  return typeid(T).name();
}

inline uint32_t roundUp32(uint64_t bytes) {
  return static_cast<uint32_t>((bytes + kBlockBytes - 1) / kBlockBytes * kBlockBytes);
}

// One UB buffer handed out by a queue or a TBuf.
struct BufferSlot {
  enum class State { Free, Allocated, Enqueued, Dequeued, Calc };
  uint8_t* data = nullptr;
  uint32_t bytes = 0;
  uint32_t ubOffset = 0;  // byte offset in the core's UB (alignment checks)
  State state = State::Free;
  uint64_t generation = 0;  // bumped by AllocTensor/FreeTensor: stale handles are detected
  bool pending = false;     // written by `writer` and not yet synchronised
  pipe_t writer = PIPE_S;
  uint32_t syncedFor = 0;  // pipes (bit masks) that were synchronised with `writer`
  uint64_t writeSeq = 0;   // the core's operation number of that write
  // Asynchronous reads (V, MTE2, MTE3; scalar reads complete before S goes on) that a later write
  // by another pipe must be ordered after: the pipes reading, and per reader its operation number
  // and the pipes synchronised with it since.
  uint32_t readers = 0;
  uint64_t readSeq[PIPE_ALL] = {};
  uint32_t readSyncedFor[PIPE_ALL] = {};
  const void* owner = nullptr;
};

}  // namespace detail
}  // namespace AscendC

namespace host_sim {
// Per-core UB buffers and pipe ordering: the operation counter, the event flags set and not yet
// waited for, and what a barrier, an event or a queue hand-over settles.
class SlotRegistry {
 public:
  using Slot = AscendC::detail::BufferSlot;
  void add(Slot* slot) { slots_.push_back(slot); }
  uint64_t next() { return ++seq_; }

  void settleAll() {
    for (Slot* s : slots_) {
      s->pending = false;
      s->readers = 0;
    }
  }

  // What `from` did up to operation `upTo` is complete and visible to `to`.
  void settle(AscendC::pipe_t from, AscendC::pipe_t to, uint64_t upTo) {
    const uint32_t toBit = AscendC::detail::pipeBit(to);
    for (Slot* s : slots_) {
      if (s->pending && s->writer == from && s->writeSeq <= upTo) s->syncedFor |= toBit;
      if ((s->readers & AscendC::detail::pipeBit(from)) != 0 && s->readSeq[from] <= upTo) {
        s->readSyncedFor[from] |= toBit;
      }
    }
  }

  void setFlag(int event, int32_t id, const char* name) {
    if (!flags_.emplace(std::make_pair(event, id), seq_).second) {
      fail(std::string("SetFlag<") + name + ">(" + std::to_string(id) +
           ") while the flag is still set (no WaitFlag since): the hardware would lose an event");
    }
  }

  // The operation number at the matching SetFlag.
  uint64_t waitFlag(int event, int32_t id, const char* name) {
    const auto it = flags_.find(std::make_pair(event, id));
    if (it == flags_.end()) {
      fail(std::string("WaitFlag<") + name + ">(" + std::to_string(id) +
           ") without a SetFlag before it: the hardware would wait forever");
    }
    const uint64_t upTo = it->second;
    flags_.erase(it);
    return upTo;
  }

  size_t flagsSet() const { return flags_.size(); }

 private:
  std::vector<Slot*> slots_;
  std::map<std::pair<int, int32_t>, uint64_t> flags_;
  uint64_t seq_ = 0;
};
}  // namespace host_sim

namespace AscendC {

template <class T>
class LocalTensor {
 public:
  using PrimType = T;
  LocalTensor() = default;
  LocalTensor(detail::BufferSlot* slot, uint64_t generation, uint32_t offset, uint32_t size)
      : slot_(slot), generation_(generation), offset_(offset), size_(size) {}

  LocalTensor operator[](uint32_t offset) const {
    check("operator[]");
    if (offset > size_) {
      host_sim::fail("LocalTensor[" + std::to_string(offset) + "] past its " +
                     std::to_string(size_) + " elements");
    }
    return LocalTensor(slot_, generation_, offset_ + offset, size_ - offset);
  }

  template <class U>
  LocalTensor<U> ReinterpretCast() const {
    check("ReinterpretCast");
    return LocalTensor<U>(slot_, generation_,
                          static_cast<uint32_t>(offset_ * sizeof(T) / sizeof(U)),
                          static_cast<uint32_t>(size_ * sizeof(T) / sizeof(U)));
  }

  uint32_t GetSize() const { return size_; }

  T GetValue(uint32_t index) const {
    access("GetValue", PIPE_S, false, index, 1);
    T value;
    std::memcpy(&value, ptr() + index, sizeof(T));
    return value;
  }

  void SetValue(uint32_t index, T value) const {
    access("SetValue", PIPE_S, true, index, 1);
    std::memcpy(ptr() + index, &value, sizeof(T));
  }

  // ---- used by the emulated instructions, not part of the AscendC API ----
  T* ptr() const { return reinterpret_cast<T*>(slot_->data) + offset_; }
  uint32_t ubAddress() const {
    return slot_->ubOffset + offset_ * static_cast<uint32_t>(sizeof(T));
  }
  detail::BufferSlot* slot() const { return slot_; }
  uint64_t generation() const { return generation_; }

  void check(const char* op) const {
    using S = detail::BufferSlot::State;
    if (slot_ == nullptr)
      host_sim::fail(std::string(op) + " on a LocalTensor that was never allocated");
    if (slot_->state == S::Free || slot_->generation != generation_) {
      host_sim::fail(std::string(op) +
                     " on a LocalTensor used after FreeTensor (its buffer was released)");
    }
    if (slot_->state == S::Enqueued) {
      host_sim::fail(std::string(op) +
                     " on a LocalTensor that is enqueued: it is used without DeQue");
    }
  }

  // Checks state, bounds [index, index + count) and the pipe hazards; records the access.
  void access(const char* op, pipe_t pipe, bool write, uint64_t index, uint64_t count) const {
    check(op);
    if (index + count > size_) {
      host_sim::fail(std::string(op) + " touches elements [" + std::to_string(index) + ", " +
                     std::to_string(index + count) + ") of a LocalTensor<" + detail::typeName<T>() +
                     "> of " + std::to_string(size_) + " elements (UB out of bounds)");
    }
    detail::BufferSlot& s = *slot_;
    if (s.pending && s.writer != pipe && (s.syncedFor & detail::pipeBit(pipe)) == 0) {
      host_sim::fail(std::string(op) + " on the " + detail::pipeName(pipe) +
                     " pipe reads/writes a LocalTensor last written by the " +
                     detail::pipeName(s.writer) +
                     " pipe with no event, queue hand-over or PipeBarrier<PIPE_ALL> between "
                     "these two pipes (read-after-write: a race on hardware)");
    }
    host_sim::SlotRegistry& reg = *host_sim::currentCore().slots;
    if (write) {
      for (uint32_t r = 0; r < PIPE_ALL; ++r) {
        if (r == static_cast<uint32_t>(pipe) || (s.readers & (1u << r)) == 0) continue;
        if ((s.readSyncedFor[r] & detail::pipeBit(pipe)) == 0) {
          host_sim::fail(std::string(op) + " on the " + detail::pipeName(pipe) +
                         " pipe overwrites a LocalTensor that the " +
                         detail::pipeName(static_cast<pipe_t>(r)) +
                         " pipe may still be reading, with no event, queue hand-over or "
                         "PipeBarrier<PIPE_ALL> between these two pipes (write-after-read: a "
                         "race on hardware)");
        }
      }
      s.readers = 0;
      s.pending = true;
      s.writer = pipe;
      s.syncedFor = 0;
      s.writeSeq = reg.next();
    } else if (pipe != PIPE_S) {
      s.readers |= detail::pipeBit(pipe);
      s.readSeq[pipe] = reg.next();
      s.readSyncedFor[pipe] = 0;
    }
  }

 private:
  detail::BufferSlot* slot_ = nullptr;
  uint64_t generation_ = 0;
  uint32_t offset_ = 0;  // in elements
  uint32_t size_ = 0;    // in elements
};

template <class T>
class GlobalTensor {
 public:
  void SetGlobalBuffer(__gm__ T* buffer, uint64_t bufferSize) {
    base_ = buffer;
    size_ = bufferSize;
    offset_ = 0;
    sized_ = true;
  }
  // CANN allows the size to be left out; the emulation needs it to check every access.
  void SetGlobalBuffer(__gm__ T* buffer) {
    base_ = buffer;
    size_ = 0;
    offset_ = 0;
    sized_ = false;
  }

  GlobalTensor operator[](uint64_t offset) const {
    GlobalTensor sub = *this;
    sub.offset_ = offset_ + offset;
    return sub;
  }

  T GetValue(uint64_t index) const {
    checkRange("GlobalTensor::GetValue", index, 1);
    host_sim::dataCache().read(host_sim::currentCore().blockIdx, at(index), sizeof(T),
                               "GlobalTensor::GetValue");
    host_sim::recordAccess(host_sim::LaunchState::Touch::kRead, at(index), sizeof(T));
    return base_[offset_ + index];
  }
  void SetValue(uint64_t index, T value) const {
    checkRange("GlobalTensor::SetValue", index, 1);
    base_[offset_ + index] = value;
    host_sim::CoreContext& core = host_sim::currentCore();
    host_sim::dataCache().write(core.blockIdx, at(index), sizeof(T));
    host_sim::recordAccess(host_sim::LaunchState::Touch::kStore, at(index), sizeof(T));
  }
  uint64_t GetSize() const { return size_ > offset_ ? size_ - offset_ : 0; }
  T* GetPhyAddr() const { return base_ + offset_; }

  // ---- emulation helpers ----
  void checkRange(const char* op, uint64_t index, uint64_t count) const {
    if (!sized_) {
      host_sim::fail(std::string(op) +
                     ": GlobalTensor set without a size; pass bufferSize to "
                     "SetGlobalBuffer so that accesses can be checked");
    }
    if (base_ == nullptr && count > 0) host_sim::fail(std::string(op) + " on a null GlobalTensor");
    const uint64_t first = offset_ + index;
    if (first + count > size_) {
      host_sim::fail(std::string(op) + ": global memory out of bounds: elements [" +
                     std::to_string(first) + ", " + std::to_string(first + count) +
                     ") of a GlobalTensor<" + detail::typeName<T>() + "> of " +
                     std::to_string(size_) + " elements");
    }
  }
  T* at(uint64_t index) const { return base_ + offset_ + index; }

 private:
  T* base_ = nullptr;
  uint64_t size_ = 0;
  uint64_t offset_ = 0;
  bool sized_ = false;
};

class TPipe;

// A FIFO of UB buffers between two pipes (TQue), or the copy-through variant (TQueBind).
template <TPosition SRC, TPosition DST, int32_t DEPTH>
class TQueBind {
 public:
  TQueBind() = default;
  TQueBind(const TQueBind&) = delete;
  TQueBind& operator=(const TQueBind&) = delete;

  template <class T>
  LocalTensor<T> AllocTensor() {
    using S = detail::BufferSlot::State;
    if (slots_.empty()) host_sim::fail("AllocTensor on a queue without InitBuffer");
    for (auto& slot : slots_) {
      if (slot.state == S::Free) {
        slot.state = S::Allocated;
        ++slot.generation;
        slot.pending = false;
        // The hardware waits for the consumer of the previous use before handing the buffer
        // to the producer again; other pipes are not ordered.
        slot.readSyncedFor[detail::consumerPipe(DST)] |= detail::pipeBit(detail::producerPipe(SRC));
        std::memset(slot.data, kPoisonByte, slot.bytes);
        return LocalTensor<T>(&slot, slot.generation, 0, slot.bytes / sizeof(T));
      }
    }
    host_sim::fail(
        "AllocTensor: all " + std::to_string(slots_.size()) +
        " buffers of the queue are in use (FreeTensor missing?); the hardware would hang");
  }

  // CANN returns false when the queue is full and drops the tensor, which silently breaks the
  // kernel later; the emulation reports it at the EnQue instead.
  template <class T>
  bool EnQue(const LocalTensor<T>& tensor) {
    using S = detail::BufferSlot::State;
    ownSlot(tensor, "EnQue");
    tensor.check("EnQue");
    if (static_cast<int32_t>(fifo_.size()) >= DEPTH) {
      host_sim::fail("EnQue: queue depth " + std::to_string(DEPTH) +
                     " exceeded (DeQue the previous tensor first)");
    }
    tensor.slot()->state = S::Enqueued;
    // The hand-over orders the queue's producer pipe before its consumer pipe, nothing else:
    // data a scalar loop wrote into a VECOUT buffer still needs a barrier before MTE3 reads it.
    if (tensor.slot()->pending && tensor.slot()->writer == detail::producerPipe(SRC)) {
      tensor.slot()->syncedFor |= detail::pipeBit(detail::consumerPipe(DST));
    }
    fifo_.push_back(tensor.slot());
    return true;
  }

  template <class T>
  LocalTensor<T> DeQue() {
    using S = detail::BufferSlot::State;
    if (fifo_.empty()) host_sim::fail("DeQue on an empty queue; the hardware would wait forever");
    detail::BufferSlot* slot = fifo_.front();
    fifo_.pop_front();
    slot->state = S::Dequeued;
    return LocalTensor<T>(slot, slot->generation, 0, slot->bytes / sizeof(T));
  }

  template <class T>
  void FreeTensor(const LocalTensor<T>& tensor) {
    using S = detail::BufferSlot::State;
    ownSlot(tensor, "FreeTensor");
    tensor.check("FreeTensor");
    tensor.slot()->state = S::Free;
    ++tensor.slot()->generation;
  }

  // ---- emulation helpers ----
  void init(uint8_t* ub, uint32_t ubOffset, uint8_t num, uint32_t len,
            host_sim::SlotRegistry* reg) {
    if (!slots_.empty()) host_sim::fail("InitBuffer twice on one queue");
    slots_.resize(num);
    for (uint8_t i = 0; i < num; ++i) {
      slots_[i].data = ub + static_cast<size_t>(i) * len;
      slots_[i].bytes = len;
      slots_[i].ubOffset = ubOffset + i * len;
      slots_[i].owner = this;
      reg->add(&slots_[i]);
    }
  }

 private:
  template <class T>
  void ownSlot(const LocalTensor<T>& tensor, const char* op) const {
    if (tensor.slot() == nullptr || tensor.slot()->owner != this) {
      host_sim::fail(std::string(op) + " of a LocalTensor that does not belong to this queue");
    }
  }
  std::deque<detail::BufferSlot> slots_;
  std::deque<detail::BufferSlot*> fifo_;
};

template <TPosition POS, int32_t DEPTH>
class TQue : public TQueBind<POS, POS, DEPTH> {};

// Scratch UB without queue semantics (TBuf<TPosition::VECCALC>).
template <TPosition POS = TPosition::VECCALC>
class TBuf {
 public:
  TBuf() = default;
  TBuf(const TBuf&) = delete;
  TBuf& operator=(const TBuf&) = delete;

  template <class T>
  LocalTensor<T> Get() {
    if (!slot_) host_sim::fail("TBuf::Get without InitBuffer");
    return LocalTensor<T>(slot_.get(), slot_->generation, 0, slot_->bytes / sizeof(T));
  }
  template <class T>
  LocalTensor<T> Get(uint32_t count) {
    LocalTensor<T> all = Get<T>();
    if (count > all.GetSize()) {
      host_sim::fail("TBuf::Get(" + std::to_string(count) + ") past the buffer of " +
                     std::to_string(all.GetSize()) + " elements");
    }
    return LocalTensor<T>(slot_.get(), slot_->generation, 0, count);
  }

  void init(uint8_t* ub, uint32_t ubOffset, uint32_t len, host_sim::SlotRegistry* reg) {
    if (POS != TPosition::VECCALC) {
      host_sim::fail(
          "TBuf at a queue position (VECIN/VECOUT): the documentation allows TBuf only at "
          "TPosition::VECCALC on vector cores; use TBuf<TPosition::VECCALC>");
    }
    if (slot_) host_sim::fail("InitBuffer twice on one TBuf");
    slot_ = std::make_unique<detail::BufferSlot>();
    slot_->data = ub;
    slot_->bytes = len;
    slot_->ubOffset = ubOffset;
    slot_->state = detail::BufferSlot::State::Calc;
    slot_->owner = this;
    std::memset(ub, kPoisonByte, len);
    reg->add(slot_.get());
  }

 private:
  std::unique_ptr<detail::BufferSlot> slot_;
};

enum class HardEvent : uint8_t {
  MTE2_S, S_MTE2, MTE3_S, S_MTE3, MTE2_V, V_MTE2, MTE3_V, V_MTE3, S_V, V_S, MTE2_MTE3, MTE3_MTE2
};
using TEventID = int8_t;

namespace detail {
constexpr int32_t kEventIdsPerType = 8;

struct EventInfo {
  pipe_t from, to;
  const char* name;
};

inline EventInfo eventInfo(HardEvent e) {
  switch (e) {
    case HardEvent::MTE2_S: return {PIPE_MTE2, PIPE_S, "MTE2_S"};
    case HardEvent::S_MTE2: return {PIPE_S, PIPE_MTE2, "S_MTE2"};
    case HardEvent::MTE3_S: return {PIPE_MTE3, PIPE_S, "MTE3_S"};
    case HardEvent::S_MTE3: return {PIPE_S, PIPE_MTE3, "S_MTE3"};
    case HardEvent::MTE2_V: return {PIPE_MTE2, PIPE_V, "MTE2_V"};
    case HardEvent::V_MTE2: return {PIPE_V, PIPE_MTE2, "V_MTE2"};
    case HardEvent::MTE3_V: return {PIPE_MTE3, PIPE_V, "MTE3_V"};
    case HardEvent::V_MTE3: return {PIPE_V, PIPE_MTE3, "V_MTE3"};
    case HardEvent::S_V: return {PIPE_S, PIPE_V, "S_V"};
    case HardEvent::V_S: return {PIPE_V, PIPE_S, "V_S"};
    case HardEvent::MTE2_MTE3: return {PIPE_MTE2, PIPE_MTE3, "MTE2_MTE3"};
    default: return {PIPE_MTE3, PIPE_MTE2, "MTE3_MTE2"};
  }
}
}  // namespace detail

inline TPipe*& currentPipe() {
  thread_local TPipe* pipe = nullptr;
  return pipe;
}

// Owns the core's Unified Buffer and carves it into queue / TBuf buffers; hands out event ids.
class TPipe {
 public:
  TPipe() : ub_(host_sim::config().ubBytes) {
    host_sim::currentCore().slots = &registry_;
    currentPipe() = this;
  }
  ~TPipe() {
    if (currentPipe() == this) currentPipe() = nullptr;
    if (registry_.flagsSet() != 0 && std::uncaught_exceptions() == 0) {
      host_sim::currentCore().pendingError =
          "the kernel ended with " + std::to_string(registry_.flagsSet()) +
          " event flag(s) set and never waited for (SetFlag without WaitFlag)";
    }
  }
  TPipe(const TPipe&) = delete;
  TPipe& operator=(const TPipe&) = delete;

  template <TPosition SRC, TPosition DST, int32_t DEPTH>
  void InitBuffer(TQueBind<SRC, DST, DEPTH>& que, uint8_t num, uint32_t len) {
    if (num == 0 || len == 0) host_sim::fail("InitBuffer with num or len 0");
    const uint32_t slotBytes = detail::roundUp32(len);
    const uint32_t offset = reserve(static_cast<uint64_t>(num) * slotBytes, "queue");
    que.init(ub_.data() + offset, offset, num, slotBytes, &registry_);
  }

  template <TPosition POS>
  void InitBuffer(TBuf<POS>& buf, uint32_t len) {
    if (len == 0) host_sim::fail("InitBuffer with len 0");
    const uint32_t bytes = detail::roundUp32(len);
    const uint32_t offset = reserve(bytes, "TBuf");
    buf.init(ub_.data() + offset, offset, bytes, &registry_);
  }

  template <HardEvent E>
  TEventID AllocEventID() {
    int32_t& used = eventIdsUsed_[static_cast<int>(E)];
    if (used >= detail::kEventIdsPerType) {
      host_sim::fail(std::string("AllocEventID<") + detail::eventInfo(E).name + ">: all " +
                     std::to_string(detail::kEventIdsPerType) + " event ids are taken");
    }
    return static_cast<TEventID>(used++);
  }
  template <HardEvent E>
  void ReleaseEventID(TEventID) {
    --eventIdsUsed_[static_cast<int>(E)];
  }

  uint32_t usedBytes() const { return used_; }
  host_sim::SlotRegistry& registry() { return registry_; }

 private:
  uint32_t reserve(uint64_t bytes, const char* what) {
    if (used_ + bytes > ub_.size()) {
      host_sim::fail("Unified Buffer overflow: InitBuffer of a " + std::string(what) + " (" +
                     std::to_string(bytes) + " bytes) brings this core's UB use to " +
                     std::to_string(used_ + bytes) + " bytes > capacity " +
                     std::to_string(ub_.size()) + " bytes");
    }
    const uint32_t offset = used_;
    used_ += static_cast<uint32_t>(bytes);
    return offset;
  }
  std::vector<uint8_t> ub_;
  uint32_t used_ = 0;
  std::map<int, int32_t> eventIdsUsed_;
  host_sim::SlotRegistry registry_;
};

inline TPipe* GetTPipePtr() {
  if (currentPipe() == nullptr) host_sim::fail("GetTPipePtr without a TPipe on this core");
  return currentPipe();
}

// ---------------------------------------------------------------- core queries and barriers

inline int64_t GetBlockIdx() { return host_sim::currentCore().blockIdx; }
inline int64_t GetBlockNum() { return host_sim::currentCore().launch->blockNum; }

template <pipe_t PIPE>
inline void PipeBarrier() {
  // Only a full barrier orders different pipes; PIPE_V etc. order a pipe with itself.
  if (PIPE == PIPE_ALL) {
    host_sim::CoreContext& core = host_sim::currentCore();
    if (core.slots != nullptr) core.slots->settleAll();
  }
}

// The source pipe raises the flag once everything it was given before is done; the destination
// pipe's WaitFlag blocks until then. Set and wait come in pairs with the same id.
template <HardEvent E>
inline void SetFlag(int32_t id) {
  GetTPipePtr()->registry().setFlag(static_cast<int>(E), id, detail::eventInfo(E).name);
}

template <HardEvent E>
inline void WaitFlag(int32_t id) {
  host_sim::SlotRegistry& reg = GetTPipePtr()->registry();
  const detail::EventInfo info = detail::eventInfo(E);
  reg.settle(info.from, info.to, reg.waitFlag(static_cast<int>(E), id, info.name));
}

template <bool isAIVOnly = true>
inline void SyncAll() {
  host_sim::CoreContext& core = host_sim::currentCore();
  if (core.slots != nullptr) core.slots->settleAll();  // SyncAll waits for all pipes of the core
  host_sim::syncAllCores();
}

// ---------------------------------------------------------------- DataCache

enum class CacheLine : uint8_t { SINGLE_CACHE_LINE, ENTIRE_DATA_CACHE };
enum class DcciDst : uint8_t { CACHELINE_ALL, CACHELINE_UB, CACHELINE_OUT, CACHELINE_ATOMIC };

constexpr uint64_t kDataCacheLineBytes = 64;

// Drops the core's DataCache line holding `dst`'s first element (its 64-byte line), or every
// line, so the scalar unit's next GetValue there reads GM (host_sim::DataCacheModel).
template <class T, CacheLine entireType, DcciDst dcciDst>
inline void DataCacheCleanAndInvalid(const GlobalTensor<T>& dst) {
  static_assert(dcciDst == DcciDst::CACHELINE_OUT || dcciDst == DcciDst::CACHELINE_ALL,
                "eplb_rt's kernels keep the DataCache coherent with GM (CACHELINE_OUT)");
  const uintptr_t first = reinterpret_cast<uintptr_t>(dst.GetPhyAddr());
  const uintptr_t line = first / kDataCacheLineBytes * kDataCacheLineBytes;
  host_sim::dataCache().invalidate(host_sim::currentCore().blockIdx,
                                   reinterpret_cast<const void*>(line),
                                   reinterpret_cast<const void*>(line + kDataCacheLineBytes),
                                   entireType == CacheLine::ENTIRE_DATA_CACHE);
}

// ---------------------------------------------------------------- atomics

template <class T>
inline void SetAtomicAdd() {
  // The documented types: int8, int16, int32, half, bfloat16, float; no unsigned or 64-bit one.
  if (sizeof(T) == 8 || std::is_unsigned<T>::value) {
    host_sim::fail(std::string("SetAtomicAdd<") + detail::typeName<T>() +
                   ">: atomic add on unsigned or 64-bit types is not supported by the hardware "
                   "(use int32 or reduce on one core)");
  }
  host_sim::CoreContext& core = host_sim::currentCore();
  core.atomicAdd = true;
  core.atomicType = detail::typeName<T>();
  core.atomicSize = sizeof(T);
}

inline void SetAtomicNone() {
  host_sim::CoreContext& core = host_sim::currentCore();
  core.atomicAdd = false;
  core.atomicType = "";
  core.atomicSize = 0;
}

namespace detail {

// Writes `count` elements from UB to GM: plain store, or atomic add when SetAtomicAdd is on.
template <class T>
void storeToGm(T* dst, const T* src, uint64_t count) {
  host_sim::CoreContext& core = host_sim::currentCore();
  if (!core.atomicAdd) {
    std::memcpy(dst, src, count * sizeof(T));
    host_sim::recordAccess(host_sim::LaunchState::Touch::kStore, dst, count * sizeof(T));
    return;
  }
  if (std::strcmp(core.atomicType, typeName<T>()) != 0) {
    host_sim::fail(std::string("copy of ") + typeName<T>() + " data to GM while SetAtomicAdd<" +
                   core.atomicType + "> is in force");
  }
  host_sim::recordAccess(host_sim::LaunchState::Touch::kAtomicAdd, dst, count * sizeof(T));
  std::lock_guard<std::mutex> lock(host_sim::atomicMutex());
  for (uint64_t i = 0; i < count; ++i) {
    if constexpr (std::is_integral<T>::value) {
      // wrap like the hardware's two's complement adder, without signed-overflow UB in C++
      using U = typename std::make_unsigned<T>::type;
      dst[i] = static_cast<T>(static_cast<U>(dst[i]) + static_cast<U>(src[i]));
    } else {
      dst[i] = dst[i] + src[i];
    }
  }
}

template <class T>
void checkUbAligned(const LocalTensor<T>& t, const char* op) {
  if (t.ubAddress() % kBlockBytes != 0) {
    host_sim::fail(std::string(op) + ": UB address " + std::to_string(t.ubAddress()) +
                   " is not 32-byte aligned");
  }
}

template <class T>
void checkWholeBlocks(uint64_t count, const char* op) {
  const uint64_t bytes = count * sizeof(T);
  // One burst of blockLen 32-byte blocks, blockLen in [1, 65535].
  if (bytes == 0 || bytes / kBlockBytes > 65535) {
    host_sim::fail(std::string(op) + " of " + std::to_string(count) + " x " + typeName<T>() +
                   " = " + std::to_string(bytes) +
                   " bytes: outside the supported range (1 to 65535 blocks of 32 bytes)");
  }
  if (bytes % kBlockBytes != 0) {
    host_sim::fail(std::string(op) + " of " + std::to_string(count) + " x " + typeName<T>() +
                   " = " + std::to_string(bytes) +
                   " bytes: not a multiple of 32 bytes (the hardware moves whole 32-byte blocks); "
                   "use DataCopyPad for the tail");
  }
}

}  // namespace detail

// ---------------------------------------------------------------- data movement

struct DataCopyExtParams {
  DataCopyExtParams() = default;
  DataCopyExtParams(uint16_t count, uint32_t len, uint32_t srcStrideIn, uint32_t dstStrideIn,
                    uint32_t rsvIn)
      : blockCount(count),
        blockLen(len),
        srcStride(srcStrideIn),
        dstStride(dstStrideIn),
        rsv(rsvIn) {}
  uint16_t blockCount = 0;
  uint32_t blockLen = 0;   // bytes
  uint32_t srcStride = 0;  // gap between blocks: bytes on GM, 32-byte blocks on UB
  uint32_t dstStride = 0;
  uint32_t rsv = 0;
};

namespace detail {
// DataCopyPad's documented ranges: blockCount in [1, 4095], blockLen in [1, 65535] bytes.
inline void checkPadParams(const DataCopyExtParams& params, const char* op) {
  if (params.blockCount == 0 || params.blockCount > 4095 || params.blockLen == 0 ||
      params.blockLen > 65535) {
    host_sim::fail(std::string(op) + ": blockCount " + std::to_string(params.blockCount) +
                   " and blockLen " + std::to_string(params.blockLen) +
                   " bytes outside the supported ranges (1 <= blockCount <= 4095, 1 <= blockLen "
                   "<= 65535)");
  }
}
}  // namespace detail

template <class T>
struct DataCopyPadExtParams {
  DataCopyPadExtParams() = default;
  DataCopyPadExtParams(bool isPadIn, uint8_t left, uint8_t right, T value)
      : isPad(isPadIn), leftPadding(left), rightPadding(right), paddingValue(value) {}
  bool isPad = false;
  uint8_t leftPadding = 0;
  uint8_t rightPadding = 0;
  T paddingValue = 0;
};

// GM -> UB, whole 32-byte blocks.
template <class T>
void DataCopy(const LocalTensor<T>& dst, const GlobalTensor<T>& src, uint32_t count) {
  detail::checkWholeBlocks<T>(count, "DataCopy GM->UB");
  detail::checkUbAligned(dst, "DataCopy GM->UB");
  src.checkRange("DataCopy GM->UB", 0, count);
  dst.access("DataCopy GM->UB", PIPE_MTE2, true, 0, count);
  host_sim::recordAccess(host_sim::LaunchState::Touch::kRead, src.at(0), count * sizeof(T));
  std::memcpy(dst.ptr(), src.at(0), static_cast<size_t>(count) * sizeof(T));
}

// UB -> GM, whole 32-byte blocks (atomic add when SetAtomicAdd is in force).
template <class T>
void DataCopy(const GlobalTensor<T>& dst, const LocalTensor<T>& src, uint32_t count) {
  detail::checkWholeBlocks<T>(count, "DataCopy UB->GM");
  detail::checkUbAligned(src, "DataCopy UB->GM");
  dst.checkRange("DataCopy UB->GM", 0, count);
  src.access("DataCopy UB->GM", PIPE_MTE3, false, 0, count);
  detail::storeToGm(dst.at(0), src.ptr(), count);
}

// GM -> UB, any byte length: each of blockCount blocks of blockLen bytes lands at a 32-byte
// aligned UB position; the bytes up to the next 32-byte boundary get paddingValue if isPad.
template <class T>
void DataCopyPad(const LocalTensor<T>& dst, const GlobalTensor<T>& src,
                 const DataCopyExtParams& params, const DataCopyPadExtParams<T>& pad) {
  const char* op = "DataCopyPad GM->UB";
  detail::checkPadParams(params, op);
  if (params.blockLen % sizeof(T) != 0) {
    host_sim::fail(std::string(op) + ": blockLen " + std::to_string(params.blockLen) +
                   " bytes is not a whole number of " + detail::typeName<T>() + " elements");
  }
  detail::checkUbAligned(dst, op);
  const uint64_t elems = params.blockLen / sizeof(T);
  const uint64_t ubPitch =
      (detail::roundUp32(params.blockLen) + params.dstStride * kBlockBytes) / sizeof(T);
  const uint64_t gmPitch = elems + params.srcStride / sizeof(T);
  const uint64_t ubExtent =
      (params.blockCount - 1) * ubPitch + detail::roundUp32(params.blockLen) / sizeof(T);
  src.checkRange(op, 0, (params.blockCount - 1) * gmPitch + elems);
  dst.access(op, PIPE_MTE2, true, 0, ubExtent);
  for (uint32_t b = 0; b < params.blockCount; ++b) {
    T* out = dst.ptr() + b * ubPitch;
    host_sim::recordAccess(host_sim::LaunchState::Touch::kRead, src.at(b * gmPitch),
                           elems * sizeof(T));
    std::memcpy(out, src.at(b * gmPitch), elems * sizeof(T));
    const uint64_t padElems = detail::roundUp32(params.blockLen) / sizeof(T) - elems;
    for (uint64_t i = 0; i < padElems; ++i) {
      if (pad.isPad) {
        out[elems + i] = pad.paddingValue;
      } else {
        std::memset(out + elems + i, kPoisonByte, sizeof(T));
      }
    }
  }
}

// UB -> GM, any byte length; only blockLen bytes of each block reach GM.
template <class T>
void DataCopyPad(const GlobalTensor<T>& dst, const LocalTensor<T>& src,
                 const DataCopyExtParams& params) {
  const char* op = "DataCopyPad UB->GM";
  detail::checkPadParams(params, op);
  if (params.blockLen % sizeof(T) != 0) {
    host_sim::fail(std::string(op) + ": blockLen " + std::to_string(params.blockLen) +
                   " bytes is not a whole number of " + detail::typeName<T>() + " elements");
  }
  detail::checkUbAligned(src, op);
  const uint64_t elems = params.blockLen / sizeof(T);
  const uint64_t ubPitch =
      (detail::roundUp32(params.blockLen) + params.srcStride * kBlockBytes) / sizeof(T);
  const uint64_t gmPitch = elems + params.dstStride / sizeof(T);
  dst.checkRange(op, 0, (params.blockCount - 1) * gmPitch + elems);
  src.access(op, PIPE_MTE3, false, 0, (params.blockCount - 1) * ubPitch + elems);
  for (uint32_t b = 0; b < params.blockCount; ++b) {
    detail::storeToGm(dst.at(b * gmPitch), src.ptr() + b * ubPitch, elems);
  }
}

// ---------------------------------------------------------------- vector instructions

template <class T>
void Duplicate(const LocalTensor<T>& dst, const T& scalar, int32_t count) {
  detail::checkUbAligned(dst, "Duplicate");
  dst.access("Duplicate", PIPE_V, true, 0, static_cast<uint64_t>(count));
  std::fill(dst.ptr(), dst.ptr() + count, scalar);
}

template <class T>
void Add(const LocalTensor<T>& dst, const LocalTensor<T>& src0, const LocalTensor<T>& src1,
         int32_t count) {
  detail::checkUbAligned(dst, "Add");
  detail::checkUbAligned(src0, "Add");
  detail::checkUbAligned(src1, "Add");
  src0.access("Add", PIPE_V, false, 0, static_cast<uint64_t>(count));
  src1.access("Add", PIPE_V, false, 0, static_cast<uint64_t>(count));
  dst.access("Add", PIPE_V, true, 0, static_cast<uint64_t>(count));
  for (int32_t i = 0; i < count; ++i) dst.ptr()[i] = static_cast<T>(src0.ptr()[i] + src1.ptr()[i]);
}

template <class T>
void Adds(const LocalTensor<T>& dst, const LocalTensor<T>& src, const T& scalar, int32_t count) {
  detail::checkUbAligned(dst, "Adds");
  detail::checkUbAligned(src, "Adds");
  src.access("Adds", PIPE_V, false, 0, static_cast<uint64_t>(count));
  dst.access("Adds", PIPE_V, true, 0, static_cast<uint64_t>(count));
  for (int32_t i = 0; i < count; ++i) dst.ptr()[i] = static_cast<T>(src.ptr()[i] + scalar);
}

}  // namespace AscendC
