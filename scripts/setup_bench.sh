#!/usr/bin/env bash
# Bench-only setup (the build and the tests never call it). Idempotent.
#
#   scripts/setup_bench.sh [-j JOBS]
#
# Installs into the repository's .bench/ (git-ignored):
#   - Debian packages: fio (storage benchmarks), python3-torch/python3-numpy/python3-venv (GGUF
#     conversion);
#   - .bench/llama.cpp: llama.cpp as vendored by the PyPI source distribution of
#     llama-cpp-python (pinned below; PyPI is the only source reachable here), and
#     .bench/llama-build/bin/{llama-server,llama-bench,llama-batched-bench,llama-quantize} built from it (CPU,
#     -march=native, no libcurl);
#   - .bench/venv-gguf: a venv for llama.cpp's convert_hf_to_gguf.py (bench/hf_to_gguf.sh).
#     It is made with --system-site-packages so that it sees Debian's torch 1.13 (python3-torch):
#     PyPI's Linux torch wheels are CUDA builds of several GB. bench/gguf_convert.py gives torch
#     1.13 the few names the converter expects (float8 dtypes) and stands in for mistral_common.
#
# The build runs under `nice -n 19` with 2 jobs by default (-j to change): about 15-30 minutes
# on 2 cores. Environment: LLAMA_CPP_PYTHON_VERSION to try another pin.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bench="$here/.bench"
version="${LLAMA_CPP_PYTHON_VERSION:-0.3.16}"
jobs=2
while [ $# -gt 0 ]; do
  case "$1" in
    -j) jobs="$2"; shift 2 ;;
    -j*) jobs="${1#-j}"; shift ;;
    -h|--help) sed -n '2,19p' "$0"; exit 0 ;;
    *) echo "setup_bench.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then SUDO="sudo"; else
    echo "setup_bench.sh: not root and no sudo; run it as root to install packages" >&2; exit 1
  fi
fi

packages=(fio build-essential cmake python3 python3-venv python3-torch python3-numpy python3-yaml)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "setup_bench.sh: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -q
  $SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

mkdir -p "$bench/src" "$bench/logs"

# llama.cpp from the llama-cpp-python source distribution.
src="$bench/src/llama_cpp_python-$version"
if [ ! -f "$src/vendor/llama.cpp/CMakeLists.txt" ]; then
  sdist="$bench/src/llama_cpp_python-$version.tar.gz"
  if [ ! -f "$sdist" ]; then
    echo "setup_bench.sh: downloading llama-cpp-python $version (source distribution)"
    # pip download of an sdist prepares its metadata (fetches the build backend); that is all.
    python3 -m pip download --disable-pip-version-check -q --no-binary :all: --no-deps \
      -d "$bench/src" "llama-cpp-python==$version"
  fi
  tar -xzf "$sdist" -C "$bench/src"
fi
ln -sfn "$src/vendor/llama.cpp" "$bench/llama.cpp"

server="$bench/llama-build/bin/llama-server"
stamp="$bench/llama-build/.version"
tools=(llama-server llama-bench llama-batched-bench llama-quantize)
built=1
for t in "${tools[@]}"; do [ -x "$bench/llama-build/bin/$t" ] || built=0; done
if [ "$built" = 0 ] || [ "$(cat "$stamp" 2>/dev/null)" != "$version" ]; then
  echo "setup_bench.sh: building ${tools[*]} (llama-cpp-python $version) with -j$jobs;" \
       "log: $bench/logs/llama-build.log"
  nice -n 19 cmake -S "$bench/llama.cpp" -B "$bench/llama-build" -DCMAKE_BUILD_TYPE=Release \
    -DLLAMA_BUILD_SERVER=ON -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
    -DLLAMA_CURL=OFF -DGGML_NATIVE=ON -DBUILD_SHARED_LIBS=OFF >"$bench/logs/llama-build.log" 2>&1
  if ! nice -n 19 cmake --build "$bench/llama-build" --target "${tools[@]}" -j"$jobs" \
      >>"$bench/logs/llama-build.log" 2>&1; then
    tail -30 "$bench/logs/llama-build.log" >&2
    echo "setup_bench.sh: the llama.cpp build failed (log above)" >&2
    exit 1
  fi
  echo "$version" >"$stamp"
fi
echo "setup_bench.sh: llama.cpp tools: $bench/llama-build/bin/{${tools[*]// /,}}"

# The GGUF converter's environment.
venv="$bench/venv-gguf"
pins=(transformers==4.40.2 tokenizers==0.19.1 safetensors==0.4.2 sentencepiece==0.2.0
      tqdm==4.67.1 protobuf==4.25.9)
if [ ! -x "$venv/bin/python" ]; then
  /usr/bin/python3 -m venv --system-site-packages "$venv"
fi
check='import importlib.metadata as m, sys
for pin in sys.argv[1:]:
    name, version = pin.split("==")
    assert m.version(name) == version, pin
import torch, numpy, yaml, transformers'
if ! "$venv/bin/python" -c "$check" "${pins[@]}" >/dev/null 2>&1; then
  "$venv/bin/python" -m pip install -q --disable-pip-version-check "${pins[@]}"
fi
"$venv/bin/python" -c "import torch, transformers; print('setup_bench.sh: venv-gguf: torch',
torch.__version__, 'transformers', transformers.__version__)"
command -v fio >/dev/null && echo "setup_bench.sh: $(fio --version)"
