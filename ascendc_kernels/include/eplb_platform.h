// Per-SoC facts of the Ascend parts eplb_rt builds for: one table for the host tiling (csrc/npu),
// the build summary and the host emulation, so the tests run the kernels under the limits the
// device enforces. Plain C++17, host only (the kernels get every size through their tiling).
//
// A SOC_VERSION (CANN's name, e.g. Ascend910B1, Ascend910_9391) belongs to the family whose
// prefix it starts with, a digit next: Ascend910B1-B4 (B2C, B4-1) are the A2 parts, while a
// plain Ascend910B is a part of the older Atlas training series, on which DataCopyPad does not
// exist (CANN lists it with the first Ascend910). A kernel binary runs on the SoCs of its own
// family only: an A2 binary launched on an A3 fails to launch (the launchers report it). Not
// here: the Atlas inference parts (Ascend310P), whose AI Core has neither DataCopyPad nor an
// int32 SetAtomicAdd, which every kernel moves and counts with (CANN's API reference, "product
// support").
#pragma once

#include <stdint.h>
#include <string.h>

namespace eplb_ascendc {

// The Unified Buffer a kernel may use on these parts: the first 184 KiB of each vector core's
// 192 KiB. AscendC keeps the last 8 KiB for itself: scratch that some of its APIs write (the
// temporary buffer at 184 KiB on the 220 architecture of the A2 and A3, CANN's API headers), and
// its runtime's own reserve at the very end. Today's kernels call no API that uses the scratch;
// sizing tiles into it would break them the day one does, and no device build would say so.
constexpr uint32_t kUbUsableBytes = 184 * 1024;

struct SocInfo {
  const char* prefix;    // SOC_VERSION names of the family start with this, then a digit
  const char* family;    // for messages
  uint32_t ubBytes;      // Unified Buffer a kernel may use per vector core
  uint32_t vectorCores;  // AIV cores of the family's largest part: the emulation's default
                         // core count; on a device the launchers ask ACL instead
};

// Longest prefixes first: "Ascend910_93" must win over a shorter "Ascend910".
constexpr SocInfo kSocTable[] = {
    {"Ascend910_93", "Atlas A3 (Ascend910_93xx)", kUbUsableBytes, 48},
    {"Ascend910B", "Atlas A2 (Ascend910B)", kUbUsableBytes, 48},
};

// The SoC CMake compiles for when neither SOC_VERSION nor npu-smi says otherwise.
constexpr const char* kDefaultSoc = "Ascend910B1";

// The family entry of a SOC_VERSION name, or nullptr for a SoC eplb_rt does not know.
inline const SocInfo* FindSoc(const char* name) {
  if (name == nullptr) return nullptr;
  for (const SocInfo& soc : kSocTable) {
    const size_t n = strlen(soc.prefix);
    if (strncmp(name, soc.prefix, n) == 0 && name[n] >= '0' && name[n] <= '9') return &soc;
  }
  return nullptr;
}

// Whether a binary built for `built` can run on `device` (same family).
inline bool SameSocFamily(const char* built, const char* device) {
  const SocInfo* a = FindSoc(built);
  return a != nullptr && a == FindSoc(device);
}

}  // namespace eplb_ascendc
