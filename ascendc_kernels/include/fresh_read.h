// Scalar reads of GM that another kernel or the host rewrites between launches (the step
// counter, a dispatch kernel's group_list, the routing tables a commit replaces).
#pragma once

#include "kernel_operator.h"

namespace eplb_ascendc {

// gm[index], read past the core's DataCache: the scalar unit reads GM through a per-core cache
// that keeps its lines from earlier launches, so a value rewritten since (by MTE, another core or
// the host) would come back stale. CANN's GetValue asks for DataCacheCleanAndInvalid first.
template <class T>
__aicore__ inline T ReadFresh(const AscendC::GlobalTensor<T>& gm, uint64_t index) {
  AscendC::DataCacheCleanAndInvalid<T, AscendC::CacheLine::SINGLE_CACHE_LINE,
                                    AscendC::DcciDst::CACHELINE_OUT>(gm[index]);
  return gm.GetValue(index);
}

}  // namespace eplb_ascendc
