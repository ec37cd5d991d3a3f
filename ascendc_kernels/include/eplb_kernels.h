// Launchers of eplb_rt's AscendC kernels: the one header shared by the kernels and csrc/npu.
//
// Every launcher takes global-memory addresses (GM_ADDR on the device side, plain uint8_t* here),
// the tiling computed by eplb_tiling.h (structs in eplb_tiling_types.h), and the stream
// (aclrtStream) to launch on. Launchers do not check tensors (csrc/npu does), never allocate and
// never synchronise; with tiling.blockDim == 0 they launch nothing. Under ASCENDC_HOST_SIM the same
// launchers run the kernels on the CPU emulation and raise host_sim::Error on a fault.
#pragma once

#include <stdint.h>

#include "eplb_tiling_types.h"

extern "C" {

// topk_ids/phy_ids [N, K] (tiling.idBytes wide), log2phy [E, R] int32, logcnt [E] int32,
// share [E, R] float32 or null, heat: the [H, P] int32 view (row stride in tiling), step: int64[1].
void eplb_route_and_count(uint8_t* topkIds, uint8_t* log2phy, uint8_t* logcnt, uint8_t* share,
                          uint8_t* heat, uint8_t* step, uint8_t* phyIds,
                          const eplb_ascendc::RouteAndCountTiling* tiling, void* stream);

// group_list [S_local] (tiling.elemBytes wide); heat as above; step int64[1].
void eplb_count_from_group_list(uint8_t* groupList, uint8_t* heat, uint8_t* step,
                                const eplb_ascendc::CountFromGroupListTiling* tiling, void* stream);

// One weight tensor of a layer: weight [S, rowBytes], staged [M, rowBytes], slots [M]
// (tiling.slotBytes wide). Call once per tensor of the layer (w13, w2, scales, ...).
void eplb_update_expert_weights(uint8_t* weight, uint8_t* staged, uint8_t* slots,
                                const eplb_ascendc::CopyRowsTiling* tiling, void* stream);

// Copies tables src[i] -> dst[i], i < tiling.numTables, tiling.tableBytes[i] bytes each.
void eplb_update_expert_map(uint8_t* const* dst, uint8_t* const* src,
                            const eplb_ascendc::CopyTablesTiling* tiling, void* stream);

}  // extern "C"
