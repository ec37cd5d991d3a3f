// Host emulation runtime: AI cores as threads, per-core state, the error type, the launch.
//
// This file holds what is not AscendC API: configuration (the SoC, hence the Unified Buffer size,
// from eplb_platform.h; the SyncAll timeout), the launch of a kernel body on `blockDim` threads
// (one per vector core: the kernels pin KERNEL_TYPE_AIV_ONLY), the cross-core barrier behind
// SyncAll, and the error every check raises. The API subset itself lives in
// kernel_operator.h, which kernels include exactly as they include CANN's header.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstring>
#include <exception>
#include <map>
#include <mutex>
#include <sstream>
#include <stdexcept>
#include <string>
#include <algorithm>
#include <thread>
#include <utility>
#include <vector>

#include "eplb_platform.h"

// Kernel types of KERNEL_TASK_TYPE_DEFAULT; only vector-only kernels are emulated.
enum KernelType { KERNEL_TYPE_AIV_ONLY, KERNEL_TYPE_AIC_ONLY, KERNEL_TYPE_MIX_AIC_1_2 };
#define KERNEL_TASK_TYPE_DEFAULT(type) ::host_sim::SetKernelType(type, #type)

namespace host_sim {

// Raised by every check of the emulation: the message says what the hardware would do.
class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& what) : std::runtime_error(what) {}
};

struct Config {
  // Unified Buffer per vector core of the default SoC (Atlas A2: 184 KiB of its 192).
  uint32_t ubBytes = eplb_ascendc::FindSoc(eplb_ascendc::kDefaultSoc)->ubBytes;
  int syncAllTimeoutMs = 2000;  // a SyncAll that waits longer is reported, not hung
};

inline Config& config() {
  static Config cfg;
  return cfg;
}

// State shared by the cores of one launch: the SyncAll barrier and the abort flag.
struct LaunchState {
  uint32_t blockNum = 0;
  std::mutex mutex;
  std::condition_variable cv;
  uint32_t arrived = 0;    // cores waiting in the current SyncAll round
  uint64_t round = 0;      // completed SyncAll rounds
  uint32_t exited = 0;     // cores that returned from the kernel
  bool aborted = false;    // a core failed: the others stop at their next SyncAll
  std::string firstError;  // the first failure, reported to the caller
  // GM bytes [lo, hi) each core read, stored or atomically added, and in which SyncAll round
  // (gathered from the cores as they exit): see racingAccesses.
  enum class Touch : uint8_t { kRead, kStore, kAtomicAdd };
  struct Access {
    uintptr_t lo, hi;
    uint32_t core;
    uint64_t round;
    Touch kind;
  };
  std::vector<Access> accesses;
};

namespace detail {

// Whether touches of the same bytes by two cores in one SyncAll round race: any store with
// anything, an atomic add with a read; reads together and atomic adds together do not.
inline bool touchesRace(LaunchState::Touch a, LaunchState::Touch b) {
  using T = LaunchState::Touch;
  if (a == T::kRead && b == T::kRead) return false;
  if (a == T::kAtomicAdd && b == T::kAtomicAdd) return false;
  return true;
}

inline std::string raceMessage(const LaunchState::Access& a, const LaunchState::Access& b,
                               uintptr_t shared) {
  using T = LaunchState::Touch;
  const std::string bytes = std::to_string(shared) + " GM bytes";
  if (a.kind == T::kStore && b.kind == T::kStore) {
    return "cores " + std::to_string(a.core) + " and " + std::to_string(b.core) + " both store " +
           bytes + " without SetAtomicAdd and without a SyncAll between: which lands last " +
           "varies (a race)";
  }
  if (a.kind != T::kRead && b.kind != T::kRead) {  // a store and an atomic add
    const auto& store = a.kind == T::kStore ? a : b;
    const auto& add = a.kind == T::kStore ? b : a;
    return "core " + std::to_string(store.core) + " stores and core " + std::to_string(add.core) +
           " atomically adds " + bytes + " without a SyncAll between: which lands last varies " +
           "(a race)";
  }
  const auto& read = a.kind == T::kRead ? a : b;
  const auto& write = a.kind == T::kRead ? b : a;
  return "core " + std::to_string(read.core) + " reads " + bytes + " that core " +
         std::to_string(write.core) +
         (write.kind == T::kStore ? " stores" : " atomically adds to") +
         " without a SyncAll between: whether it sees the old or the new value varies (a race)";
}

}  // namespace detail

// The first pair of cores whose touches of the same GM bytes in one SyncAll round race
// (detail::touchesRace), as a message ("" when none). One sweep in address order per round:
// for each kind, the two touches seen so far reaching furthest from two different cores are
// enough to find a racing earlier touch from another core.
inline std::string racingAccesses(std::vector<LaunchState::Access> accesses) {
  std::sort(accesses.begin(), accesses.end(), [](const auto& a, const auto& b) {
    return a.round != b.round ? a.round < b.round : a.lo < b.lo;
  });
  constexpr int kKinds = 3;
  const LaunchState::Access* reach[kKinds][2] = {};  // [kind][furthest, furthest of another core]
  for (size_t i = 0; i < accesses.size(); ++i) {
    const auto& b = accesses[i];
    if (i == 0 || b.round != accesses[i - 1].round) {
      for (auto& kind : reach) kind[0] = kind[1] = nullptr;
    }
    for (int k = 0; k < kKinds; ++k) {
      if (!detail::touchesRace(static_cast<LaunchState::Touch>(k), b.kind)) continue;
      const LaunchState::Access* a = reach[k][0];
      if (a != nullptr && a->core == b.core) a = reach[k][1];
      if (a != nullptr && a->hi > b.lo) {
        return detail::raceMessage(*a, b, (a->hi < b.hi ? a->hi : b.hi) - b.lo);
      }
    }
    auto& top = reach[static_cast<int>(b.kind)];
    if (top[0] == nullptr || b.hi > top[0]->hi) {
      if (top[0] != nullptr && top[0]->core != b.core) top[1] = top[0];
      top[0] = &b;
    } else if (b.core != top[0]->core && (top[1] == nullptr || b.hi > top[1]->hi)) {
      top[1] = &b;
    }
  }
  return "";
}

class SlotRegistry;  // per-core list of UB buffers, for PipeBarrier (kernel_operator.h)

struct CoreContext {
  uint32_t blockIdx = 0;
  LaunchState* launch = nullptr;
  SlotRegistry* slots = nullptr;  // set by the core's TPipe
  bool atomicAdd = false;         // SetAtomicAdd in force for UB -> GM copies
  const char* atomicType = "";    // element type of the atomic add
  size_t atomicSize = 0;
  bool aivOnly = false;      // KERNEL_TASK_TYPE_DEFAULT(KERNEL_TYPE_AIV_ONLY) ran
  std::string pendingError;  // found when the core's TPipe went away (reported at exit)
  uint64_t round = 0;        // SyncAll rounds this core has passed
  // Its GM touches (recordAccess), handed to the launch as the core exits.
  std::vector<LaunchState::Access> accesses;
};

inline CoreContext*& currentCorePtr() {
  thread_local CoreContext* core = nullptr;
  return core;
}

[[noreturn]] inline void fail(const std::string& message) {
  CoreContext* core = currentCorePtr();
  std::ostringstream out;
  if (core != nullptr) out << "core " << core->blockIdx << ": ";
  out << message;
  throw Error(out.str());
}

inline CoreContext& currentCore() {
  CoreContext* core = currentCorePtr();
  if (core == nullptr) fail("AscendC API used outside a kernel launch (host_sim::Launch)");
  return *core;
}

// Records a touch of GM bytes [address, address + bytes) by the current core, merged with its
// previous one where it continues it (same kind and round): a tile loop stays one record.
inline void recordAccess(LaunchState::Touch kind, const void* address, size_t bytes) {
  CoreContext& core = currentCore();
  const uintptr_t lo = reinterpret_cast<uintptr_t>(address);
  auto& list = core.accesses;
  if (!list.empty() && list.back().kind == kind && list.back().round == core.round &&
      list.back().hi == lo) {
    list.back().hi = lo + bytes;
    return;
  }
  list.push_back({lo, lo + bytes, core.blockIdx, core.round, kind});
}

// Global memory is shared by all cores; atomic adds from different cores are serialised here.
inline std::mutex& atomicMutex() {
  static std::mutex m;
  return m;
}

inline void SetKernelType(KernelType type, const char* name) {
  if (type != KERNEL_TYPE_AIV_ONLY) {
    fail(std::string("KERNEL_TASK_TYPE_DEFAULT(") + name +
         "): eplb_rt's kernels are vector-only; pin KERNEL_TYPE_AIV_ONLY");
  }
  currentCore().aivOnly = true;
}

// The hardware all-core barrier. Fails instead of hanging when a core exited without arriving,
// another core failed, or the wait passed Config::syncAllTimeoutMs. The first core to give up
// records the launch's error under the lock, so the cores that give up with it (their timeouts
// fall together) cannot replace it with a message counted after its departure.
inline void syncAllCores() {
  CoreContext& core = currentCore();
  LaunchState& st = *core.launch;
  std::unique_lock<std::mutex> lock(st.mutex);
  const auto giveUp = [&](const std::string& why) {
    const std::string message = "core " + std::to_string(core.blockIdx) + ": " + why;
    if (!st.aborted) st.firstError = message;
    st.aborted = true;
    st.cv.notify_all();
    throw Error(message);
  };
  if (st.aborted) giveUp("aborted (another core failed)");
  const uint64_t myRound = st.round;
  if (++st.arrived == st.blockNum) {
    st.arrived = 0;
    ++st.round;
    ++core.round;
    st.cv.notify_all();
    return;
  }
  const auto deadline =
      std::chrono::steady_clock::now() + std::chrono::milliseconds(config().syncAllTimeoutMs);
  while (st.round == myRound) {
    if (st.aborted) giveUp("aborted (another core failed)");
    if (st.exited > 0) {
      giveUp("SyncAll: " + std::to_string(st.exited) +
             " core(s) finished the kernel without reaching this SyncAll (" +
             std::to_string(st.arrived) + " of " + std::to_string(st.blockNum) +
             " cores arrived); the hardware would hang");
    }
    if (st.cv.wait_until(lock, deadline) == std::cv_status::timeout && st.round == myRound &&
        !st.aborted) {
      giveUp("SyncAll timed out after " + std::to_string(config().syncAllTimeoutMs) +
             " ms: " + std::to_string(st.arrived) + " of " + std::to_string(st.blockNum) +
             " cores arrived; the hardware would hang");
    }
  }
  ++core.round;
}

// The scalar unit reads and writes GM through a DataCache of its core, which keeps its lines
// from one launch to the next: a value read again after GM changed under it (written by another
// core, a copy engine, an earlier kernel, or the host between launches, as a step counter is)
// comes back stale unless DataCacheCleanAndInvalid dropped the line first. Modelled per emulated
// core and element address: a scalar read remembers the bytes it saw, and a later read of the
// same address that finds other bytes in GM is reported.
class DataCacheModel {
 public:
  void read(uint32_t core, const void* address, size_t size, const char* op) {
    const uint64_t now = load(address, size);
    std::lock_guard<std::mutex> lock(mutex_);
    auto& seen = lines_[core];
    const auto it = seen.find(key(address));
    if (it != seen.end() && it->second != now) {
      fail(std::string(op) +
           ": the DataCache returns a value GM no longer holds (GM changed since this core read "
           "that address, in this launch or an earlier one); call DataCacheCleanAndInvalid "
           "before a scalar read of GM that another core, a copy or the host writes");
    }
    seen[key(address)] = now;
  }
  void write(uint32_t core, const void* address, size_t size) {
    const uint64_t now = load(address, size);
    std::lock_guard<std::mutex> lock(mutex_);
    lines_[core][key(address)] = now;
  }
  // Drops this core's lines in [lo, hi), or all of them with entire.
  void invalidate(uint32_t core, const void* lo, const void* hi, bool entire) {
    std::lock_guard<std::mutex> lock(mutex_);
    auto& seen = lines_[core];
    if (entire) {
      seen.clear();
      return;
    }
    seen.erase(seen.lower_bound(key(lo)), seen.lower_bound(key(hi)));
  }

 private:
  static uintptr_t key(const void* address) { return reinterpret_cast<uintptr_t>(address); }
  static uint64_t load(const void* address, size_t size) {
    uint64_t bits = 0;
    std::memcpy(&bits, address, size < sizeof(bits) ? size : sizeof(bits));
    return bits;
  }
  std::mutex mutex_;
  std::map<uint32_t, std::map<uintptr_t, uint64_t>> lines_;
};

inline DataCacheModel& dataCache() {
  static DataCacheModel cache;
  return cache;
}

// Runs `body` once per emulated vector core, each on its own thread (SyncAll needs them
// concurrent), synchronously (the stream is not used). The first failure is re-raised on the
// calling thread with the kernel name; returns 0, the launch status of an accepted launch.
template <class Body>
uint32_t Launch(const char* kernelName, uint32_t blockDim, Body body, const void* stream) {
  (void)stream;
  if (blockDim == 0) throw Error(std::string(kernelName) + ": launch with blockDim 0");
  LaunchState st;
  st.blockNum = blockDim;
  auto runCore = [&](uint32_t idx) {
    CoreContext core;
    core.blockIdx = idx;
    core.launch = &st;
    currentCorePtr() = &core;
    try {
      body();
      if (!core.pendingError.empty()) fail(core.pendingError);
      if (!core.aivOnly) {
        fail(std::string(kernelName) +
             " does not pin its type with KERNEL_TASK_TYPE_DEFAULT(KERNEL_TYPE_AIV_ONLY): "
             "blockDim would count AI cores of a mixed kernel, not vector cores");
      }
    } catch (const std::exception& e) {
      std::lock_guard<std::mutex> lock(st.mutex);
      if (!st.aborted) st.firstError = e.what();
      st.aborted = true;
    }
    currentCorePtr() = nullptr;
    std::lock_guard<std::mutex> lock(st.mutex);
    st.accesses.insert(st.accesses.end(), core.accesses.begin(), core.accesses.end());
    ++st.exited;
    st.cv.notify_all();
  };
  std::vector<std::thread> threads;
  threads.reserve(blockDim);
  for (uint32_t i = 0; i < blockDim; ++i) threads.emplace_back(runCore, i);
  for (auto& t : threads) t.join();
  if (st.aborted) throw Error(std::string(kernelName) + ": " + st.firstError);
  const std::string race = racingAccesses(std::move(st.accesses));
  if (!race.empty()) throw Error(std::string(kernelName) + ": " + race);
  return 0;
}

}  // namespace host_sim
