# The library layers of origami, lowest first (DESIGN.md: dependencies point downward). Read by
# the top-level CMakeLists.txt (which files build into which library) and by
# cmake/CheckLayers.cmake (which includes are allowed).
#
# Layers, lowest first, and what each may include besides itself:
#   tensor    runtime's basics (ORIGAMI_TENSOR_FILES below)     nothing
#   ops       ops/                                              tensor
#   runtime   the rest of runtime/                              tensor, ops, configs
#   parallel  parallel/                                         tensor, ops, runtime, configs
#   models    models/                                           tensor, ops, runtime, parallel, configs
#   launcher  launcher/                                         everything
# configs/ is the generated config schema (a file format of runtime). Includes without a folder
# (a file beside the includer) and system headers are not checked.

# runtime's basics, below ops: Tensor, DType, Device, Stream, Arena, errors and the CUDA backend.
set(ORIGAMI_TENSOR_FILES runtime/arena runtime/device runtime/dtype runtime/error runtime/stream
                         runtime/tensor runtime/cuda_backend runtime/cuda_copy)

set(ORIGAMI_LAYER_USES_tensor tensor)
set(ORIGAMI_LAYER_USES_ops tensor ops)
set(ORIGAMI_LAYER_USES_runtime tensor ops runtime configs)
set(ORIGAMI_LAYER_USES_parallel tensor ops runtime parallel configs)
set(ORIGAMI_LAYER_USES_models tensor ops runtime parallel models configs)
set(ORIGAMI_LAYER_USES_launcher tensor ops runtime parallel models launcher configs)

# The layer of a path relative to the repository ("" when none).
function(origami_layer_of path out)
  string(REGEX REPLACE "\\.[^./]*$" "" stem "${path}")
  if(path MATCHES "^runtime/cuda/" OR stem IN_LIST ORIGAMI_TENSOR_FILES)
    set(${out} tensor PARENT_SCOPE)
  elseif(path MATCHES "^(runtime|ops|parallel|models|launcher|configs)/")
    set(${out} ${CMAKE_MATCH_1} PARENT_SCOPE)
  else()
    set(${out} "" PARENT_SCOPE)
  endif()
endfunction()

