# Fails when a source file includes a header of a layer above its own (DESIGN.md: dependencies
# point downward). Run by the build (target origami_check_layers, before any library compiles):
#   cmake -DSOURCE_DIR=<repo> -DSTAMP=<file written on success> -P cmake/CheckLayers.cmake
#
# The layers and what each may include: cmake/OrigamiLayers.cmake.

cmake_minimum_required(VERSION 3.25)  # script mode: the policies of the project
include(${CMAKE_CURRENT_LIST_DIR}/OrigamiLayers.cmake)

if(NOT SOURCE_DIR)
  message(FATAL_ERROR "CheckLayers.cmake: pass -DSOURCE_DIR=<repository>")
endif()
if(STAMP)
  file(REMOVE "${STAMP}")
endif()

file(GLOB_RECURSE files RELATIVE "${SOURCE_DIR}"
     "${SOURCE_DIR}/runtime/*" "${SOURCE_DIR}/ops/*" "${SOURCE_DIR}/parallel/*"
     "${SOURCE_DIR}/models/*" "${SOURCE_DIR}/launcher/*")
list(FILTER files INCLUDE REGEX "\\.(h|hpp|cpp|cu|cuh)$")
list(SORT files)

set(violations "")
foreach(file ${files})
  origami_layer_of("${file}" from)
  file(STRINGS "${SOURCE_DIR}/${file}" lines REGEX "^[ \t]*#[ \t]*include[ \t]*\"")
  foreach(line ${lines})
    if(NOT line MATCHES "#[ \t]*include[ \t]*\"([^\"]+)\"")
      continue()
    endif()
    set(header "${CMAKE_MATCH_1}")
    origami_layer_of("${header}" to)
    if(to STREQUAL "" OR to IN_LIST ORIGAMI_LAYER_USES_${from})
      continue()
    endif()
    string(REPLACE ";" ", " allowed "${ORIGAMI_LAYER_USES_${from}}")
    string(APPEND violations
           "  ${file} includes \"${header}\": ${from} is below ${to} (${from} may include ${allowed})\n")
  endforeach()
endforeach()

if(violations)
  message(FATAL_ERROR
          "origami layering: includes that point upward (DESIGN.md: dependencies point downward; "
          "the layers are listed in cmake/OrigamiLayers.cmake):\n${violations}"
          "Move the code to the lower layer, or hand the lower layer an interface it declares.")
endif()
if(STAMP)
  file(TOUCH "${STAMP}")
endif()
