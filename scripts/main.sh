#!/usr/bin/env bash
# The main job (README command 1), after scripts/setup.sh and scripts/build.sh:
#   1. origami doctor: what this machine offers (devices, libraries, a GEMM check);
#   2. trains the demo MoE (configs/demo/tiny_moe.pbtxt: Mixtral-style, 4 experts top-2, byte
#      tokenizer) from scratch on the fortunes corpus on 4 ranks under mpirun, with MoE parallel
#      folding: attention layers TP2 x DP2 (sequence parallel), expert layers EP4 -- the same 4
#      ranks laid out twice -- printing both layouts and the falling loss;
#   3. serves the checkpoint it saved with `origami serve` on the same 4 ranks with the model
#      split the same way (attention TP2, experts EP4), sends a few chat requests (one streamed)
#      with the official `openai` client (scripts/chat_demo.py), prints them, and stops the
#      server with SIGTERM (it drains and exits 0).
# Extra arguments go to `origami train` (e.g. --set train.steps=50). ORIGAMI_RANKS=1 trains on
# one process instead.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bin="${ORIGAMI_BUILD_DIR:-$here/build}/bin"
cd "$here"
config=configs/demo/tiny_moe.pbtxt
run_dir="${ORIGAMI_RUN_DIR:-runs/demo}"
ranks="${ORIGAMI_RANKS:-4}"

"$bin/origami" doctor --gemm-size 512
echo
train=("$bin/origami" train "$config" --no-resume --set "train.checkpoint_dir=\"$run_dir\"")
if [ "$ranks" -gt 1 ]; then
  # Open MPI as root in a container: allow root, no fabric probing.
  export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
  export OMPI_MCA_btl=self,vader,tcp OMPI_MCA_pml=ob1 OMP_NUM_THREADS=1
  # 4 sequences per data-parallel rank: the global batch of 8 sequences of the config.
  mpirun --oversubscribe --allow-run-as-root --bind-to none -np "$ranks" "${train[@]}" \
    --tp 2 --sequence-parallel --ep 4 --etp 1 \
    --set train.micro_batch_size=4 "$@"
else
  "${train[@]}" "$@"
fi
echo
# Serving on the same ranks and layout (attention TP2 folded with experts EP4); with
# ORIGAMI_RANKS=1 on one process.
serve=("$bin/origami" serve --config "$config" --checkpoint "$run_dir" --port 0
  --chat-template configs/demo/chat_template.jinja --served-model-name tiny_moe)
log="$(mktemp -d)/serve.log"
if [ "$ranks" -gt 1 ]; then
  mpirun --oversubscribe --allow-run-as-root --bind-to none -np "$ranks" "${serve[@]}" \
    --tp 2 --ep 4 --etp 1 >"$log" 2>&1 &
else
  "${serve[@]}" >"$log" 2>&1 &
fi
server=$!
trap 'kill -TERM $server 2>/dev/null || true' EXIT
url=""
for _ in $(seq 1 600); do
  url="$(grep -o 'ready on http://[0-9.]*:[0-9]*' "$log" | head -1 | sed 's/ready on //')" || true
  [ -n "$url" ] && break
  kill -0 $server 2>/dev/null || { cat "$log"; echo "main.sh: origami serve ended" >&2; exit 1; }
  sleep 0.5
done
[ -n "$url" ] || { cat "$log"; echo "main.sh: origami serve did not start" >&2; exit 1; }
grep -v '^\[' "$log" | sed 's/^/[serve] /'
"$here/.venv/bin/python" scripts/chat_demo.py "$url" tiny_moe
# SIGUSR1: mpirun forwards it to the ranks (SIGTERM would make mpirun end the job itself).
kill -USR1 $server
wait $server && status=0 || status=$?
trap - EXIT
tail -n 3 "$log" | sed 's/^/[serve] /'
echo "main.sh: origami serve stopped (exit $status)"
exit "$status"
