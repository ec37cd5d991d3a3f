// The one schema block of torch.ops.eplb_rt. Backends register their kernels in their own files
// (cpu/*.cpp, meta/*.cpp, cuda/, npu/). Mutated arguments are marked (a!) so that torch.compile,
// functionalisation and opcheck know what is written. The contract of each op is in eplb_rt/ops.py.
#include <torch/library.h>

TORCH_LIBRARY(eplb_rt, m) {
  // Map logical top-k ids to replicas (csrc/common/replica_rule.h, its position codes shifted by
  // code_offset) and count the routed pairs per slot into heat[step mod H]; phy_ids gets the
  // physical ids, -1 for padding.
  m.def(
      "route_and_count(Tensor topk_ids, Tensor log2phy, Tensor logcnt, Tensor? replica_share,"
      " Tensor(a!) heat, Tensor step, Tensor(b!) phy_ids, int code_offset=0) -> ()");
  // Add a dispatch kernel's per-local-slot token counts (plain or inclusive prefix sums) into
  // heat[step mod H, slot_offset:slot_offset + S_local].
  m.def(
      "count_from_group_list(Tensor group_list, Tensor(a!) heat, Tensor step, int slot_offset,"
      " bool cumulative) -> ()");
  // weights[t][slots[i]] = staged[t][i] for every tensor t of one layer (in place).
  m.def("update_expert_weights_(Tensor(a!)[] weights, Tensor[] staged, Tensor slots) -> ()");
  // Overwrite one layer's routing tables in place from new_* (same storage: graphs stay valid);
  // num_slots is P, the bound of every slot id in the new tables.
  m.def(
      "update_expert_map_(Tensor(a!) log2phy, Tensor(b!) logcnt, Tensor(c!)? replica_share,"
      " Tensor(d!)? expert_map, Tensor new_log2phy, Tensor new_logcnt,"
      " Tensor? new_replica_share, Tensor? new_expert_map, int num_slots) -> ()");
}
