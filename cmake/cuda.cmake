# CUDA backend of eplb_rt._C.
#
# Included by the top-level CMakeLists.txt after target `_C` exists, when torch was built with CUDA
# and nvcc was found. Adds csrc/cuda/ to `_C`, defines EPLB_RT_WITH_CUDA (build_info reports the
# backend from it) and links the CUDA runtime and torch's c10_cuda.
#
# Architectures, first that is set:
#   -DEPLB_RT_CUDA_ARCHITECTURES="80;90"  (CMake syntax: 80 = SASS + PTX, 80-real = SASS only)
#   TORCH_CUDA_ARCH_LIST in the environment ("8.0 9.0+PTX", torch's own syntax)
#   the default "80;90" (A100, H100/H200)
#
# Flags: -O3 -lineinfo, and --fmad=false with no --use_fast_math: the replica rule
# (csrc/common/replica_rule.h) must compute exactly as in IEEE float32 on every backend.
include_guard(GLOBAL)

if(NOT TARGET _C)
  message(FATAL_ERROR "cmake/cuda.cmake: include it after target _C is defined")
endif()

set(EPLB_RT_CUDA_ARCHITECTURES "" CACHE STRING
    "CUDA architectures for csrc/cuda (empty: TORCH_CUDA_ARCH_LIST, else 80;90)")

# Torch's "8.0 8.6+PTX 9.0a" -> CMake's "80-real;86;90a-real".
function(eplb_rt_torch_arch_list_to_cmake torch_list out_var)
  string(REPLACE " " ";" entries "${torch_list}")
  set(result "")
  foreach(entry IN LISTS entries)
    if(entry STREQUAL "")
      continue()
    endif()
    set(suffix "-real")
    if(entry MATCHES "\\+PTX$")
      set(suffix "")
      string(REGEX REPLACE "\\+PTX$" "" entry "${entry}")
    endif()
    string(REPLACE "." "" arch "${entry}")
    list(APPEND result "${arch}${suffix}")
  endforeach()
  set(${out_var} "${result}" PARENT_SCOPE)
endfunction()

if(EPLB_RT_CUDA_ARCHITECTURES)
  set(_eplb_rt_cuda_archs "${EPLB_RT_CUDA_ARCHITECTURES}")
elseif(DEFINED ENV{TORCH_CUDA_ARCH_LIST} AND NOT "$ENV{TORCH_CUDA_ARCH_LIST}" STREQUAL "")
  eplb_rt_torch_arch_list_to_cmake("$ENV{TORCH_CUDA_ARCH_LIST}" _eplb_rt_cuda_archs)
else()
  set(_eplb_rt_cuda_archs "80;90")
endif()

# enable_language needs CMAKE_CUDA_ARCHITECTURES set beforehand, or it probes the compiler default.
if(NOT DEFINED CMAKE_CUDA_ARCHITECTURES)
  set(CMAKE_CUDA_ARCHITECTURES "${_eplb_rt_cuda_archs}")
endif()
enable_language(CUDA)
find_package(CUDAToolkit REQUIRED)

set(EPLB_RT_CUDA_SOURCES
    ${CMAKE_CURRENT_LIST_DIR}/../csrc/cuda/route_and_count.cu
    ${CMAKE_CURRENT_LIST_DIR}/../csrc/cuda/count_from_group_list.cu
    ${CMAKE_CURRENT_LIST_DIR}/../csrc/cuda/update_expert_weights.cu
    ${CMAKE_CURRENT_LIST_DIR}/../csrc/cuda/update_expert_map.cu
    ${CMAKE_CURRENT_LIST_DIR}/../csrc/cuda/ops_cuda.cpp)
target_sources(_C PRIVATE ${EPLB_RT_CUDA_SOURCES})
if(NOT EPLB_RT_CXX_STANDARD)  # the top level sets it from torch's version
  set(EPLB_RT_CXX_STANDARD 17)
endif()
set_target_properties(_C PROPERTIES
  CUDA_ARCHITECTURES "${_eplb_rt_cuda_archs}"
  CUDA_STANDARD ${EPLB_RT_CXX_STANDARD}
  CUDA_STANDARD_REQUIRED ON)
target_compile_definitions(_C PRIVATE EPLB_RT_WITH_CUDA)
target_compile_options(_C PRIVATE
  $<$<COMPILE_LANGUAGE:CUDA>:-O3 -lineinfo --fmad=false>)

# c10_cuda (CUDAStream, CUDAGuard): the library next to libc10 in the torch package (_torch_dir:
# the top level asked the interpreter for it; a project that includes this file alone may set
# EPLB_RT_C10_CUDA_LIBRARY itself).
if(NOT _torch_dir)
  find_package(Python COMPONENTS Interpreter QUIET)
  if(Python_EXECUTABLE)
    execute_process(
      COMMAND "${Python_EXECUTABLE}" -c "import os, torch; print(os.path.dirname(torch.__file__))"
      OUTPUT_VARIABLE _torch_dir OUTPUT_STRIP_TRAILING_WHITESPACE)
  endif()
endif()
find_library(EPLB_RT_C10_CUDA_LIBRARY c10_cuda HINTS "${_torch_dir}/lib")
if(NOT EPLB_RT_C10_CUDA_LIBRARY)
  message(FATAL_ERROR "cmake/cuda.cmake: libc10_cuda not found (is torch built with CUDA?)")
endif()
target_link_libraries(_C PRIVATE CUDA::cudart ${EPLB_RT_C10_CUDA_LIBRARY})

message(STATUS "eplb_rt: CUDA backend ON: nvcc ${CMAKE_CUDA_COMPILER_VERSION}, "
               "architectures ${_eplb_rt_cuda_archs}, flags -O3 -lineinfo --fmad=false")
