#!/usr/bin/env bash
# Configures and builds origami into build/ (or $ORIGAMI_BUILD_DIR).
#   scripts/build.sh [extra cmake -D options...]
# ORIGAMI_CUDA defaults to AUTO: CUDA code is compiled whenever nvcc is found, GPU or not.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
build="${ORIGAMI_BUILD_DIR:-$here/build}"
gen=()
command -v ninja >/dev/null 2>&1 && [ ! -f "$build/Makefile" ] && gen=(-G Ninja)
cmake -S "$here" -B "$build" "${gen[@]}" -DCMAKE_BUILD_TYPE="${CMAKE_BUILD_TYPE:-Release}" "$@"
cmake --build "$build" --parallel "$(nproc)"
