// Host-side tiling of eplb_rt's AscendC kernels: plain C++17, no torch, no CANN.
//
// Shared by the csrc/npu launchers (real hardware) and the host-emulation tests, so the tiling the
// tests exercise is the tiling the device runs. Each Compute*Tiling returns an empty string on
// success, or an error that names expected vs got (the caller raises it). `coreNum` is the number
// of vector (AIV) cores and `ubBytes` the Unified Buffer a kernel may use (eplb_platform.h: the
// SoC's UB less what AscendC keeps for itself); what a tiling asks for never exceeds it.
#pragma once

#include <stdint.h>

#include <string>

#include "eplb_tiling_types.h"

namespace eplb_ascendc {

inline uint64_t RoundUp(uint64_t x, uint64_t m) { return (x + m - 1) / m * m; }
inline uint64_t CeilDiv(uint64_t x, uint64_t m) { return (x + m - 1) / m; }

// ------------------------------------------------------------------ route_and_count

// UB bytes that route_and_count always keeps resident: logcnt [E] and the histogram [P].
inline uint64_t RouteAndCountResidentBytes(const RouteAndCountShape& s) {
  return RoundUp(static_cast<uint64_t>(s.numExperts) * 4, kBlockBytes) +
         RoundUp(static_cast<uint64_t>(s.numSlots) * 4, kBlockBytes);
}

// ... and with log2phy [E, R] (and replica_share [E, R]) in UB too, as long as they fit.
inline uint64_t RouteAndCountTableBytes(const RouteAndCountShape& s) {
  const uint64_t er = static_cast<uint64_t>(s.numExperts) * static_cast<uint64_t>(s.maxReplicas);
  const uint64_t table = RoundUp(er * 4, kBlockBytes);
  return RouteAndCountResidentBytes(s) + (s.hasShare ? 2 : 1) * table;
}

inline std::string ComputeRouteAndCountTiling(const RouteAndCountShape& s, uint32_t coreNum,
                                              uint32_t ubBytes, RouteAndCountTiling* t) {
  if (coreNum == 0) return "route_and_count tiling: coreNum must be >= 1, got 0";
  if (s.idBytes != 4 && s.idBytes != 8) {
    return "route_and_count tiling: idBytes must be 4 or 8, got " + std::to_string(s.idBytes);
  }
  if (s.codeOffset >= 65536u) {
    return "route_and_count: code_offset must be in [0, 65536), got " +
           std::to_string(s.codeOffset);
  }
  if (s.numTokens < 0 || s.topK < 1 || s.numExperts < 1 || s.maxReplicas < 1 || s.numSlots < 1 ||
      s.heatRows < 1 || (s.heatRows > 1 && s.heatRowStride < s.numSlots)) {
    // One row has no stride to keep apart (the op's checks waive it too: a [1, P] view).
    return "route_and_count tiling: expected N >= 0, K, E, R, P, H >= 1 and heat row stride >= P "
           "(H > 1); "
           "got N=" +
           std::to_string(s.numTokens) + " K=" + std::to_string(s.topK) +
           " E=" + std::to_string(s.numExperts) + " R=" + std::to_string(s.maxReplicas) +
           " P=" + std::to_string(s.numSlots) + " H=" + std::to_string(s.heatRows) +
           " stride=" + std::to_string(s.heatRowStride);
  }
  // N x K in int64 (the op caps it at INT32_MAX before it gets here; other callers may not).
  if (s.numTokens > INT64_MAX / s.topK) {
    return "route_and_count tiling: N x K overflows int64, got N=" + std::to_string(s.numTokens) +
           " K=" + std::to_string(s.topK);
  }
  // Each tile has kBufferNum input and kBufferNum output buffers of tilePairs ids.
  const uint64_t perPair = 2ull * kBufferNum * s.idBytes;
  const uint64_t minIds = 8 * perPair;
  // log2phy and replica_share grow with E x R (R up to the ranks: DeepSeek-V3 at EP128 with
  // 128 redundant experts, R = 128, needs 256 KiB of them); past the UB the scalar unit reads
  // their rows from GM (through its DataCache) instead of refusing.
  const bool inUb = RouteAndCountTableBytes(s) + minIds <= ubBytes;
  const uint64_t tables = inUb ? RouteAndCountTableBytes(s) : RouteAndCountResidentBytes(s);
  if (tables + minIds > ubBytes) {
    return "route_and_count: logcnt of E=" + std::to_string(s.numExperts) +
           " experts and the histogram of P=" + std::to_string(s.numSlots) + " slots need " +
           std::to_string(tables + minIds) + " bytes of Unified Buffer, expected at most " +
           std::to_string(ubBytes);
  }
  *t = RouteAndCountTiling{};
  t->idBytes = s.idBytes;
  t->hasShare = s.hasShare ? 1u : 0u;
  t->codeOffset = s.codeOffset;
  t->tablesInUb = inUb ? 1u : 0u;
  t->numTokens = s.numTokens;
  t->numPairs = s.numTokens * s.topK;
  t->topK = s.topK;
  t->numExperts = s.numExperts;
  t->maxReplicas = s.maxReplicas;
  t->numSlots = s.numSlots;
  t->heatRows = s.heatRows;
  t->heatRowStride = s.heatRowStride;
  if (t->numPairs == 0) {
    t->blockDim = 0;
    t->pairsPerCore = 0;
    t->tilePairs = 8;
    return "";
  }
  t->pairsPerCore =
      static_cast<int64_t>(RoundUp(CeilDiv(static_cast<uint64_t>(t->numPairs), coreNum), 8));
  t->blockDim = static_cast<uint32_t>(CeilDiv(static_cast<uint64_t>(t->numPairs), t->pairsPerCore));
  uint64_t tile = (ubBytes - tables) / perPair / 8 * 8;
  if (tile > kMaxIdTile) tile = kMaxIdTile;
  if (tile > static_cast<uint64_t>(t->pairsPerCore)) tile = static_cast<uint64_t>(t->pairsPerCore);
  t->tilePairs = static_cast<uint32_t>(tile);
  return "";
}

// ------------------------------------------------------------------ count_from_group_list

inline std::string ComputeCountFromGroupListTiling(int64_t numGroups, uint32_t elemBytes,
                                                   bool cumulative, int64_t slotOffset,
                                                   int64_t numSlots, int64_t heatRows,
                                                   int64_t heatRowStride, uint32_t coreNum,
                                                   CountFromGroupListTiling* t) {
  if (coreNum == 0) return "count_from_group_list tiling: coreNum must be >= 1, got 0";
  if (elemBytes != 4 && elemBytes != 8) {
    return "count_from_group_list tiling: elemBytes must be 4 or 8, got " +
           std::to_string(elemBytes);
  }
  // Compared without adding (slot_offset + S_local may overflow), as the op's checks do.
  if (numGroups < 0 || slotOffset < 0 || slotOffset > numSlots ||
      numGroups > numSlots - slotOffset) {
    return "count_from_group_list: expected 0 <= slot_offset and slot_offset + S_local <= P=" +
           std::to_string(numSlots) + ", got slot_offset=" + std::to_string(slotOffset) +
           " S_local=" + std::to_string(numGroups);
  }
  if (heatRows < 1 || (heatRows > 1 && heatRowStride < numSlots)) {
    return "count_from_group_list tiling: expected H >= 1 and heat row stride >= P (H > 1), "
           "got H=" +
           std::to_string(heatRows) + " stride=" + std::to_string(heatRowStride);
  }
  *t = CountFromGroupListTiling{};
  t->elemBytes = elemBytes;
  t->cumulative = cumulative ? 1u : 0u;
  t->numGroups = numGroups;
  t->slotOffset = slotOffset;
  t->numSlots = numSlots;
  t->heatRows = heatRows;
  t->heatRowStride = heatRowStride;
  if (numGroups == 0) {
    t->blockDim = 0;
    t->groupsPerCore = 0;
    t->tileGroups = 8;
    return "";
  }
  uint64_t perCore = RoundUp(CeilDiv(static_cast<uint64_t>(numGroups), coreNum), 8);
  if (perCore < kMinGroupsPerCore) perCore = kMinGroupsPerCore;  // launch cost beats parallelism
  t->groupsPerCore = static_cast<int64_t>(perCore);
  t->blockDim = static_cast<uint32_t>(CeilDiv(static_cast<uint64_t>(numGroups), perCore));
  uint64_t tile = RoundUp(static_cast<uint64_t>(numGroups) < perCore ? numGroups : perCore, 8);
  if (tile > kMaxGroupTile) tile = kMaxGroupTile;
  t->tileGroups = static_cast<uint32_t>(tile);
  return "";
}

// ------------------------------------------------------------------ update_expert_weights

inline std::string ComputeCopyRowsTiling(int64_t rowBytes, int64_t numRows, int64_t numSlots,
                                         uint32_t slotBytes, bool gmAligned, uint32_t coreNum,
                                         uint32_t ubBytes, CopyRowsTiling* t) {
  if (coreNum == 0) return "update_expert_weights tiling: coreNum must be >= 1, got 0";
  if (slotBytes != 4 && slotBytes != 8) {
    return "update_expert_weights tiling: slotBytes must be 4 or 8, got " +
           std::to_string(slotBytes);
  }
  if (rowBytes < 0 || numRows < 0 || numSlots < 0) {
    return "update_expert_weights tiling: expected non-negative sizes, got rowBytes=" +
           std::to_string(rowBytes) + " M=" + std::to_string(numRows) +
           " S=" + std::to_string(numSlots);
  }
  *t = CopyRowsTiling{};
  t->slotBytes = slotBytes;
  t->rowBytes = rowBytes;
  t->numRows = numRows;
  t->numSlots = numSlots;
  t->alignedRows = (gmAligned && rowBytes % kBlockBytes == 0) ? 1u : 0u;
  uint64_t tile = ubBytes / kBufferNum / kBlockBytes * kBlockBytes;
  if (tile > kMaxCopyTileBytes) tile = kMaxCopyTileBytes;
  const uint64_t rowRounded = RoundUp(static_cast<uint64_t>(rowBytes), kBlockBytes);
  if (rowRounded > 0 && tile > rowRounded) tile = rowRounded;
  if (tile < kBlockBytes) return "update_expert_weights tiling: Unified Buffer too small";
  t->tileBytes = static_cast<uint32_t>(tile);
  t->tilesPerRow = static_cast<int64_t>(CeilDiv(static_cast<uint64_t>(rowBytes), tile));
  const uint64_t units = static_cast<uint64_t>(numRows) * static_cast<uint64_t>(t->tilesPerRow);
  if (units == 0) {
    t->blockDim = 0;
    t->unitsPerCore = 0;
    return "";
  }
  t->unitsPerCore = static_cast<int64_t>(CeilDiv(units, coreNum));
  t->blockDim = static_cast<uint32_t>(CeilDiv(units, t->unitsPerCore));
  return "";
}

// ------------------------------------------------------------------ update_expert_map

inline std::string ComputeCopyTablesTiling(const int64_t* tableBytes, uint32_t numTables,
                                           uint32_t ubBytes, CopyTablesTiling* t) {
  if (numTables > kMaxMapTables) {
    return "update_expert_map tiling: at most 4 tables, got " + std::to_string(numTables);
  }
  *t = CopyTablesTiling{};
  t->numTables = numTables;
  for (uint32_t i = 0; i < numTables; ++i) {
    if (tableBytes[i] < 0) return "update_expert_map tiling: negative table size";
    t->tableBytes[i] = tableBytes[i];
  }
  uint64_t tile = ubBytes / kBufferNum / kBlockBytes * kBlockBytes;
  if (tile > kMaxCopyTileBytes) tile = kMaxCopyTileBytes;
  if (tile < kBlockBytes) return "update_expert_map tiling: Unified Buffer too small";
  t->tileBytes = static_cast<uint32_t>(tile);
  t->blockDim = numTables;
  return "";
}

}  // namespace eplb_ascendc
