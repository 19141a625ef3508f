#!/usr/bin/env bash
# Converts a Hugging Face model folder to GGUF for llama-server (bench only).
#
#   bench/hf_to_gguf.sh MODEL_DIR OUT.gguf [f32|f16|bf16|q8_0]   (default f32)
#
# Uses .bench/llama.cpp/convert_hf_to_gguf.py in .bench/venv-gguf (scripts/setup_bench.sh makes
# both) through bench/gguf_convert.py, which lets it run on Debian's torch 1.13 and converts a
# BPE tokenizer whose pre-tokenizer the converter does not know as GGUF_PRE (default llama-bpe,
# the Llama-3 split regex, which bench/make_bench_model.py's tokenizer uses).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [ $# -lt 2 ]; then sed -n '2,9p' "$0"; exit 2; fi
model="$1" out="$2" type="${3:-f32}"
llama_cpp="${LLAMA_CPP_DIR:-$here/.bench/llama.cpp}"
python="${GGUF_PYTHON:-$here/.bench/venv-gguf/bin/python}"
for f in "$llama_cpp/convert_hf_to_gguf.py" "$python"; do
  [ -e "$f" ] || { echo "hf_to_gguf.sh: $f is missing: run scripts/setup_bench.sh" >&2; exit 1; }
done
[ -f "$model/config.json" ] || { echo "hf_to_gguf.sh: $model has no config.json" >&2; exit 1; }
mkdir -p "$(dirname "$out")"
exec "$python" "$here/bench/gguf_convert.py" "$llama_cpp" --pre "${GGUF_PRE:-llama-bpe}" -- \
  "$model" --outfile "$out" --outtype "$type"
