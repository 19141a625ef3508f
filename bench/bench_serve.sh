#!/usr/bin/env bash
# Serving benchmark: origami serve against llama.cpp's llama-server on the same model and load.
#
#   bench/bench_serve.sh [options] [MODEL_DIR]
#
# MODEL_DIR is a Hugging Face model folder (config.json, safetensors, tokenizer.json); default: a
# small random Llama-style model made by bench/make_bench_model.py in .bench/models/bench-llama.
# The model is converted to GGUF (bench/hf_to_gguf.sh, f32 like origami's default dtype), then
# each server in turn (one at a time, so they never share the cores) is started, waited for on
# /health, loaded by bench/serve_load.py at every rate with the same seeded requests, and
# stopped; finally bench/serve_compare.py prints the two side by side with origami's output
# tokens/s over llama-server's, and both p99 TTFTs.
#
# Options (defaults in brackets):
#   --rates R,...         request rates, requests/s; inf = all at once      [0.5,1,2,inf]
#   --num-requests N      per rate                                          [32]
#   --prompt-len L        prompt tokens (uniform +-jitter)                  [128]
#   --output-len O        output tokens (ignore_eos, so exactly this)       [64]
#   --len-jitter J                                                          [0.25]
#   --shared-prefix N     every prompt starts with the same N tokens        [0]
#   --endpoint E          completions (token-id prompts) or chat            [completions]
#   --threads T           CPU threads of each server                        [nproc]
#   --parallel P          sequences each server runs at once                [4]
#   --seed S                                                                [0]
#   --outdir DIR          results and server logs        [runs/bench_serve/DATE-TIME]
#   --only llama|origami  run one server only
#   --gguf FILE           use this GGUF instead of converting MODEL_DIR
# Environment:
#   LLAMA_SERVER   llama-server binary        [.bench/llama-build/bin/llama-server]
#   ORIGAMI        origami binary             [build/bin/origami]
#   ORIGAMI_EXTRA  words appended to the origami serve command line (e.g. "--dtype bf16")
#   LLAMA_EXTRA    words appended to the llama-server command line
#   PORT_LLAMA, PORT_ORIGAMI                  [free ports]
# Needs scripts/setup_bench.sh (llama-server, the GGUF converter) and a built origami.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
rates="0.5,1,2,inf" num_requests=32 prompt_len=128 output_len=64 jitter=0.25 shared_prefix=0
endpoint=completions threads="$(nproc)" parallel=4 seed=0 only="" gguf="" model=""
outdir="$here/runs/bench_serve/$(date +%Y%m%d-%H%M%S)"
usage() { sed -n '2,35p' "$0"; }
while [ $# -gt 0 ]; do
  case "$1" in
    --rates) rates="$2"; shift 2 ;;
    --num-requests) num_requests="$2"; shift 2 ;;
    --prompt-len) prompt_len="$2"; shift 2 ;;
    --output-len) output_len="$2"; shift 2 ;;
    --len-jitter) jitter="$2"; shift 2 ;;
    --shared-prefix) shared_prefix="$2"; shift 2 ;;
    --endpoint) endpoint="$2"; shift 2 ;;
    --threads) threads="$2"; shift 2 ;;
    --parallel) parallel="$2"; shift 2 ;;
    --seed) seed="$2"; shift 2 ;;
    --outdir) outdir="$2"; shift 2 ;;
    --only) only="$2"; shift 2 ;;
    --gguf) gguf="$2"; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    -*) echo "bench_serve.sh: unknown option $1" >&2; exit 2 ;;
    *) model="$1"; shift ;;
  esac
done
case "$only" in ""|llama|origami) ;; *) echo "bench_serve.sh: --only llama|origami" >&2; exit 2 ;; esac

llama_server="${LLAMA_SERVER:-$here/.bench/llama-build/bin/llama-server}"
origami="${ORIGAMI:-$here/build/bin/origami}"
py="$(command -v python3)"
mkdir -p "$outdir"
log() { echo "bench_serve.sh: $*"; }

# --- the model ------------------------------------------------------------------------------
if [ -z "$model" ]; then
  model="$here/.bench/models/bench-llama"
  if [ ! -f "$model/model.safetensors" ]; then
    hfpy="$here/.bench/venv-gguf/bin/python"  # has torch, transformers and tokenizers
    [ -x "$hfpy" ] || hfpy="$here/.venv/bin/python"
    log "making the default model $model"
    "$hfpy" "$here/bench/make_bench_model.py" "$model"
  fi
fi
model="$(cd "$model" && pwd)"
if [ -z "$gguf" ] && [ "$only" != origami ]; then
  gguf="$here/.bench/models/$(basename "$model")-f32.gguf"
  if [ ! -f "$gguf" ] || [ -n "$(find "$model" -newer "$gguf" -name '*.safetensors' | head -1)" ]; then
    log "converting $model to $gguf"
    "$here/bench/hf_to_gguf.sh" "$model" "$gguf" f32 >"$outdir/hf_to_gguf.log" 2>&1 ||
      { tail -20 "$outdir/hf_to_gguf.log" >&2; exit 1; }
  fi
fi

# Context per sequence: the longest prompt and output the load can draw, plus a margin.
per_seq=$(awk -v p="$prompt_len" -v o="$output_len" -v j="$jitter" -v s="$shared_prefix" \
  'BEGIN { n = s + int(p * (1 + j) + 1) + int(o * (1 + j) + 1) + 64; print int((n + 255) / 256) * 256 }')
ctx=$((per_seq * parallel))

free_port() {
  "$py" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
port_llama="${PORT_LLAMA:-$(free_port)}"
port_origami="${PORT_ORIGAMI:-$(free_port)}"
[ "$port_llama" != "$port_origami" ] || port_origami=$((port_llama + 1))

# --- the two command lines (adjust here) ----------------------------------------------------
llama_cmd=("$llama_server" -m "$gguf" --host 127.0.0.1 --port "$port_llama"
  -t "$threads" -tb "$threads" -c "$ctx" -np "$parallel" --cont-batching --metrics
  --no-webui ${LLAMA_EXTRA:-})
# origami serve takes its CPU threads from OMP_NUM_THREADS (as origami launch sets it per rank).
origami_cmd=(env OMP_NUM_THREADS="$threads" "$origami" serve "$model" --host 127.0.0.1 --port "$port_origami"
  --max-num-seqs "$parallel" --max-model-len "$per_seq" ${ORIGAMI_EXTRA:-})

# --- server processes -----------------------------------------------------------------------
server_pid="" load_pid="" tail_pid=""
stop_server() {
  [ -n "$server_pid" ] || return 0
  if kill -0 "$server_pid" 2>/dev/null; then
    kill -TERM "$server_pid" 2>/dev/null || true
    for _ in $(seq 1 100); do kill -0 "$server_pid" 2>/dev/null || break; sleep 0.2; done
    kill -0 "$server_pid" 2>/dev/null && kill -KILL "$server_pid" 2>/dev/null || true
  fi
  wait "$server_pid" 2>/dev/null || true
  server_pid=""
}
cleanup() {
  set +e  # a failing kill or wait must not end the cleanup
  local p
  for p in "$load_pid" "$tail_pid"; do
    if [ -n "$p" ]; then kill -TERM "$p" 2>/dev/null; wait "$p" 2>/dev/null; fi
  done
  stop_server
}
trap cleanup EXIT
trap 'exit 130' INT TERM

healthy() {
  "$py" - "$1" <<'EOF'
import sys, urllib.request
try:
    with urllib.request.urlopen("http://127.0.0.1:%s/health" % sys.argv[1], timeout=2) as r:
        sys.exit(0 if r.status == 200 else 1)
except Exception:
    sys.exit(1)
EOF
}

# start_server NAME PORT CMD...: starts it in the background and waits for /health (300 s).
start_server() {
  local name="$1" port="$2"; shift 2
  local load; read -r load _ </proc/loadavg
  if awk -v l="$load" 'BEGIN { exit !(l > 0.5) }'; then
    log "note: load average $load before $name starts: other work shares the cores," \
        "so its figures may be low"
  fi
  log "starting $name: $*"
  "$@" >"$outdir/$name.log" 2>&1 &
  server_pid=$!
  local deadline=$((SECONDS + ${STARTUP_TIMEOUT:-300}))
  until healthy "$port"; do
    if ! kill -0 "$server_pid" 2>/dev/null; then
      wait "$server_pid" 2>/dev/null && rc=0 || rc=$?
      server_pid=""
      echo "bench_serve.sh: $name exited ($rc) before it was healthy; its log:" >&2
      tail -30 "$outdir/$name.log" >&2
      return 1
    fi
    if [ "$SECONDS" -ge "$deadline" ]; then
      echo "bench_serve.sh: $name not healthy after ${STARTUP_TIMEOUT:-300} s" >&2
      tail -30 "$outdir/$name.log" >&2
      return 1
    fi
    sleep 0.5
  done
  log "$name is ready on port $port"
}

load_args=(--rates "$rates" --num-requests "$num_requests" --prompt-len "$prompt_len"
  --output-len "$output_len" --len-jitter "$jitter" --shared-prefix "$shared_prefix"
  --endpoint "$endpoint" --seed "$seed" --warmup 2)
# Token-id prompts must lie in both servers' vocabulary: take it from the model's config.
vocab=$("$py" -c 'import json, sys; print(json.load(open(sys.argv[1]))["vocab_size"])' \
  "$model/config.json")
load_args+=(--token-range "$((vocab / 4 < 1000 ? vocab / 4 : 1000)):$((vocab < 32000 ? vocab : 32000))")

# The load runs in the background and is waited for, so that a signal stops it at once (bash
# runs traps only between foreground commands).
run_one() {  # NAME PORT
  local name="$1" port="$2" rc=0
  "$py" "$here/bench/serve_load.py" --url "http://127.0.0.1:$port" --label "$name" \
    "${load_args[@]}" --json "$outdir/$name.json" >"$outdir/$name.txt" 2>&1 &
  load_pid=$!
  tail -n +1 -f --pid="$load_pid" "$outdir/$name.txt" &
  tail_pid=$!
  wait "$load_pid" || rc=$?
  load_pid=""
  wait "$tail_pid" 2>/dev/null || true
  tail_pid=""
  stop_server
  return "$rc"
}

log "model $model, $threads threads, $parallel sequences at once, $per_seq tokens each;" \
    "results in $outdir"
status=0
if [ "$only" != origami ]; then
  [ -x "$llama_server" ] || { echo "bench_serve.sh: no $llama_server: run scripts/setup_bench.sh" >&2; exit 1; }
  start_server llama-server "$port_llama" "${llama_cmd[@]}"
  run_one llama-server "$port_llama" || status=1
fi
if [ "$only" != llama ]; then
  [ -x "$origami" ] || { echo "bench_serve.sh: no $origami: build origami first (scripts/build.sh)" >&2; exit 1; }
  start_server origami "$port_origami" "${origami_cmd[@]}"
  run_one origami "$port_origami" || status=1
fi
if [ -z "$only" ]; then
  "$py" "$here/bench/serve_compare.py" "$outdir/llama-server.json" "$outdir/origami.json" \
    --json "$outdir/compare.json" | tee "$outdir/compare.txt"
fi
exit "$status"
