// Tiling structs of eplb_rt's AscendC kernels: plain data, no std:: types.
//
// Included by the kernels (device code: only <stdint.h>), by the launchers' header
// eplb_kernels.h, and by eplb_tiling.h, which computes them on the host.
#pragma once

#include <stdint.h>

namespace eplb_ascendc {

constexpr uint32_t kBlockBytes = 32;               // DataCopy granule, UB alignment
constexpr uint32_t kBufferNum = 2;                 // double buffering of the streamed tiles
constexpr uint32_t kMaxIdTile = 2048;              // ids per route_and_count tile
constexpr uint32_t kMaxGroupTile = 2048;           // group_list entries per tile
constexpr uint32_t kMaxCopyTileBytes = 32 * 1024;  // copy tile: one DataCopyPad block (< 64 KiB)
constexpr uint32_t kMinGroupsPerCore = 1024;       // below this one core does the whole group_list
constexpr uint32_t kMaxMapTables = 4;              // log2phy, logcnt, replica_share, expert_map

struct RouteAndCountShape {
  int64_t numTokens;      // N
  int32_t topK;           // K
  int32_t numExperts;     // E
  int32_t maxReplicas;    // R
  int32_t numSlots;       // P
  int64_t heatRows;       // H
  int64_t heatRowStride;  // elements between heat rows (L*P for a view of the [H, L, P] ring)
  uint32_t idBytes;       // 4: int32 topk_ids / phy_ids, 8: int64
  bool hasShare;          // replica_share given (else uniform)
  uint32_t codeOffset;    // shift of the position codes, in [0, 2^16) (replica_rule.h)
};

struct RouteAndCountTiling {
  uint32_t blockDim;  // vector (AIV) cores to launch (0: nothing to do)
  uint32_t idBytes;
  uint32_t hasShare;
  uint32_t tilePairs;   // ids per UB tile, a multiple of 8
  uint32_t tablesInUb;  // 1: log2phy (and replica_share) copied into UB; 0: read from GM
  uint32_t codeOffset;  // shift of the position codes (replica_rule.h)
  int64_t numTokens;
  int64_t numPairs;      // N * K
  int64_t pairsPerCore;  // contiguous ids per core, a multiple of 8
  int32_t topK;
  int32_t numExperts;
  int32_t maxReplicas;
  int32_t numSlots;
  int64_t heatRows;
  int64_t heatRowStride;
};

struct CountFromGroupListTiling {
  uint32_t blockDim;
  uint32_t elemBytes;   // 4: int32 group_list, 8: int64
  uint32_t cumulative;  // 1: inclusive prefix sums
  uint32_t tileGroups;  // entries per UB tile, a multiple of 8
  int64_t numGroups;    // S_local
  int64_t groupsPerCore;
  int64_t slotOffset;
  int64_t numSlots;  // P, the heat row length
  int64_t heatRows;
  int64_t heatRowStride;
};

struct CopyRowsTiling {
  uint32_t blockDim;
  uint32_t slotBytes;    // 4: int32 slots, 8: int64
  uint32_t tileBytes;    // a multiple of 32
  uint32_t alignedRows;  // 1: rows start 32-byte aligned in GM (plain DataCopy for whole tiles)
  int64_t rowBytes;      // bytes of one expert slice weights[t][s]
  int64_t numRows;       // M, staged rows
  int64_t numSlots;      // S, rows of the weight tensor
  int64_t tilesPerRow;
  int64_t unitsPerCore;  // (row, tile) pairs per core
};

struct CopyTablesTiling {
  uint32_t blockDim;  // one core per table
  uint32_t tileBytes;
  uint32_t numTables;  // tables present (2 or 4), packed first
  uint32_t pad;
  int64_t tableBytes[kMaxMapTables];
};

}  // namespace eplb_ascendc
