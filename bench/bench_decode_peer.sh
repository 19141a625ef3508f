#!/usr/bin/env bash
# Decode speed of origami against llama.cpp and the read-bandwidth bound: the same model (random
# weights), in the same run, 2 threads, context 128, batch 1, 8 and 16.
#
#   bench/bench_decode_peer.sh [small] [moe] [1b]        (default: all three)
#
# Models (bench/make_bench_model.py, bf16 safetensors, under .bench/models/decode-NAME):
#   small  Llama, hidden 512, 4 layers, 8 heads (4 KV), MLP 1408, vocabulary 8192: 20M parameters
#   moe    Mixtral, hidden 512, 4 layers, 8 experts of 704 (top 2), vocabulary 8192: 46M (17M active)
#   1b     Llama, hidden 2048, 22 layers, 32 heads (4 KV), MLP 5632, vocabulary 32000: 1.1B
# Each is converted to GGUF bf16 (bench/hf_to_gguf.sh) and quantized to q8_0 and q4_0
# (llama-quantize). Pairs: origami bf16 / llama.cpp bf16, origami int8 / q8_0, origami int4 /
# q4_0 (origami's int8 and int4 are round-to-nearest at load with groups of 128, which read the
# same bytes per weight as q8_0 and q4_0: 1.0625 and 0.5625).
#   origami: build/bin/bench_decode --model DIR --weights W (it measures the read bandwidth in the
#            same process and prints the bound and the resident set)
#   llama.cpp: llama-batched-bench -npp 128 -ntg 32 -npl 1,8,16 (S_TG: decode tokens/s)
# Needs scripts/setup_bench.sh (llama.cpp tools, the GGUF venv) and a build with
# ORIGAMI_BUILD_BENCH=ON. Logs: .bench/logs/decode-*. From the environment: THREADS (default 2),
# STEPS (default 32), BATCHES (default 1,8,16), PAIRS (default bf16,int8,int4: origami's side of
# the pairs to run) and ROUNDS (default 1: with more, each pair runs
# origami and llama.cpp in turn ROUNDS times, a line per round, then the medians of the figures
# and of the per-round ratios; the machine's bandwidth drifts between runs, and alternating
# short runs is what keeps a ratio honest there). The two programs never run together.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bin="${ORIGAMI_BUILD_DIR:-$here/build}/bin"
llama="$here/.bench/llama-build/bin"
models="$here/.bench/models"
logs="$here/.bench/logs"
threads="${THREADS:-2}"
steps="${STEPS:-32}"
batches="${BATCHES:-1,8,16}"
rounds="${ROUNDS:-1}"
py="$here/.venv/bin/python"
mkdir -p "$models" "$logs"
for f in "$bin/bench_decode" "$llama/llama-batched-bench" "$llama/llama-quantize" "$py"; do
  [ -x "$f" ] || { echo "bench_decode_peer.sh: $f is missing (scripts/setup_bench.sh, build)" >&2; exit 1; }
done
# Spinning OpenMP workers (as llama.cpp's thread pool spins): on an otherwise idle machine a step
# wakes its threads in about a microsecond instead of tens (passive waiting).
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-active}"

make_model() {  # NAME -> .bench/models/decode-NAME with its GGUF files
  local name="$1" dir="$models/decode-$1"
  if [ ! -f "$dir/model.safetensors" ] && [ ! -f "$dir/model.safetensors.index.json" ]; then
    echo "== making $name"
    case "$name" in
      small) args=(--hidden 512 --layers 4 --heads 8 --kv-heads 4 --intermediate 1408) ;;
      moe) args=(--hidden 512 --layers 4 --heads 8 --kv-heads 4 --intermediate 704 --experts 8) ;;
      1b) args=(--hidden 2048 --layers 22 --heads 32 --kv-heads 4 --intermediate 5632
                --model-vocab 32000) ;;
    esac
    [ "$name" = 1b ] || args+=(--model-vocab 8192)
    "$py" "$here/bench/make_bench_model.py" "$dir" "${args[@]}" --dtype bfloat16 --max-pos 1024
  fi
  [ -f "$dir/bf16.gguf" ] || bash "$here/bench/hf_to_gguf.sh" "$dir" "$dir/bf16.gguf" bf16 \
    >"$logs/decode-$name-convert.log" 2>&1
  for q in q8_0 q4_0; do
    [ -f "$dir/$q.gguf" ] || "$llama/llama-quantize" "$dir/bf16.gguf" "$dir/$q.gguf" "$q" \
      >"$logs/decode-$name-$q.log" 2>&1
  done
}

origami_run() {  # DIR WEIGHTS -> "tok/s at 1 8 16 | bound at 1 | resident ratio"
  local log="$logs/decode-$(basename "$1")-origami-$2.log"
  "$bin/bench_decode" --model "$1" --weights "$2" --dtype bf16 --threads "$threads" \
    --batches "$batches" --contexts 128 --steps "$steps" --repeats 3 >"$log" 2>&1
  awk '$2 == 128 && $1 ~ /^[0-9]+$/ { tps[$1] = $3; if ($1 == 1) { bound = $4; pct = $5 } }
       /read bandwidth/ { bw = $3 }
       /resident \/ that/ { ratio = $NF }
       function v(x) { return x == "" ? "-" : x }
       END { printf "%s %s %s %s %s %s %s", v(tps[1]), v(tps[8]), v(tps[16]), v(bound), v(pct),
             v(bw), v(ratio) }' "$log"
}

llama_run() {  # GGUF -> "tok/s at 1 8 16"
  local log="$logs/decode-$(basename "$(dirname "$1")")-llama-$(basename "$1" .gguf).log"
  "$llama/llama-batched-bench" -m "$1" -t "$threads" -tb "$threads" -npp 128 -ntg "$steps" \
    -npl "$batches" -c 4096 -b 2048 -ub 512 >"$log" 2>&1
  # | PP | TG | B | N_KV | T_PP s | S_PP t/s | T_TG s | S_TG t/s | T s | S t/s |
  awk -F'|' 'NF > 10 && $4 + 0 > 0 { gsub(/ /, "", $4); gsub(/ /, "", $9); tg[$4] = $9 }
       function v(x) { return x == "" ? "-" : x }
       END { printf "%s %s %s", v(tg[1]), v(tg[8]), v(tg[16]) }' "$log"
}

names=("$@")
[ ${#names[@]} -gt 0 ] || names=(small moe 1b)
echo "decode, context 128, $threads threads, $(date -u +%F' '%H:%M) UTC, load $(cut -d' ' -f1-3 /proc/loadavg)"
printf '%-6s %-10s %9s %9s %9s | %9s %9s %9s | %7s %7s %7s | %8s %6s %6s\n' model pair \
  "o b1" "o b8" "o b16" "l b1" "l b8" "l b16" "r b1" "r b8" "r b16" "bound b1" "of bd" rss
median() { tr ' ' '\n' | { grep -v '^$' || true; } | sort -g | awk '{ v[NR] = $1 } END {
  if (NR == 0) { print "-"; exit }
  m = NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2
  printf(m >= 100 ? "%.1f\n" : m >= 10 ? "%.2f\n" : "%.3f\n", m) }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a != "-" && b != "-" && b > 0) printf "%.2f", a / b; else print "-" }'; }
row() { printf '%-6s %-10s %9s %9s %9s | %9s %9s %9s | %7s %7s %7s | %8s %6s %6s\n' "$@"; }
for name in "${names[@]}"; do
  make_model "$name"
  dir="$models/decode-$name"
  for pair in "dense bf16" "int8 q8_0" "int4 q4_0"; do
    set -- $pair
    [[ ",${PAIRS:-bf16,int8,int4}," == *",${1/dense/bf16},"* ]] || continue
    declare -A col=()
    for ((r = 1; r <= rounds; ++r)); do
      read -r o1 o8 o16 bound pct bw rss <<<"$(origami_run "$dir" "$1")"
      read -r l1 l8 l16 <<<"$(llama_run "$dir/$2.gguf")"
      r1="$(ratio "$o1" "$l1")" r8="$(ratio "$o8" "$l8")" r16="$(ratio "$o16" "$l16")"
      tag="$1/$2"
      [ "$rounds" -gt 1 ] && tag="$tag #$r"
      row "$name" "$tag" "$o1" "$o8" "$o16" "$l1" "$l8" "$l16" "$r1" "$r8" "$r16" "$bound" "$pct" "$rss"
      i=0
      for v in "$o1" "$o8" "$o16" "$l1" "$l8" "$l16" "$r1" "$r8" "$r16" "$bound" "${pct%\%}" "$rss"; do
        col[$i]="${col[$i]:-} ${v/-/}"
        i=$((i + 1))
      done
    done
    if [ "$rounds" -gt 1 ]; then
      m=()
      for ((i = 0; i < 12; ++i)); do m+=("$(median <<<"${col[$i]}")"); done
      m[10]="${m[10]}%"
      row "$name" "$1/$2 med" "${m[@]}"
    fi
    unset col
  done
done
echo "o: origami tokens/s, l: llama.cpp, r: origami / llama.cpp; bound: read bandwidth ($bw GB/s" \
  "in origami's process) / bytes per token at batch 1, 'of bd' origami's share of it; rss:" \
  "origami's resident set / (weights held + KV cache and activations)"
