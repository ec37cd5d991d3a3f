// The Python module eplb_rt._C. Loading it registers the ops (torch.ops.eplb_rt.*) through the
// static TORCH_LIBRARY blocks of the other files; its only Python function is build_info().
#include <pybind11/pybind11.h>

#include "eplb_rt_build_info.h"

namespace py = pybind11;

namespace {

py::dict build_info() {
  py::dict backends;
  backends["cpu"] = true;
#ifdef EPLB_RT_WITH_CUDA
  backends["cuda"] = true;
#else
  backends["cuda"] = false;
#endif
#ifdef EPLB_RT_WITH_NPU
  backends["npu"] = true;
#else
  backends["npu"] = false;
#endif
  py::dict info;
  info["version"] = EPLB_RT_VERSION;
  info["torch_version"] = EPLB_RT_TORCH_VERSION;
  info["backends"] = backends;
  info["compiler"] = EPLB_RT_COMPILER;
  info["build_type"] = EPLB_RT_BUILD_TYPE;
  info["cxx_flags"] = EPLB_RT_CXX_FLAGS;
  info["npu_soc"] = EPLB_RT_NPU_SOC[0] != '\0' ? py::object(py::str(EPLB_RT_NPU_SOC)) : py::none();
  return info;
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "eplb_rt kernels; the ops are torch.ops.eplb_rt.*, see eplb_rt.ops";
  m.def("build_info", &build_info,
        "Dict: version, torch_version (built against), backends {cpu, cuda, npu}, compiler, "
        "build_type, cxx_flags, npu_soc (SOC_VERSION of the NPU kernels, None if not built).");
}
