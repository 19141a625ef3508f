# FindDNNL: oneDNN headers and library, found directly. (Debian's dnnl-config.cmake insists on
# OpenCL because that build also has a GPU runtime; origami only uses the CPU engine.)
# Honours DNNL_ROOT. Defines DNNL_FOUND, DNNL_VERSION and the imported target DNNL::dnnl.
find_path(DNNL_INCLUDE_DIR dnnl.hpp HINTS "${DNNL_ROOT}" "$ENV{DNNL_ROOT}" PATH_SUFFIXES include)
find_library(DNNL_LIBRARY NAMES dnnl HINTS "${DNNL_ROOT}" "$ENV{DNNL_ROOT}" PATH_SUFFIXES lib lib64)
if(DNNL_INCLUDE_DIR AND EXISTS "${DNNL_INCLUDE_DIR}/oneapi/dnnl/dnnl_version.h")
  file(STRINGS "${DNNL_INCLUDE_DIR}/oneapi/dnnl/dnnl_version.h" _v REGEX "#define DNNL_VERSION_(MAJOR|MINOR|PATCH) ")
  string(REGEX REPLACE ".*MAJOR ([0-9]+).*" "\\1" _maj "${_v}")
  string(REGEX REPLACE ".*MINOR ([0-9]+).*" "\\1" _min "${_v}")
  string(REGEX REPLACE ".*PATCH ([0-9]+).*" "\\1" _pat "${_v}")
  set(DNNL_VERSION "${_maj}.${_min}.${_pat}")
endif()
include(FindPackageHandleStandardArgs)
find_package_handle_standard_args(DNNL REQUIRED_VARS DNNL_INCLUDE_DIR DNNL_LIBRARY
                                  VERSION_VAR DNNL_VERSION
                                  FAIL_MESSAGE "oneDNN not found: run scripts/setup.sh (libdnnl-dev) or set DNNL_ROOT")
if(DNNL_FOUND AND NOT TARGET DNNL::dnnl)
  add_library(DNNL::dnnl UNKNOWN IMPORTED)
  set_target_properties(DNNL::dnnl PROPERTIES IMPORTED_LOCATION "${DNNL_LIBRARY}"
                                              INTERFACE_INCLUDE_DIRECTORIES "${DNNL_INCLUDE_DIR}")
endif()
mark_as_advanced(DNNL_INCLUDE_DIR DNNL_LIBRARY)
