// Host emulation runtime: AI cores as threads, per-core state, the error type, the launch.
//
// This file holds what is not AscendC API: configuration (Unified Buffer size, SyncAll timeout),
// the launch of a kernel body on `blockDim` threads (one per emulated AI core), the cross-core
// barrier behind SyncAll, and the error every check raises. The API subset itself lives in
// kernel_operator.h, which kernels include exactly as they include CANN's header.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <exception>
#include <mutex>
#include <sstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <utility>
#include <vector>

namespace host_sim {

// Raised by every check of the emulation: the message says what the hardware would do.
class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& what) : std::runtime_error(what) {}
};

struct Config {
  uint32_t ubBytes = 192 * 1024;  // Unified Buffer per AI core (Atlas A2: 192 KiB)
  int syncAllTimeoutMs = 2000;    // a SyncAll that waits longer is reported, not hung
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
};

class SlotRegistry;  // per-core list of UB buffers, for PipeBarrier (kernel_operator.h)

struct CoreContext {
  uint32_t blockIdx = 0;
  LaunchState* launch = nullptr;
  SlotRegistry* slots = nullptr;  // set by the core's TPipe
  bool atomicAdd = false;         // SetAtomicAdd in force for UB -> GM copies
  const char* atomicType = "";    // element type of the atomic add
  size_t atomicSize = 0;
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

// Global memory is shared by all cores; atomic adds from different cores are serialised here.
inline std::mutex& atomicMutex() {
  static std::mutex m;
  return m;
}

// The hardware all-core barrier. Fails instead of hanging when a core exited without arriving,
// another core failed, or the wait passed Config::syncAllTimeoutMs.
inline void syncAllCores() {
  CoreContext& core = currentCore();
  LaunchState& st = *core.launch;
  std::unique_lock<std::mutex> lock(st.mutex);
  if (st.aborted)
    throw Error("core " + std::to_string(core.blockIdx) + ": aborted (another core failed)");
  const uint64_t myRound = st.round;
  if (++st.arrived == st.blockNum) {
    st.arrived = 0;
    ++st.round;
    st.cv.notify_all();
    return;
  }
  const auto deadline =
      std::chrono::steady_clock::now() + std::chrono::milliseconds(config().syncAllTimeoutMs);
  while (st.round == myRound) {
    if (st.aborted)
      throw Error("core " + std::to_string(core.blockIdx) + ": aborted (another core failed)");
    if (st.exited > 0) {
      const uint32_t arrived = st.arrived;
      --st.arrived;
      fail("SyncAll: " + std::to_string(st.exited) +
           " core(s) finished the kernel without reaching this "
           "SyncAll (" +
           std::to_string(arrived) + " of " + std::to_string(st.blockNum) +
           " cores arrived); the hardware would hang");
    }
    if (st.cv.wait_until(lock, deadline) == std::cv_status::timeout && st.round == myRound) {
      const uint32_t arrived = st.arrived;
      --st.arrived;
      fail("SyncAll timed out after " + std::to_string(config().syncAllTimeoutMs) +
           " ms: " + std::to_string(arrived) + " of " + std::to_string(st.blockNum) +
           " cores arrived; the hardware would hang");
    }
  }
}

// Runs `body` once per emulated AI core, each on its own thread (SyncAll needs them concurrent).
// The first failure is re-raised on the calling thread with the kernel name.
template <class Body>
void Launch(const char* kernelName, uint32_t blockDim, Body body) {
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
    } catch (const std::exception& e) {
      std::lock_guard<std::mutex> lock(st.mutex);
      if (!st.aborted) st.firstError = e.what();
      st.aborted = true;
    }
    currentCorePtr() = nullptr;
    std::lock_guard<std::mutex> lock(st.mutex);
    ++st.exited;
    st.cv.notify_all();
  };
  std::vector<std::thread> threads;
  threads.reserve(blockDim);
  for (uint32_t i = 0; i < blockDim; ++i) threads.emplace_back(runCore, i);
  for (auto& t : threads) t.join();
  if (st.aborted) throw Error(std::string(kernelName) + ": " + st.firstError);
}

}  // namespace host_sim
