// The replica-selection rule shared by every backend (CPU, CUDA, AscendC and the Python reference).
//
// A routed pair (token n, choice k) of a batch of N tokens at device step s picks one replica of
// its logical expert from a 16-bit position code
//
//     u = ((s * N + n) * 40503 + k * 25033 + c) mod 2^16      (unsigned 32-bit arithmetic)
//
// c is the caller's code offset in [0, 2^16): the runtime gives rank r of D the offset
// r * 2^16 / D, so that the batches of data-parallel ranks, each of whose tokens count from 0,
// split over an expert's replicas as one batch would (with one offset for all, every rank's
// first token picked the same replica).
//
// 40503 is odd, so for a fixed k the code runs over all 2^16 values exactly once in every 2^16
// consecutive global token positions s * N + n (one "rule period"), and the multiplicative stride
// (close to 2^16 / golden ratio) spreads any contiguous run of tokens evenly over [0, 2^16).
// The k term decorrelates the replicas that the K experts of one token pick.
//
//   * uniform (no shares):  replica = (u * cnt) >> 16, so in every period each of the cnt replicas
//     gets floor or ceil of 2^16 / cnt tokens;
//   * with shares w_0..w_{cnt-1} (float32): c_r = w_0 + ... + w_r summed in float32 in this order;
//     replica = first r with float(u) < c_r * 65536.0f, else cnt - 1 (absorbs rounding). In every
//     period replica r gets ceil(c_r 2^16) - ceil(c_{r-1} 2^16) tokens, its share within +-1 token.
//
// Every operation is exact in IEEE float32 (u < 2^24, multiplying by a power of two), so all
// backends choose the same replica. No RNG state: the kernel stays deterministic and graph-safe.
// The two rules are not one: with shares of 1 / cnt, the float32 sums c_r can land a rounding
// above a boundary the uniform rule has at an exact code, so for some cnt (20, 22, 24, ...;
// never a power of two) a few codes, at most one a boundary, go to the neighbouring replica
// (3 for cnt below 72, 14 at 96). Every replica holds the same expert: outputs are the same,
// and no replica's count moves by more than one token.
//
// This is the only C++ copy: the CPU and CUDA sources include it as is; AscendC kernels define
// EPLB_RT_AICORE before including it (after kernel_operator.h), which makes every function
// `__aicore__`, and read a share row in Unified Buffer through weighted_replica_at.
#pragma once

#include <stdint.h>

#include "portable.h"

namespace eplb_rt {

constexpr uint32_t kRuleTokenStride = 40503u;
constexpr uint32_t kRuleChoiceStride = 25033u;
constexpr uint32_t kRulePeriodBits = 16u;
constexpr float kRulePeriod = 65536.0f;

// 16-bit position code of pair (n, k) in a batch of num_tokens tokens at device step `step`,
// shifted by the caller's code offset.
EPLB_RT_HD uint32_t position_code(int64_t step, int64_t num_tokens, int64_t n, int64_t k,
                                  uint32_t offset) {
  const uint32_t global = static_cast<uint32_t>(step) * static_cast<uint32_t>(num_tokens) +
                          static_cast<uint32_t>(n);
  return (global * kRuleTokenStride + static_cast<uint32_t>(k) * kRuleChoiceStride + offset) &
         ((1u << kRulePeriodBits) - 1u);
}

// Replica index in [0, cnt) for uniform splitting; cnt >= 1.
EPLB_RT_HD int32_t uniform_replica(uint32_t code, int32_t cnt) {
  return static_cast<int32_t>((code * static_cast<uint32_t>(cnt)) >> kRulePeriodBits);
}

// Replica index in [0, cnt) following one expert's share row, read as share_at(r) (float32):
// a pointer on the CPU and CUDA, a Unified Buffer tensor on an AI core.
template <class ShareAt>
EPLB_RT_HD int32_t weighted_replica_at(uint32_t code, const ShareAt& share_at, int32_t cnt) {
  const float u = static_cast<float>(code);
  float cum = 0.0f;
  for (int32_t r = 0; r + 1 < cnt; ++r) {
    cum += share_at(r);
    if (u < cum * kRulePeriod) return r;
  }
  return cnt - 1;
}

struct ShareRowPtr {
  const float* row;
  EPLB_RT_HD float operator()(int32_t r) const { return row[r]; }
};

// Replica index in [0, cnt) following `share[0..cnt)` (one expert's row of replica_share).
EPLB_RT_HD int32_t weighted_replica(uint32_t code, const float* share, int32_t cnt) {
  return weighted_replica_at(code, ShareRowPtr{share}, cnt);
}

}  // namespace eplb_rt
