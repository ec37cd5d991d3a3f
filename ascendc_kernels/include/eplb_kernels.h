// Host launchers of eplb_rt's AscendC kernels (ascendc_kernels/launch/launchers.cpp), shared by
// csrc/npu and the host-emulation tests.
//
// Every launcher takes global-memory addresses (GM_ADDR on the device side, plain uint8_t* here),
// the tiling computed by eplb_tiling.h (structs in eplb_tiling_types.h), and the stream
// (aclrtStream) to launch on. It returns 0 when the kernel was launched (or, with
// tiling.blockDim == 0, nothing had to be), else the nonzero status of the generated launch stub,
// which the caller must turn into an error: a binary without a kernel for the device's SoC does
// nothing otherwise. Launchers do not check tensors (csrc/npu does), never allocate and never
// synchronise. Under ASCENDC_HOST_SIM they run the kernels on the CPU emulation and raise
// host_sim::Error on a fault.
#pragma once

#include <stdint.h>

#include "eplb_tiling_types.h"

extern "C" {

// topk_ids/phy_ids [N, K] (tiling.idBytes wide), log2phy [E, R] int32, logcnt [E] int32,
// share [E, R] float32 or null, heat: the [H, P] int32 view (row stride in tiling), step: int64[1].
uint32_t eplb_route_and_count(uint8_t* topkIds, uint8_t* log2phy, uint8_t* logcnt, uint8_t* share,
                          uint8_t* heat, uint8_t* step, uint8_t* phyIds,
                          const eplb_ascendc::RouteAndCountTiling* tiling, void* stream);

// group_list [S_local] (tiling.elemBytes wide); heat as above; step int64[1].
uint32_t eplb_count_from_group_list(uint8_t* groupList, uint8_t* heat, uint8_t* step,
                                const eplb_ascendc::CountFromGroupListTiling* tiling, void* stream);

// One weight tensor of a layer: weight [S, rowBytes], staged [M, rowBytes], slots [M]
// (tiling.slotBytes wide). Call once per tensor of the layer (w13, w2, scales, ...).
uint32_t eplb_update_expert_weights(uint8_t* weight, uint8_t* staged, uint8_t* slots,
                                const eplb_ascendc::CopyRowsTiling* tiling, void* stream);

// Copies tables src[i] -> dst[i], i < tiling.numTables, tiling.tableBytes[i] bytes each.
uint32_t eplb_update_expert_map(uint8_t* const* dst, uint8_t* const* src,
                            const eplb_ascendc::CopyTablesTiling* tiling, void* stream);

}  // extern "C"
