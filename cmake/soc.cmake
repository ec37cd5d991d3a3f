# SOC_VERSION for the AscendC kernels: detected at configure time, overridable. Included by
# cmake/npu.cmake; also runs on its own (`cmake -P`) for the tests.
#
#   eplb_rt_detect_soc(<soc var> <source var>)
#       -DSOC_VERSION=<name>, else $SOC_VERSION, else device 0's name as torch_npu gives it
#       (CANN's name, torch.npu.get_device_name() run by ${Python_EXECUTABLE}, where torch_npu
#       is installed: EPLB_RT_TORCH_NPU_DIR set), else the first device `npu-smi info` lists
#       ("| 0     910B1     | OK ..." -> Ascend910B1; an A3 part shows as Ascend910 there,
#       without the number CANN's name has), else Ascend910B1; <source var> says which.
#   eplb_rt_soc_known(<soc> <bool var>)
#       whether the SoC belongs to a family of ascendc_kernels/include/eplb_platform.h.
include_guard(GLOBAL)

# Keep in step with kSocTable in eplb_platform.h: a family's prefix, then a digit (a plain
# Ascend910B is an older training part, without DataCopyPad).
set(EPLB_RT_SOC_FAMILIES Ascend910_93 Ascend910B)

function(eplb_rt_detect_soc out_soc out_source)
  if(SOC_VERSION)
    set(${out_soc} "${SOC_VERSION}" PARENT_SCOPE)
    set(${out_source} "-DSOC_VERSION" PARENT_SCOPE)
    return()
  endif()
  if(DEFINED ENV{SOC_VERSION} AND NOT "$ENV{SOC_VERSION}" STREQUAL "")
    set(${out_soc} "$ENV{SOC_VERSION}" PARENT_SCOPE)
    set(${out_source} "environment SOC_VERSION" PARENT_SCOPE)
    return()
  endif()
  if(Python_EXECUTABLE AND EPLB_RT_TORCH_NPU_DIR)
    execute_process(
      COMMAND "${Python_EXECUTABLE}" -c
              "import torch, torch_npu; print(torch.npu.get_device_name(0))"
      OUTPUT_VARIABLE _name OUTPUT_STRIP_TRAILING_WHITESPACE ERROR_QUIET
      RESULT_VARIABLE _name_rc TIMEOUT 120)
    if(_name_rc EQUAL 0 AND _name MATCHES "^Ascend[A-Za-z0-9_-]+$")
      set(${out_soc} "${_name}" PARENT_SCOPE)
      set(${out_source} "torch_npu" PARENT_SCOPE)
      return()
    endif()
  endif()
  find_program(EPLB_RT_NPU_SMI npu-smi)
  if(EPLB_RT_NPU_SMI)
    execute_process(COMMAND "${EPLB_RT_NPU_SMI}" info OUTPUT_VARIABLE _smi ERROR_QUIET
                    RESULT_VARIABLE _smi_rc TIMEOUT 20)
    # Device rows: "| <npu id>  <Name>  | <health> | ..."; CANN's SOC_VERSION is "Ascend" + Name.
    if(_smi_rc EQUAL 0
       AND _smi MATCHES "\\|[ ]*[0-9]+[ ]+([A-Za-z0-9_]+)[ ]*\\|[ ]*[A-Za-z]")
      set(_name "${CMAKE_MATCH_1}")
      if(NOT _name MATCHES "^Ascend")
        set(_name "Ascend${_name}")
      endif()
      set(${out_soc} "${_name}" PARENT_SCOPE)
      set(${out_source} "npu-smi" PARENT_SCOPE)
      return()
    endif()
  endif()
  set(${out_soc} "Ascend910B1" PARENT_SCOPE)
  set(${out_source} "default: no SOC_VERSION given and no device in npu-smi" PARENT_SCOPE)
endfunction()

function(eplb_rt_soc_known soc out_var)
  set(_known FALSE)
  foreach(_family IN LISTS EPLB_RT_SOC_FAMILIES)
    if(soc MATCHES "^${_family}[0-9]")
      set(_known TRUE)
    endif()
  endforeach()
  set(${out_var} ${_known} PARENT_SCOPE)
endfunction()
