#!/usr/bin/env bash
# Runs the whole test suite: the main build (CUDA compiled when nvcc exists; GPU tests skip without
# a device), then the unit tests again under AddressSanitizer + UndefinedBehaviorSanitizer.
#   scripts/test.sh            everything
#   scripts/test.sh -L golden  only some labels (arguments go to ctest for the main build)
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
build="${ORIGAMI_BUILD_DIR:-$here/build}"
jobs="$(nproc)"
# Tests run side by side on few cores: OpenMP threads that spin while waiting would starve the
# other test processes.
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-PASSIVE}"

"$here/scripts/build.sh"
ctest --test-dir "$build" --output-on-failure --timeout 1800 -j "$jobs" "$@"

if [ "$#" -eq 0 ]; then
  # Sanitizer build: CPU only (CUDA's runtime and ASan do not mix), unit-labelled tests.
  asan="$build-asan"
  ORIGAMI_BUILD_DIR="$asan" "$here/scripts/build.sh" -DORIGAMI_SANITIZE=ON -DORIGAMI_CUDA=OFF \
    -DORIGAMI_BUILD_BENCH=OFF -DCMAKE_BUILD_TYPE=RelWithDebInfo
  ctest --test-dir "$asan" --output-on-failure --timeout 1800 -j "$jobs" -L unit
fi
