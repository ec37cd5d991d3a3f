# The extension shares its process with torch, whose libraries use the system's shared libstdc++.
# A GNU compiler that has no libstdc++.so beside it (only libstdc++.a) links a private copy of the
# library into the module; a stream or locale that crosses the two copies then crashes the process
# the first time an op formats an error message (seen on a machine whose default CXX was such a
# GCC: every op that rejected its input segfaulted in std::ostream). Refuse such a compiler at
# configure time, naming it and what to use instead.
include_guard(GLOBAL)

# FATAL_ERROR unless `compiler` (of CMake compiler id `compiler_id`) links libstdc++ as a shared
# library; compilers other than GNU are not checked.
function(eplb_rt_check_shared_libstdcxx compiler compiler_id)
  if(NOT compiler_id STREQUAL "GNU")
    return()
  endif()
  execute_process(
    COMMAND "${compiler}" -print-file-name=libstdc++.so
    OUTPUT_VARIABLE libstdcxx
    OUTPUT_STRIP_TRAILING_WHITESPACE
    RESULT_VARIABLE rc)
  # GCC prints the bare name when it finds no such file in its library path.
  if(NOT rc EQUAL 0 OR NOT IS_ABSOLUTE "${libstdcxx}")
    message(FATAL_ERROR
      "The C++ compiler ${compiler} has no shared libstdc++ (-print-file-name=libstdc++.so "
      "gives '${libstdcxx}'), so eplb_rt._C would carry its own static copy next to the one "
      "torch loads, and the first error message an op formats would crash the process. Use a "
      "compiler with a shared libstdc++, e.g. CXX=/usr/bin/g++ (and CUDAHOSTCXX=/usr/bin/g++ "
      "for nvcc), and delete build/ so that CMake picks it up.")
  endif()
endfunction()
