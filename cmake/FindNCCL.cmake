# FindNCCL: locates the NCCL headers and library.
#
# Honours NCCL_ROOT (CMake variable or environment variable), then the CUDA toolkit
# (CUDAToolkit_LIBRARY_ROOT / CUDA_HOME / /usr/local/cuda), then the system paths.
# Defines NCCL_FOUND, NCCL_INCLUDE_DIR, NCCL_LIBRARY, NCCL_VERSION and the imported
# target NCCL::NCCL.
set(_nccl_hints)
foreach(_root "${NCCL_ROOT}" "$ENV{NCCL_ROOT}" "${CUDAToolkit_LIBRARY_ROOT}" "$ENV{CUDA_HOME}"
              "/usr/local/cuda")
  if(_root)
    list(APPEND _nccl_hints "${_root}")
  endif()
endforeach()

find_path(NCCL_INCLUDE_DIR nccl.h HINTS ${_nccl_hints} PATH_SUFFIXES include)
find_library(NCCL_LIBRARY NAMES nccl HINTS ${_nccl_hints}
             PATH_SUFFIXES lib lib64 lib/x86_64-linux-gnu targets/x86_64-linux/lib)

if(NCCL_INCLUDE_DIR AND EXISTS "${NCCL_INCLUDE_DIR}/nccl.h")
  file(STRINGS "${NCCL_INCLUDE_DIR}/nccl.h" _nccl_ver REGEX "^#define NCCL_(MAJOR|MINOR|PATCH) ")
  string(REGEX REPLACE ".*NCCL_MAJOR ([0-9]+).*" "\\1" _maj "${_nccl_ver}")
  string(REGEX REPLACE ".*NCCL_MINOR ([0-9]+).*" "\\1" _min "${_nccl_ver}")
  string(REGEX REPLACE ".*NCCL_PATCH ([0-9]+).*" "\\1" _pat "${_nccl_ver}")
  set(NCCL_VERSION "${_maj}.${_min}.${_pat}")
endif()

if(NOT NCCL_INCLUDE_DIR OR NOT NCCL_LIBRARY)
  set(_what "")
  if(NOT NCCL_INCLUDE_DIR)
    string(APPEND _what " nccl.h")
  endif()
  if(NOT NCCL_LIBRARY)
    string(APPEND _what " libnccl.so")
  endif()
  if(NOT NCCL_FIND_QUIETLY)
    message(STATUS "NCCL: could not find${_what} (searched ${_nccl_hints} and system paths). "
                   "Set NCCL_ROOT to the folder holding include/nccl.h and lib/libnccl.so.")
  endif()
endif()

include(FindPackageHandleStandardArgs)
find_package_handle_standard_args(NCCL REQUIRED_VARS NCCL_INCLUDE_DIR NCCL_LIBRARY
                                  VERSION_VAR NCCL_VERSION)
if(NCCL_FOUND AND NOT TARGET NCCL::NCCL)
  add_library(NCCL::NCCL UNKNOWN IMPORTED)
  set_target_properties(NCCL::NCCL PROPERTIES IMPORTED_LOCATION "${NCCL_LIBRARY}"
                                              INTERFACE_INCLUDE_DIRECTORIES "${NCCL_INCLUDE_DIR}")
endif()
mark_as_advanced(NCCL_INCLUDE_DIR NCCL_LIBRARY)
