#!/usr/bin/env bash
# The main job (README command 1), after scripts/setup.sh and scripts/build.sh.
# Today: what the machine offers (origami doctor), then the op benchmarks against PyTorch and a
# direct oneDNN call. It grows into the multi-rank training demo as those parts land.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bin="${ORIGAMI_BUILD_DIR:-$here/build}/bin"
"$bin/origami" doctor
"$bin/bench_gemm" --quick
"$bin/bench_attention" --quick
