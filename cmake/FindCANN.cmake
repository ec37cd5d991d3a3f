# FindCANN: locate Huawei CANN (the Ascend toolkit) for building AscendC kernels.
#
# Search order: -DCANN_ROOT=..., $ASCEND_HOME_PATH, $ASCEND_TOOLKIT_HOME, $ASCEND_CANN_PACKAGE_PATH,
# /usr/local/Ascend/ascend-toolkit/latest, /usr/local/Ascend/cann, $HOME/Ascend/ascend-toolkit/latest.
# A root qualifies when it holds CANN's AscendC CMake module (ascendc_kernel_cmake/ascendc.cmake)
# and the ACL runtime (lib64/libascendcl.so).
#
# Result variables:
#   CANN_FOUND              TRUE when both were found
#   CANN_ROOT               the toolkit root
#   CANN_ASCENDC_CMAKE_DIR  directory of ascendc.cmake (defines ascendc_library())
#   CANN_INCLUDE_DIRS       ACL headers
#   CANN_LIBRARY_DIR        lib64
# Imported target:
#   CANN::ascendcl          the ACL runtime library
include(FindPackageHandleStandardArgs)

set(_cann_hints "")
foreach(_cann_var ASCEND_HOME_PATH ASCEND_TOOLKIT_HOME ASCEND_CANN_PACKAGE_PATH)
  if(DEFINED ENV{${_cann_var}} AND NOT "$ENV{${_cann_var}}" STREQUAL "")
    list(APPEND _cann_hints "$ENV{${_cann_var}}")
  endif()
endforeach()
list(APPEND _cann_hints
     /usr/local/Ascend/ascend-toolkit/latest
     /usr/local/Ascend/cann
     "$ENV{HOME}/Ascend/ascend-toolkit/latest")
if(CANN_ROOT)
  list(INSERT _cann_hints 0 "${CANN_ROOT}")
endif()

find_path(CANN_ASCENDC_CMAKE_DIR
  NAMES ascendc.cmake
  HINTS ${_cann_hints}
  PATH_SUFFIXES compiler/tikcpp/ascendc_kernel_cmake tools/tikcpp/ascendc_kernel_cmake
                 ascendc_kernel_cmake
  NO_DEFAULT_PATH)

find_library(CANN_ASCENDCL_LIBRARY
  NAMES ascendcl
  HINTS ${_cann_hints}
  PATH_SUFFIXES lib64 runtime/lib64
  NO_DEFAULT_PATH)

find_path(CANN_INCLUDE_DIR
  NAMES acl/acl.h
  HINTS ${_cann_hints}
  PATH_SUFFIXES include runtime/include
  NO_DEFAULT_PATH)

find_package_handle_standard_args(CANN
  REQUIRED_VARS CANN_ASCENDC_CMAKE_DIR CANN_ASCENDCL_LIBRARY CANN_INCLUDE_DIR)

if(CANN_FOUND)
  get_filename_component(CANN_LIBRARY_DIR "${CANN_ASCENDCL_LIBRARY}" DIRECTORY)
  get_filename_component(_cann_root "${CANN_LIBRARY_DIR}" DIRECTORY)
  if(_cann_root MATCHES "/runtime$")
    get_filename_component(_cann_root "${_cann_root}" DIRECTORY)
  endif()
  set(CANN_ROOT "${_cann_root}" CACHE PATH "CANN toolkit root" FORCE)
  set(CANN_INCLUDE_DIRS "${CANN_INCLUDE_DIR}")
  if(NOT TARGET CANN::ascendcl)
    add_library(CANN::ascendcl SHARED IMPORTED)
    set_target_properties(CANN::ascendcl PROPERTIES
      IMPORTED_LOCATION "${CANN_ASCENDCL_LIBRARY}"
      INTERFACE_INCLUDE_DIRECTORIES "${CANN_INCLUDE_DIRS}")
  endif()
endif()

mark_as_advanced(CANN_ASCENDC_CMAKE_DIR CANN_ASCENDCL_LIBRARY CANN_INCLUDE_DIR)
unset(_cann_hints)
unset(_cann_root)
