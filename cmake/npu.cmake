# NPU backend: AscendC kernels (ascendc_kernels/) built with CANN's ascendc_library() into the
# shared library libeplb_ascendc_kernels.so next to the extension (found through rpath $ORIGIN,
# as CANN's own op projects ship theirs), and the csrc/npu launchers plus the host launchers
# (ascendc_kernels/launch/launchers.cpp, which call the generated aclrtlaunch_<kernel> stubs)
# added to the extension target `_C` with EPLB_RT_WITH_NPU and EPLB_RT_SOC_VERSION defined.
#
# Included by the top-level CMakeLists.txt when the NPU backend is not OFF. The mode comes from
# EPLB_RT_NPU (AUTO|ON|OFF, default AUTO): under AUTO a missing CANN or torch_npu is a warning
# and the NPU kernels are skipped; under ON it is an error. Sets EPLB_RT_NPU_BUILT (ON/OFF) and
# EPLB_RT_NPU_SOC (the SoC, with where it came from) for the build summary and build_info().
#
# Cache options:
#   SOC_VERSION   the Ascend SoC the kernels are compiled for. Empty (the default): $SOC_VERSION
#                 from the environment, else the first device `npu-smi info` lists ("910B1" ->
#                 Ascend910B1), else Ascend910B1 with a warning. A binary runs only on its SoC's
#                 family (ascendc_kernels/include/eplb_platform.h): A2 Ascend910B*, A3
#                 Ascend910_93* (not Ascend310P*: no DataCopyPad nor int32 atomic add there).
#   CANN_ROOT     the toolkit root if it is not found from ASCEND_HOME_PATH & co.
set(SOC_VERSION "" CACHE STRING "Ascend SoC the AscendC kernels are compiled for (empty: detect)")
if(NOT DEFINED EPLB_RT_NPU)
  set(EPLB_RT_NPU AUTO)
endif()
set(EPLB_RT_NPU_BUILT OFF)

set(_eplb_repo "${CMAKE_CURRENT_LIST_DIR}/..")

function(_eplb_npu_unavailable reason)
  if(EPLB_RT_NPU STREQUAL "ON")
    message(FATAL_ERROR "eplb_rt: EPLB_RT_NPU=ON but ${reason}")
  endif()
  message(WARNING "eplb_rt: NPU kernels skipped: ${reason}")
endfunction()

include("${CMAKE_CURRENT_LIST_DIR}/soc.cmake")

list(APPEND CMAKE_MODULE_PATH "${CMAKE_CURRENT_LIST_DIR}")
find_package(CANN QUIET)

# torch_npu: its headers and libtorch_npu.so, from the Python that builds the extension
# (EPLB_RT_TORCH_NPU_DIR when the top-level CMakeLists already asked it).
if(NOT Python_EXECUTABLE)
  find_package(Python COMPONENTS Interpreter QUIET)
endif()
set(_eplb_torch_npu_dir "${EPLB_RT_TORCH_NPU_DIR}")  # found by the top level, if it looked
if(_eplb_torch_npu_dir STREQUAL "" AND Python_EXECUTABLE)
  execute_process(
    COMMAND "${Python_EXECUTABLE}" -c "import os, torch_npu; print(os.path.dirname(torch_npu.__file__))"
    OUTPUT_VARIABLE _eplb_torch_npu_dir
    OUTPUT_STRIP_TRAILING_WHITESPACE
    ERROR_QUIET
    RESULT_VARIABLE _eplb_torch_npu_rc)
  if(NOT _eplb_torch_npu_rc EQUAL 0)
    set(_eplb_torch_npu_dir "")
  endif()
  set(EPLB_RT_TORCH_NPU_DIR "${_eplb_torch_npu_dir}")  # the SoC is asked of torch_npu where set
endif()

eplb_rt_detect_soc(_eplb_soc _eplb_soc_source)
eplb_rt_soc_known("${_eplb_soc}" _eplb_soc_known)

if(NOT _eplb_soc_known)
  _eplb_npu_unavailable("SOC_VERSION ${_eplb_soc} (${_eplb_soc_source}) is not a SoC family eplb_rt "
                        "knows (${EPLB_RT_SOC_FAMILIES}, then the part's number); set "
                        "-DSOC_VERSION=<name> (CANN's name, as torch.npu.get_device_name() gives "
                        "it: npu-smi shows an A3 part as Ascend910)")
elseif(NOT CANN_FOUND)
  _eplb_npu_unavailable("CANN was not found (set ASCEND_HOME_PATH or source set_env.sh of the toolkit)")
elseif(_eplb_torch_npu_dir STREQUAL "")
  _eplb_npu_unavailable("torch_npu is not importable by ${Python_EXECUTABLE}")
elseif(NOT TARGET _C)
  _eplb_npu_unavailable("target _C is not defined before cmake/npu.cmake is included")
else()
  # CANN's AscendC module reads these variables.
  set(ASCEND_CANN_PACKAGE_PATH "${CANN_ROOT}")
  set(SOC_VERSION "${_eplb_soc}")
  if(NOT DEFINED RUN_MODE)
    set(RUN_MODE npu)
  endif()
  include("${CANN_ASCENDC_CMAKE_DIR}/ascendc.cmake")

  # Device code only: the host launchers (launch/) and the emulation (host_sim/) stay out.
  file(GLOB _eplb_kernel_sources CONFIGURE_DEPENDS "${_eplb_repo}/ascendc_kernels/*/*.cpp")
  list(FILTER _eplb_kernel_sources EXCLUDE REGEX "/ascendc_kernels/(launch|host_sim)/")
  ascendc_library(eplb_ascendc_kernels SHARED ${_eplb_kernel_sources})
  ascendc_include_directories(eplb_ascendc_kernels PRIVATE "${_eplb_repo}/ascendc_kernels/include"
                              "${_eplb_repo}/csrc/common")
  # Next to the extension, which finds it through rpath $ORIGIN.
  set_target_properties(eplb_ascendc_kernels PROPERTIES
    LIBRARY_OUTPUT_DIRECTORY "${CMAKE_LIBRARY_OUTPUT_DIRECTORY}")

  file(GLOB _eplb_npu_sources CONFIGURE_DEPENDS "${_eplb_repo}/csrc/npu/*.cpp")
  target_sources(_C PRIVATE ${_eplb_npu_sources} "${_eplb_repo}/ascendc_kernels/launch/launchers.cpp")
  target_compile_definitions(_C PRIVATE EPLB_RT_WITH_NPU EPLB_RT_SOC_VERSION="${_eplb_soc}")
  target_include_directories(_C PRIVATE
    "${_eplb_repo}/ascendc_kernels/include"
    "${CMAKE_BINARY_DIR}/include/eplb_ascendc_kernels"  # aclrtlaunch_<kernel>.h, generated
    "${_eplb_torch_npu_dir}/include"
    "${_eplb_torch_npu_dir}/include/third_party/acl/inc"
    ${CANN_INCLUDE_DIRS})
  find_library(EPLB_TORCH_NPU_LIBRARY torch_npu PATHS "${_eplb_torch_npu_dir}/lib" NO_DEFAULT_PATH REQUIRED)
  # The launchers are extern "C" with plain arguments, so the kernel library's C++ ABI does not
  # have to match torch's (_GLIBCXX_USE_CXX11_ABI). libtorch_npu.so is already loaded when the
  # extension is (eplb_rt imports torch_npu first), so only the kernel library needs the rpath.
  target_link_libraries(_C PRIVATE eplb_ascendc_kernels "${EPLB_TORCH_NPU_LIBRARY}" CANN::ascendcl)
  set_property(TARGET _C APPEND PROPERTY INSTALL_RPATH "$ORIGIN")
  set(EPLB_RT_NPU_BUILT ON)
  set(EPLB_RT_NPU_SOC "${_eplb_soc}")
  set(EPLB_RT_NPU_SOC_SOURCE "${_eplb_soc_source}")
  message(STATUS "eplb_rt: NPU kernels: CANN ${CANN_ROOT}, SOC_VERSION ${_eplb_soc} "
                 "(${_eplb_soc_source}), torch_npu ${_eplb_torch_npu_dir}")
endif()

unset(_eplb_repo)
unset(_eplb_torch_npu_dir)
