# SOC_VERSION for the AscendC kernels: detected at configure time, overridable. Included by
# cmake/npu.cmake; also runs on its own (`cmake -P`) for the tests.
#
#   eplb_rt_detect_soc(<soc var> <source var>)
#       -DSOC_VERSION=<name>, else $SOC_VERSION, else the first device `npu-smi info` lists
#       ("| 0     910B1     | OK ..." -> Ascend910B1), else Ascend910B1; <source var> says which.
#   eplb_rt_soc_known(<soc> <bool var>)
#       whether the SoC belongs to a family of ascendc_kernels/include/eplb_platform.h.
include_guard(GLOBAL)

# Keep in step with kSocTable in eplb_platform.h.
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
    string(FIND "${soc}" "${_family}" _at)
    if(_at EQUAL 0)
      set(_known TRUE)
    endif()
  endforeach()
  set(${out_var} ${_known} PARENT_SCOPE)
endfunction()
