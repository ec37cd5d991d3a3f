// Sweeps route_and_count's prefill launch geometry on a GPU (no torch): blocks per SM, pairs per
// block and whether the routing tables are staged in shared memory, for int32 / int64 ids and
// uniform / weighted replicas at N=262144, K=8, E=256, P=288 (32 experts with a second replica:
// the prefill_large case of benchmarks/bench_device_ops.py). Every geometry's phy_ids and heat row
// must equal those of the first geometry (the kernel before tables were staged); a mismatch
// exits 1.
//
//   nvcc -std=c++17 -O3 --fmad=false -arch=native benchmarks/cuda/route_geometry.cu -o
//   route_geometry
//   ./route_geometry            # one row per case and geometry: us per call, % of a D2D copy
//   ncu --section SpeedOfLight ./route_geometry --profile   # each case once, default geometry
#include <cstdio>
#include <cstdlib>
#include <random>
#include <string>
#include <vector>

#include "../../csrc/cuda/route_and_count.cu"

namespace {

using eplb_rt::cuda::PrefillGeometry;
using eplb_rt::cuda::RouteAndCountParams;
using eplb_rt::cuda::RouteTables;

#define CHECK_CUDA(call)                                                 \
  do {                                                                   \
    cudaError_t err_ = (call);                                           \
    if (err_ != cudaSuccess) {                                           \
      std::fprintf(stderr, "%s: %s\n", #call, cudaGetErrorString(err_)); \
      std::exit(2);                                                      \
    }                                                                    \
  } while (0)

constexpr int kTokens = 262144, kTopK = 8, kExperts = 256, kSlots = 288, kReplicas = 2;
constexpr int kIters = 200;

// Microseconds per call of fn, the mean of kIters launches after a warm-up.
template <typename Fn>
float time_us(Fn&& fn) {
  for (int i = 0; i < 10; ++i) fn();
  cudaEvent_t start, stop;
  CHECK_CUDA(cudaEventCreate(&start));
  CHECK_CUDA(cudaEventCreate(&stop));
  CHECK_CUDA(cudaEventRecord(start));
  for (int i = 0; i < kIters; ++i) fn();
  CHECK_CUDA(cudaEventRecord(stop));
  CHECK_CUDA(cudaEventSynchronize(stop));
  float ms = 0;
  CHECK_CUDA(cudaEventElapsedTime(&ms, start, stop));
  CHECK_CUDA(cudaEventDestroy(start));
  CHECK_CUDA(cudaEventDestroy(stop));
  return 1000.0f * ms / kIters;
}

// GB/s of a 1 GiB device-to-device copy, counting bytes read and written.
double copy_gbs() {
  const size_t bytes = size_t{1} << 30;
  void *a, *b;
  CHECK_CUDA(cudaMalloc(&a, bytes));
  CHECK_CUDA(cudaMalloc(&b, bytes));
  const float us = time_us([&] { cudaMemcpyAsync(b, a, bytes, cudaMemcpyDeviceToDevice); });
  CHECK_CUDA(cudaFree(a));
  CHECK_CUDA(cudaFree(b));
  return 2.0 * bytes / (us * 1e-6) / 1e9;
}

// Runs every geometry (only the kernel's default with `profile`: one launch per case for a
// profiler) and checks each against the first; false on a mismatch.
template <typename Id>
bool sweep(bool weighted, double copy, std::mt19937& gen, bool profile) {
  const int64_t pairs = int64_t{kTokens} * kTopK;
  std::vector<Id> ids(pairs);
  std::uniform_int_distribution<int> expert(0, kExperts - 1);
  for (auto& id : ids) id = static_cast<Id>(expert(gen));
  std::vector<int32_t> log2phy(kExperts * kReplicas, -1), logcnt(kExperts, 1);
  std::vector<float> share(kExperts * kReplicas, 0.0f);
  for (int e = 0; e < kExperts; ++e) {
    log2phy[e * kReplicas] = e;
    if (e < kSlots - kExperts) {
      log2phy[e * kReplicas + 1] = kExperts + e;
      logcnt[e] = 2;
    }
    for (int r = 0; r < logcnt[e]; ++r) share[e * kReplicas + r] = 1.0f / logcnt[e];
  }

  Id *d_ids, *d_phy;
  int32_t *d_log2phy, *d_logcnt, *d_heat;
  float* d_share;
  int64_t* d_step;
  const int64_t step = 3;
  CHECK_CUDA(cudaMalloc(&d_ids, pairs * sizeof(Id)));
  CHECK_CUDA(cudaMalloc(&d_phy, pairs * sizeof(Id)));
  CHECK_CUDA(cudaMalloc(&d_log2phy, log2phy.size() * sizeof(int32_t)));
  CHECK_CUDA(cudaMalloc(&d_logcnt, logcnt.size() * sizeof(int32_t)));
  CHECK_CUDA(cudaMalloc(&d_share, share.size() * sizeof(float)));
  CHECK_CUDA(cudaMalloc(&d_heat, kSlots * sizeof(int32_t)));
  CHECK_CUDA(cudaMalloc(&d_step, sizeof(int64_t)));
  CHECK_CUDA(cudaMemcpy(d_ids, ids.data(), pairs * sizeof(Id), cudaMemcpyHostToDevice));
  CHECK_CUDA(cudaMemcpy(d_log2phy, log2phy.data(), log2phy.size() * 4, cudaMemcpyHostToDevice));
  CHECK_CUDA(cudaMemcpy(d_logcnt, logcnt.data(), logcnt.size() * 4, cudaMemcpyHostToDevice));
  CHECK_CUDA(cudaMemcpy(d_share, share.data(), share.size() * 4, cudaMemcpyHostToDevice));
  CHECK_CUDA(cudaMemcpy(d_step, &step, sizeof(step), cudaMemcpyHostToDevice));

  const RouteTables tables{d_log2phy, d_logcnt, weighted ? d_share : nullptr};
  const RouteAndCountParams params{kTokens, kTopK, kExperts, kReplicas, kSlots, 1, kSlots, 0};
  // What bench_device_ops.py counts: ids and phy_ids, the tables, the heat row read and written.
  const double bytes = 2.0 * pairs * sizeof(Id) + 4.0 * kExperts * (1 + kReplicas) +
                       (weighted ? 4.0 * kExperts * kReplicas : 0.0) + 2.0 * 4 * kSlots;
  std::vector<Id> want_phy, got_phy(pairs);
  std::vector<int32_t> want_heat, got_heat(kSlots);
  bool same = true;
  // First the geometry before the tables were staged (the reference of every other result).
  const PrefillGeometry before{8, 2048, false};
  std::vector<PrefillGeometry> geometries{before};
  if (profile) geometries = {PrefillGeometry{}};
  for (bool stage : {false, true})
    for (int per_sm : {2, 4, 8, 16})
      for (uint32_t min_pairs : {2048u, 8192u})
        if (!profile) geometries.push_back({per_sm, min_pairs, stage});
  for (const PrefillGeometry& g : geometries) {
    auto launch = [&] {
      if (weighted)
        eplb_rt::cuda::launch_kernel<Id, true>(d_ids, tables, d_heat, d_step, d_phy, params, pairs,
                                               nullptr, g);
      else
        eplb_rt::cuda::launch_kernel<Id, false>(d_ids, tables, d_heat, d_step, d_phy, params, pairs,
                                                nullptr, g);
    };
    CHECK_CUDA(cudaMemset(d_heat, 0, kSlots * 4));
    CHECK_CUDA(cudaMemset(d_phy, 0xff, pairs * sizeof(Id)));
    launch();
    CHECK_CUDA(cudaGetLastError());
    CHECK_CUDA(cudaMemcpy(got_phy.data(), d_phy, pairs * sizeof(Id), cudaMemcpyDeviceToHost));
    CHECK_CUDA(cudaMemcpy(got_heat.data(), d_heat, kSlots * 4, cudaMemcpyDeviceToHost));
    if (want_phy.empty()) {
      want_phy = got_phy;
      want_heat = got_heat;
    }
    const bool equal = got_phy == want_phy && got_heat == want_heat;
    same = same && equal;
    if (profile) continue;
    const float us = time_us(launch);
    std::printf("%-5s %-8s stage=%d blocks/SM=%2d min_pairs=%5u  %7.2f us  %5.1f %% of copy%s\n",
                sizeof(Id) == 4 ? "int32" : "int64", weighted ? "weighted" : "uniform",
                g.stage_tables, g.blocks_per_sm, g.min_pairs_per_block, us,
                100.0 * bytes / (us * 1e-6) / 1e9 / copy, equal ? "" : "  MISMATCH");
  }
  for (void* p : {(void*)d_ids, (void*)d_phy, (void*)d_log2phy, (void*)d_logcnt, (void*)d_share,
                  (void*)d_heat, (void*)d_step})
    CHECK_CUDA(cudaFree(p));
  return same;
}

}  // namespace

int main(int argc, char** argv) {
  const bool profile = argc > 1 && std::string(argv[1]) == "--profile";
  std::mt19937 gen(0);
  const double copy = profile ? 1.0 : copy_gbs();
  std::printf("device-to-device copy: %.0f GB/s\n", copy);
  bool same = true;
  for (bool weighted : {false, true}) {
    same = sweep<int32_t>(weighted, copy, gen, profile) && same;
    same = sweep<int64_t>(weighted, copy, gen, profile) && same;
  }
  std::printf(same ? "every geometry matches\n" : "MISMATCH: a geometry's result differs\n");
  return same ? 0 : 1;
}
