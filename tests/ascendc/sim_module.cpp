// Test harness: runs eplb_rt's AscendC kernels (unchanged sources) on the host emulation.
//
// Built by tests/ascendc/conftest.py with g++ -DASCENDC_HOST_SIM into a cached build directory.
// Each entry computes the tiling with the same host function csrc/npu uses, then calls the
// extern "C" launcher on numpy buffers; host_sim::Error surfaces in Python as SimError.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <string>
#include <tuple>
#include <vector>

#include "eplb_kernels.h"
#include "eplb_platform.h"
#include "eplb_tiling.h"
#include "host_sim_runtime.h"

namespace py = pybind11;

// tests/ascendc/fault_kernels.cpp
void RunFaultKernel(const std::string& name, uint32_t blockDim);
std::vector<std::string> FaultKernelNames();

namespace {

struct SimScope {
  SimScope(uint32_t ubBytes, int timeoutMs) {
    host_sim::config().ubBytes = ubBytes;
    host_sim::config().syncAllTimeoutMs = timeoutMs;
  }
};

void Require(bool ok, const std::string& message) {
  if (!ok) throw py::value_error(message);
}

uint8_t* Data(py::array& a) { return static_cast<uint8_t*>(a.mutable_data()); }

void RequireContiguous(const py::array& a, const char* name) {
  Require((a.flags() & py::array::c_style) != 0, std::string(name) + " must be C-contiguous");
}

uint32_t RouteAndCount(py::array topkIds, py::array log2phy, py::array logcnt, py::object share,
                       py::array heat, py::array step, py::array phyIds, uint32_t coreNum,
                       uint32_t ubBytes, uint32_t blockDim, uint32_t codeOffset) {
  SimScope scope(ubBytes, 2000);
  RequireContiguous(topkIds, "topk_ids");
  RequireContiguous(phyIds, "phy_ids");
  RequireContiguous(log2phy, "log2phy");
  RequireContiguous(logcnt, "logcnt");
  Require(topkIds.ndim() == 2 && heat.ndim() == 2 && log2phy.ndim() == 2, "bad ranks");
  Require(heat.strides(1) == 4 && heat.itemsize() == 4,
          "heat must be int32 with unit stride in the last dim");
  eplb_ascendc::RouteAndCountShape s{};
  s.numTokens = topkIds.shape(0);
  s.topK = static_cast<int32_t>(topkIds.shape(1));
  s.numExperts = static_cast<int32_t>(log2phy.shape(0));
  s.maxReplicas = static_cast<int32_t>(log2phy.shape(1));
  s.numSlots = static_cast<int32_t>(heat.shape(1));
  s.heatRows = heat.shape(0);
  s.heatRowStride = heat.strides(0) / 4;
  s.idBytes = static_cast<uint32_t>(topkIds.itemsize());
  s.hasShare = !share.is_none();
  s.codeOffset = codeOffset;
  eplb_ascendc::RouteAndCountTiling t{};
  const std::string err = eplb_ascendc::ComputeRouteAndCountTiling(s, coreNum, ubBytes, &t);
  Require(err.empty(), err);
  if (blockDim != 0) t.blockDim = blockDim;  // tests: launch more cores than the tiling needs
  uint8_t* sharePtr = nullptr;
  py::array shareArr;
  if (s.hasShare) {
    shareArr = share.cast<py::array>();
    RequireContiguous(shareArr, "replica_share");
    sharePtr = Data(shareArr);
  }
  Require(eplb_route_and_count(Data(topkIds), Data(log2phy), Data(logcnt), sharePtr, Data(heat),
                               Data(step), Data(phyIds), &t, nullptr) == 0,
          "launch status");
  return t.blockDim;
}

uint32_t CountFromGroupList(py::array groupList, py::array heat, py::array step, int64_t slotOffset,
                            bool cumulative, uint32_t coreNum, uint32_t ubBytes) {
  SimScope scope(ubBytes, 2000);
  RequireContiguous(groupList, "group_list");
  Require(heat.ndim() == 2 && heat.strides(1) == 4 && heat.itemsize() == 4,
          "heat must be [H, P] int32");
  eplb_ascendc::CountFromGroupListTiling t{};
  const std::string err = eplb_ascendc::ComputeCountFromGroupListTiling(
      groupList.shape(0), static_cast<uint32_t>(groupList.itemsize()), cumulative, slotOffset,
      heat.shape(1), heat.shape(0), heat.strides(0) / 4, coreNum, &t);
  Require(err.empty(), err);
  Require(eplb_count_from_group_list(Data(groupList), Data(heat), Data(step), &t, nullptr) == 0,
          "launch status");
  return t.blockDim;
}

// weights[t] [S, rowBytes_t] uint8 views, staged[t] [M, rowBytes_t]; returns blockDim per tensor.
std::vector<uint32_t> UpdateExpertWeights(std::vector<py::array> weights,
                                          std::vector<py::array> staged, py::array slots,
                                          uint32_t coreNum, uint32_t ubBytes) {
  SimScope scope(ubBytes, 2000);
  Require(weights.size() == staged.size(), "weights and staged differ in length");
  RequireContiguous(slots, "slots");
  std::vector<uint32_t> dims;
  for (size_t i = 0; i < weights.size(); ++i) {
    RequireContiguous(weights[i], "weights[t]");
    RequireContiguous(staged[i], "staged[t]");
    Require(weights[i].ndim() == 2 && staged[i].ndim() == 2 &&
                weights[i].shape(1) == staged[i].shape(1),
            "weights[t] / staged[t] must be [S, B] / [M, B] byte views");
    const int64_t rowBytes = weights[i].shape(1);
    const bool aligned = (reinterpret_cast<uintptr_t>(weights[i].data()) % 32 == 0) &&
                         (reinterpret_cast<uintptr_t>(staged[i].data()) % 32 == 0);
    eplb_ascendc::CopyRowsTiling t{};
    const std::string err = eplb_ascendc::ComputeCopyRowsTiling(
        rowBytes, staged[i].shape(0), weights[i].shape(0), static_cast<uint32_t>(slots.itemsize()),
        aligned, coreNum, ubBytes, &t);
    Require(err.empty(), err);
    Require(eplb_update_expert_weights(Data(weights[i]), Data(staged[i]), Data(slots), &t,
                                       nullptr) == 0,
            "launch status");
    dims.push_back(t.blockDim);
  }
  return dims;
}

uint32_t UpdateExpertMap(std::vector<py::array> dst, std::vector<py::array> src, uint32_t ubBytes) {
  SimScope scope(ubBytes, 2000);
  Require(dst.size() == src.size() && dst.size() <= eplb_ascendc::kMaxMapTables, "bad table lists");
  std::vector<uint8_t*> d, s;
  std::vector<int64_t> bytes;
  for (size_t i = 0; i < dst.size(); ++i) {
    RequireContiguous(dst[i], "dst");
    RequireContiguous(src[i], "src");
    Require(dst[i].nbytes() == src[i].nbytes(), "table sizes differ");
    d.push_back(Data(dst[i]));
    s.push_back(Data(src[i]));
    bytes.push_back(static_cast<int64_t>(dst[i].nbytes()));
  }
  eplb_ascendc::CopyTablesTiling t{};
  const std::string err = eplb_ascendc::ComputeCopyTablesTiling(
      bytes.data(), static_cast<uint32_t>(bytes.size()), ubBytes, &t);
  Require(err.empty(), err);
  Require(eplb_update_expert_map(d.data(), s.data(), &t, nullptr) == 0, "launch status");
  return t.blockDim;
}

}  // namespace

PYBIND11_MODULE(eplb_ascendc_sim, m) {
  m.doc() = "eplb_rt AscendC kernels on the host emulation (tests only)";
  py::register_exception<host_sim::Error>(m, "SimError", PyExc_RuntimeError);
  // The UB of the SoC CMake compiles for by default: the emulation enforces the device's limit.
  const uint32_t kUb = eplb_ascendc::FindSoc(eplb_ascendc::kDefaultSoc)->ubBytes;
  m.def("route_and_count", &RouteAndCount, py::arg("topk_ids"), py::arg("log2phy"),
        py::arg("logcnt"), py::arg("replica_share"), py::arg("heat"), py::arg("step"),
        py::arg("phy_ids"), py::arg("core_num") = 8, py::arg("ub_bytes") = kUb,
        py::arg("block_dim") = 0, py::arg("code_offset") = 0);
  m.def(
      "route_and_count_tiling",
      [kUb](int64_t n, int32_t k, int32_t e, int32_t r, int32_t p, uint32_t idBytes, bool hasShare,
            uint32_t coreNum, uint32_t ubBytes) {
        const eplb_ascendc::RouteAndCountShape s{n, k, e, r, p, 1, p, idBytes, hasShare, 0};
        eplb_ascendc::RouteAndCountTiling t{};
        const std::string err =
            eplb_ascendc::ComputeRouteAndCountTiling(s, coreNum, ubBytes ? ubBytes : kUb, &t);
        Require(err.empty(), err);
        py::dict out;
        out["block_dim"] = t.blockDim;
        out["tile_pairs"] = t.tilePairs;
        out["tables_in_ub"] = t.tablesInUb != 0;
        return out;
      },
      py::arg("n"), py::arg("k"), py::arg("e"), py::arg("r"), py::arg("p"), py::arg("id_bytes"),
      py::arg("has_share"), py::arg("core_num") = 48, py::arg("ub_bytes") = 0);
  m.def("count_from_group_list", &CountFromGroupList, py::arg("group_list"), py::arg("heat"),
        py::arg("step"), py::arg("slot_offset"), py::arg("cumulative"), py::arg("core_num") = 8,
        py::arg("ub_bytes") = kUb);
  m.def("update_expert_weights", &UpdateExpertWeights, py::arg("weights"), py::arg("staged"),
        py::arg("slots"), py::arg("core_num") = 8, py::arg("ub_bytes") = kUb);
  m.def("update_expert_map", &UpdateExpertMap, py::arg("dst"), py::arg("src"),
        py::arg("ub_bytes") = kUb);
  m.def(
      "run_fault",
      [kUb](const std::string& name, uint32_t blockDim, int timeoutMs) {
        SimScope scope(kUb, timeoutMs);
        RunFaultKernel(name, blockDim);
      },
      py::arg("name"), py::arg("block_dim") = 4, py::arg("timeout_ms") = 2000);
  m.def("fault_kernel_names", &FaultKernelNames);
  m.def(
      "racing_accesses",
      [](const std::vector<std::tuple<uint64_t, uint64_t, uint32_t, uint64_t, int>>& rows) {
        std::vector<host_sim::LaunchState::Access> accesses;
        for (const auto& [lo, hi, core, round, kind] : rows) {
          Require(kind >= 0 && kind <= 2, "kind must be 0 (read), 1 (store) or 2 (atomic add)");
          accesses.push_back({static_cast<uintptr_t>(lo), static_cast<uintptr_t>(hi), core, round,
                              static_cast<host_sim::LaunchState::Touch>(kind)});
        }
        return host_sim::racingAccesses(std::move(accesses));
      },
      py::arg("accesses"));
  m.def(
      "soc_info",
      [](const std::string& name) -> py::object {
        const eplb_ascendc::SocInfo* soc = eplb_ascendc::FindSoc(name.c_str());
        if (soc == nullptr) return py::none();
        return py::make_tuple(soc->family, soc->ubBytes, soc->vectorCores);
      },
      py::arg("soc"));
  m.attr("DEFAULT_SOC") = eplb_ascendc::kDefaultSoc;
}
