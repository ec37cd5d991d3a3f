// CPU kernel of route_and_count.
//
// Small batches (decode: at most 4 pairs per expert) check each pair, then route it by
// csrc/common/replica_rule.h and count it straight into heat[row].
// Larger batches make three passes, nothing written before the second one succeeds:
//   1. per-expert tables (E x R, small): usable experts, their slots and, with shares, the integer
//      bounds that replace the float comparisons of weighted_replica;
//   2. validation: every id is -1 or a usable expert (a vectorised range check when all experts
//      are usable, else one table lookup per pair, no branch);
//   3. routing, a chunk of tokens per thread: replica by the rule, physical id written, count
//      added to the chunk's private histogram; the histograms are summed into heat[row] at the end.
// The tables have a row for the padding id -1 (slot -1), so the hot loop has no padding branch:
// padding lands in histogram bin 0, which is dropped.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <type_traits>
#include <vector>

#include "common/checks.h"
#include "common/replica_rule.h"
#include "cpu/cpu_common.h"

namespace eplb_rt {
namespace {

// Pairs below which one thread does all the work: forking costs more than it saves.
constexpr int64_t kPairsPerChunk = 16384;
// Batches of at most this many pairs per expert skip the tables (route_small_batch).
constexpr int64_t kSmallBatchPairsPerExpert = 4;
constexpr int32_t kNoBound = 1 << kRulePeriodBits;  // a code never reaches it

// Per-call tables, indexed by e + 1 (row 0 is the padding id -1); reused across calls.
struct RouteTables {
  std::vector<int32_t> count;   // [E + 1] replicas (1 for padding and unusable experts)
  std::vector<int32_t> slot;    // [(E + 1) * R] log2phy rows, row 0 = -1
  std::vector<int32_t> bound;   // [(E + 1) * (R - 1)] shares only: replica = #{j : code >= bound}
  std::vector<uint8_t> usable;  // [E + 2] 1 for padding and valid experts; [E + 1] = 0 (bad ids)
  std::vector<int32_t> hist;    // [chunks * (P + 1)] per-chunk counts, bin 0 = padding
};

RouteTables& scratch() {
  thread_local RouteTables tables;
  return tables;
}

// weighted_replica picks the first r < cnt - 1 with float(u) < c_r * 2^16 (c_r: float32 cumulative
// share). For an integer u that is u < B_r with B_r = ceil(c_r * 2^16) clamped to [0, 2^16] (0 for
// NaN). With M_r = max(B_0..B_r) the first such r equals #{r : u >= M_r}: a branch-free count.
void build_bounds(RouteTables& t, const float* share, int64_t E, int64_t R) {
  const int64_t width = R - 1;
  t.bound.assign((E + 1) * width, kNoBound);
  for (int64_t e = 0; e < E; ++e) {
    const int32_t cnt = t.count[e + 1];
    float cum = 0.0f;
    int32_t running_max = 0;
    for (int64_t r = 0; r + 1 < cnt; ++r) {
      cum += share[e * R + r];
      const float x = cum * kRulePeriod;
      int32_t b = kNoBound;
      if (!(x > 0.0f)) {
        b = 0;
      } else if (x < kRulePeriod) {
        b = static_cast<int32_t>(std::ceil(x));
      }
      running_max = std::max(running_max, b);
      t.bound[(e + 1) * width + r] = running_max;
    }
  }
}

// Returns whether every expert is usable (the common case: validation is then a range check).
bool build_tables(RouteTables& t, const int32_t* log2phy, const int32_t* logcnt, const float* share,
                  int64_t E, int64_t R, int64_t P) {
  t.count.resize(E + 1);
  t.slot.resize((E + 1) * R);
  t.usable.resize(E + 2);
  t.count[0] = 1;
  std::fill_n(t.slot.begin(), R, -1);
  t.usable[0] = 1;
  t.usable[E + 1] = 0;
  bool all_usable = true;
  for (int64_t e = 0; e < E; ++e) {
    const int32_t cnt = logcnt[e];
    const int32_t* row = log2phy + e * R;
    bool ok = cnt >= 1 && cnt <= R;
    for (int32_t r = 0; ok && r < cnt; ++r) ok = row[r] >= 0 && row[r] < P;
    float sum = 0.0f;
    ok = ok && (share == nullptr || share_fault(share + e * R, cnt, &sum) < 0);
    t.usable[e + 1] = ok;
    all_usable &= ok;
    t.count[e + 1] = ok ? cnt : 1;
    std::copy_n(row, R, t.slot.begin() + (e + 1) * R);
  }
  return all_usable;
}

// Whether every id is in [-1, E). With x = id + 1 (unsigned), an id is in range iff neither x nor
// E - x has its top bit set: an OR-reduction of adds and subtracts that vectorises with plain SSE2
// (a min/max reduction of int64 does not).
template <typename id_t>
bool ids_in_range(const id_t* ids, int64_t begin, int64_t end, int64_t E) {
  using uid_t = std::make_unsigned_t<id_t>;
  const uid_t limit = static_cast<uid_t>(std::min<int64_t>(E, std::numeric_limits<id_t>::max()));
  uid_t bits = 0;
  for (int64_t i = begin; i < end; ++i) {
    const uid_t x = static_cast<uid_t>(ids[i]) + 1u;
    bits |= x | static_cast<uid_t>(limit - x);
  }
  return (bits >> (8 * sizeof(uid_t) - 1)) == 0;
}

template <typename id_t>
bool ids_usable(const id_t* ids, int64_t begin, int64_t end, const uint8_t* usable, int64_t E) {
  const uint64_t out_of_range = static_cast<uint64_t>(E) + 1;
  uint8_t ok = 1;
  for (int64_t i = begin; i < end; ++i) {
    // -1 -> 0 (padding); below -1 wraps to a huge value, so both ends clamp to the sentinel.
    const uint64_t e1 = static_cast<uint64_t>(static_cast<int64_t>(ids[i])) + 1u;
    ok &= usable[std::min(e1, out_of_range)];
  }
  return ok;
}

// Checks every pair of [0, pairs) on its own and throws naming the first bad one: the validation
// of small batches, and the error report of large ones once the table-based check failed.
template <typename id_t>
void check_pairs(const id_t* ids, int64_t N, int64_t K, const int32_t* log2phy,
                 const int32_t* logcnt, const float* share, int64_t E, int64_t R, int64_t P) {
  // Each used expert's shares are read once a call, not once a pair (a decode batch has 512).
  thread_local std::vector<uint8_t> share_scratch;
  uint8_t* share_checked = nullptr;  // a plain pointer: a thread_local read in the loop costs
  if (share != nullptr) {
    share_scratch.assign(E, 0);
    share_checked = share_scratch.data();
  }
  for (int64_t n = 0; n < N; ++n) {
    for (int64_t k = 0; k < K; ++k) {
      const int64_t e = static_cast<int64_t>(ids[n * K + k]);
      if (e == -1) continue;
      TORCH_CHECK(e >= 0 && e < E, "route_and_count: topk_ids[", n, ", ", k, "] = ", e,
                  " must be a logical expert id in [0, ", E, ") or -1 (padding)");
      const int32_t cnt = logcnt[e];
      TORCH_CHECK(cnt >= 1 && cnt <= R, "route_and_count: logcnt[", e, "] = ", cnt,
                  " must be in [1, R = ", R, "] (expert ", e, " is used by topk_ids[", n, ", ", k,
                  "])");
      for (int32_t r = 0; r < cnt; ++r) {
        const int32_t p = log2phy[e * R + r];
        TORCH_CHECK(p >= 0 && p < P, "route_and_count: log2phy[", e, ", ", r, "] = ", p,
                    " must be a slot in [0, P = ", P, ") (expert ", e, " has logcnt ", cnt,
                    " and is used by topk_ids[", n, ", ", k, "])");
      }
      if (share == nullptr || share_checked[e]) continue;
      float sum = 0.0f;
      const int32_t r = share_fault(share + e * R, cnt, &sum);
      share_checked[e] = r < 0;
      if (r < 0) continue;
      TORCH_CHECK(r == cnt, "route_and_count: replica_share[", e, ", ", r, "] = ", share[e * R + r],
                  " must be finite and >= 0 (expert ", e, " is used by topk_ids[", n, ", ", k,
                  "])");
      TORCH_CHECK(false, "route_and_count: the shares of expert ", e, " over its ", cnt,
                  " replicas (replica_share[", e, ", :", cnt, "]) must sum to 1 within ",
                  kShareSumTolerance, ", got ", sum, " (expert ", e, " is used by topk_ids[", n,
                  ", ", k, "])");
    }
  }
}

// Small batches (decode): per-pair checks and the rule of replica_rule.h applied literally cost
// less than building the per-expert tables of all E experts. Counts go straight into heat_row.
template <typename id_t>
void route_small_batch(const id_t* ids, id_t* phy, int64_t N, int64_t K, const int32_t* log2phy,
                       const int32_t* logcnt, const float* share, int64_t E, int64_t R, int64_t P,
                       int64_t step, uint32_t offset, int32_t* heat_row) {
  check_pairs(ids, N, K, log2phy, logcnt, share, E, R, P);
  for (int64_t n = 0; n < N; ++n) {
    for (int64_t k = 0; k < K; ++k) {
      const int64_t i = n * K + k;
      const int64_t e = static_cast<int64_t>(ids[i]);
      if (e < 0) {
        phy[i] = -1;
        continue;
      }
      const uint32_t code = position_code(step, N, n, k, offset);
      const int32_t cnt = logcnt[e];
      const int32_t r = share != nullptr ? weighted_replica(code, share + e * R, cnt)
                                         : uniform_replica(code, cnt);
      const int32_t p = log2phy[e * R + r];
      phy[i] = static_cast<id_t>(p);
      heat_row[p] = wrapping_add(heat_row[p], 1);
    }
  }
}

// Routes tokens [n0, n1); hist[p + 1] counts slot p, hist[0] the padding.
// kFixedR > 0: R known at compile time (the bound loop unrolls); 0: R at run time.
// kWeighted: replica shares (bounds); else the uniform rule.
template <typename id_t, bool kWeighted, int kFixedR>
void route_tokens(const id_t* ids, id_t* phy, int64_t n0, int64_t n1, int64_t N, int64_t K,
                  int64_t runtime_R, int64_t step, uint32_t offset, const RouteTables& t,
                  int32_t* hist) {
  const int64_t R = kFixedR > 0 ? kFixedR : runtime_R;
  const int32_t* count = t.count.data();
  const int32_t* slot = t.slot.data();
  const int32_t* bound = t.bound.data();
  for (int64_t n = n0; n < n1; ++n) {
    for (int64_t k = 0; k < K; ++k) {
      const int64_t i = n * K + k;
      const int64_t e1 = static_cast<int64_t>(ids[i]) + 1;
      const uint32_t code = position_code(step, N, n, k, offset);
      int32_t r = 0;
      if constexpr (kWeighted) {
        const int32_t* b = bound + e1 * (R - 1);
        for (int64_t j = 0; j + 1 < R; ++j) r += code >= static_cast<uint32_t>(b[j]);
      } else {
        r = uniform_replica(code, count[e1]);
      }
      const int32_t p = slot[e1 * R + r];
      phy[i] = static_cast<id_t>(p);
      ++hist[p + 1];
    }
  }
}

template <typename id_t>
void route_and_count_typed(const at::Tensor& topk_ids, const at::Tensor& log2phy,
                           const at::Tensor& logcnt, const std::optional<at::Tensor>& replica_share,
                           const at::Tensor& heat, const at::Tensor& step,
                           const at::Tensor& phy_ids, uint32_t offset) {
  const int64_t N = topk_ids.size(0);
  const int64_t K = topk_ids.size(1);
  const int64_t E = log2phy.size(0);
  const int64_t R = log2phy.size(1);
  const int64_t P = heat.size(1);
  const int64_t row = ring_row(step, heat.size(0));
  const int64_t step_value = *step.const_data_ptr<int64_t>();
  const id_t* ids = topk_ids.const_data_ptr<id_t>();
  const int32_t* l2p = log2phy.const_data_ptr<int32_t>();
  const int32_t* cnt = logcnt.const_data_ptr<int32_t>();

  const int64_t pairs = N * K;
  int32_t* heat_row = heat.data_ptr<int32_t>() + row * heat.stride(0);
  const float* share = replica_share.has_value() ? replica_share->const_data_ptr<float>() : nullptr;
  if (pairs <= kSmallBatchPairsPerExpert * E) {
    route_small_batch(ids, phy_ids.data_ptr<id_t>(), N, K, l2p, cnt, share, E, R, P, step_value,
                      offset, heat_row);
    return;
  }

  RouteTables& t = scratch();
  const bool all_usable = build_tables(t, l2p, cnt, share, E, R, P);

  const int64_t chunks =
      std::clamp<int64_t>((pairs + kPairsPerChunk - 1) / kPairsPerChunk, 1, at::get_num_threads());
  const int64_t tokens_per_chunk = (N + chunks - 1) / chunks;
  auto chunk_begin = [&](int64_t c) { return std::min(N, c * tokens_per_chunk); };

  // With every expert usable only the id range matters; else each id's expert is looked up.
  auto chunk_valid = [&](int64_t c) {
    const int64_t begin = chunk_begin(c) * K;
    const int64_t end = chunk_begin(c + 1) * K;
    return all_usable ? ids_in_range(ids, begin, end, E)
                      : ids_usable(ids, begin, end, t.usable.data(), E);
  };
  bool ok = true;
  if (chunks == 1) {
    ok = chunk_valid(0);
  } else {
    std::vector<uint8_t> chunk_ok(chunks, 1);
    at::parallel_for(0, chunks, 1, [&](int64_t c0, int64_t c1) {
      for (int64_t c = c0; c < c1; ++c) chunk_ok[c] = chunk_valid(c);
    });
    ok = std::all_of(chunk_ok.begin(), chunk_ok.end(), [](uint8_t v) { return v != 0; });
  }
  if (!ok) {
    check_pairs(ids, N, K, l2p, cnt, share, E, R, P);  // throws, naming the first bad pair
    TORCH_INTERNAL_ASSERT(false, "route_and_count: validation failed without a bad pair");
  }

  const bool weighted = replica_share.has_value() && R > 1;
  if (weighted) build_bounds(t, share, E, R);
  t.hist.assign(chunks * (P + 1), 0);
  id_t* phy = phy_ids.data_ptr<id_t>();
  auto run_chunk = [&](int64_t c) {
    int32_t* hist = t.hist.data() + c * (P + 1);
    const int64_t n0 = chunk_begin(c);
    const int64_t n1 = chunk_begin(c + 1);
    if (!weighted) {
      route_tokens<id_t, false, 0>(ids, phy, n0, n1, N, K, R, step_value, offset, t, hist);
    } else if (R == 2) {
      route_tokens<id_t, true, 2>(ids, phy, n0, n1, N, K, R, step_value, offset, t, hist);
    } else if (R == 3) {
      route_tokens<id_t, true, 3>(ids, phy, n0, n1, N, K, R, step_value, offset, t, hist);
    } else if (R == 4) {
      route_tokens<id_t, true, 4>(ids, phy, n0, n1, N, K, R, step_value, offset, t, hist);
    } else {
      route_tokens<id_t, true, 0>(ids, phy, n0, n1, N, K, R, step_value, offset, t, hist);
    }
  };
  if (chunks == 1) {
    run_chunk(0);
  } else {
    at::parallel_for(0, chunks, 1, [&](int64_t c0, int64_t c1) {
      for (int64_t c = c0; c < c1; ++c) run_chunk(c);
    });
  }

  for (int64_t c = 0; c < chunks; ++c) {
    const int32_t* hist = t.hist.data() + c * (P + 1) + 1;
    for (int64_t p = 0; p < P; ++p) heat_row[p] = wrapping_add(heat_row[p], hist[p]);
  }
}

void route_and_count_cpu(const at::Tensor& topk_ids, const at::Tensor& log2phy,
                         const at::Tensor& logcnt, const std::optional<at::Tensor>& replica_share,
                         const at::Tensor& heat, const at::Tensor& step, const at::Tensor& phy_ids,
                         int64_t code_offset) {
  check_route_and_count_args(topk_ids, log2phy, logcnt, replica_share, heat, step, phy_ids);
  check_route_and_count_apart(topk_ids, log2phy, logcnt, replica_share, heat, step, phy_ids);
  const uint32_t offset = checked_code_offset(code_offset);
  if (topk_ids.scalar_type() == at::kInt) {
    route_and_count_typed<int32_t>(topk_ids, log2phy, logcnt, replica_share, heat, step, phy_ids,
                                   offset);
  } else {
    route_and_count_typed<int64_t>(topk_ids, log2phy, logcnt, replica_share, heat, step, phy_ids,
                                   offset);
  }
}

}  // namespace

TORCH_LIBRARY_IMPL(eplb_rt, CPU, m) { m.impl("route_and_count", &route_and_count_cpu); }

}  // namespace eplb_rt
