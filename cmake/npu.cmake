# NPU backend: AscendC kernels (ascendc_kernels/) built with CANN's ascendc_library(), and the
# csrc/npu launchers added to the extension target `_C` with EPLB_RT_WITH_NPU defined.
#
# Included by the top-level CMakeLists.txt when the NPU backend is not OFF. The mode comes from
# EPLB_RT_NPU (AUTO|ON|OFF, default AUTO): under AUTO a missing CANN or torch_npu is a warning
# and the NPU kernels are skipped; under ON it is an error. Sets EPLB_RT_NPU_BUILT (ON/OFF) for
# the build summary.
#
# Cache options:
#   SOC_VERSION   the Ascend SoC the kernels are compiled for (default Ascend910B1; Atlas A3:
#                 Ascend910_9391 etc., see CANN's documentation for the list)
#   CANN_ROOT     the toolkit root if it is not found from ASCEND_HOME_PATH & co.
set(SOC_VERSION "Ascend910B1" CACHE STRING "Ascend SoC the AscendC kernels are compiled for")
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
endif()

if(NOT CANN_FOUND)
  _eplb_npu_unavailable("CANN was not found (set ASCEND_HOME_PATH or source set_env.sh of the toolkit)")
elseif(_eplb_torch_npu_dir STREQUAL "")
  _eplb_npu_unavailable("torch_npu is not importable by ${Python_EXECUTABLE}")
elseif(NOT TARGET _C)
  _eplb_npu_unavailable("target _C is not defined before cmake/npu.cmake is included")
else()
  # CANN's AscendC module reads these two variables.
  set(ASCEND_CANN_PACKAGE_PATH "${CANN_ROOT}")
  if(NOT DEFINED RUN_MODE)
    set(RUN_MODE npu)
  endif()
  include("${CANN_ASCENDC_CMAKE_DIR}/ascendc.cmake")

  file(GLOB _eplb_kernel_sources CONFIGURE_DEPENDS "${_eplb_repo}/ascendc_kernels/*/*.cpp")
  ascendc_library(eplb_ascendc_kernels STATIC ${_eplb_kernel_sources})
  ascendc_include_directories(eplb_ascendc_kernels PRIVATE "${_eplb_repo}/ascendc_kernels/include")
  # The kernels' host stubs end up in the Python extension (a shared object).
  get_target_property(_eplb_kernels_imported eplb_ascendc_kernels IMPORTED)
  if(NOT _eplb_kernels_imported)
    set_target_properties(eplb_ascendc_kernels PROPERTIES POSITION_INDEPENDENT_CODE ON)
  endif()

  file(GLOB _eplb_npu_sources CONFIGURE_DEPENDS "${_eplb_repo}/csrc/npu/*.cpp")
  target_sources(_C PRIVATE ${_eplb_npu_sources})
  target_compile_definitions(_C PRIVATE EPLB_RT_WITH_NPU)
  target_include_directories(_C PRIVATE
    "${_eplb_repo}/ascendc_kernels/include"
    "${_eplb_torch_npu_dir}/include"
    "${_eplb_torch_npu_dir}/include/third_party/acl/inc"
    ${CANN_INCLUDE_DIRS})
  find_library(EPLB_TORCH_NPU_LIBRARY torch_npu PATHS "${_eplb_torch_npu_dir}/lib" NO_DEFAULT_PATH REQUIRED)
  # The launchers are extern "C" with plain arguments, so the kernel library's C++ ABI does not
  # have to match torch's (_GLIBCXX_USE_CXX11_ABI).
  target_link_libraries(_C PRIVATE eplb_ascendc_kernels "${EPLB_TORCH_NPU_LIBRARY}" CANN::ascendcl)
  set(EPLB_RT_NPU_BUILT ON)
  message(STATUS "eplb_rt: NPU kernels: CANN ${CANN_ROOT}, SOC_VERSION ${SOC_VERSION}, torch_npu ${_eplb_torch_npu_dir}")
endif()

unset(_eplb_repo)
unset(_eplb_torch_npu_dir)
