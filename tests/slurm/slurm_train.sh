#!/usr/bin/env bash
# A real Slurm run: starts a one-node cluster on this host (scripts/slurm/local_cluster.sh), then
# trains the same tiny TP2 x DP2 config three ways --
#   mpirun -np 4 origami train ...                       (the reference, no Slurm)
#   srun --mpi=pmix -n 4 origami train ...               (direct launch)
#   sbatch -n 4 scripts/slurm/train.sbatch ...           (the shipped batch example)
# -- and checks that every run finishes and logs the same loss at every step; then serves the
# mpirun run's checkpoint with srun -n 2 (TP2) and checks a greedy completion against
# origami generate. The cluster is shut down on every exit path, failures included.
#   slurm_train.sh MPIEXEC ORIGAMI SOURCE_DIR
# Exit 77 (skipped) only when it cannot run here: not root.
set -euo pipefail
mpiexec=$1 origami=$2 src=$3
config=$src/configs/demo/tiny_dense.pbtxt
cluster=$src/scripts/slurm/local_cluster.sh
steps=6

if [ "$(id -u)" -ne 0 ]; then
  echo "SKIP: the local Slurm cluster needs root"
  exit 77
fi
mpi_plugin=${ORIGAMI_SRUN_MPI:-pmix}

work=$(mktemp -d /tmp/origami-slurm.XXXXXX)
chmod 755 "$work"  # munged wants every folder above its socket searchable by all
status=1
child=""
# Runs a command in the background and waits for it, so that a signal to this script runs the
# cleanup at once (bash defers traps while a foreground command runs).
run() {
  local rc=0
  "$@" &
  child=$!
  wait "$child" || rc=$?
  child=""
  return "$rc"
}
exec 3>&1 4>&2  # the script's own output, for a cleanup that runs inside a redirected command
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  exec 1>&3 2>&4
  [ -z "$child" ] || kill -TERM "$child" 2>/dev/null || true
  if [ "$status" -ne 0 ]; then
    for f in "$work"/*.out "$work"/cluster/log/*.log; do
      [ -f "$f" ] || continue
      echo "---- last lines of ${f#"$work"/}"
      tail -n 30 "$f"
    done
  fi
  bash "$cluster" stop "$work/cluster" || true
  rm -rf "$work"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

start=$(date +%s.%N)
elapsed() { python3 -c "import sys,time; print(f'{time.time() - float(sys.argv[1]):.1f} s')" "$start"; }

# The same tiny run for every launcher; each writes its own metrics and checkpoints.
train_flags() {  # name
  echo --tp 2 --dp 2 --no-resume --no-progress \
    --set train.steps=$steps --set train.log_every=1 \
    --set train.micro_batch_size=2 --set train.seq_len=64 --set train.save_every=1000 \
    --set "train.checkpoint_dir=\"$work/$1-ckpt\"" \
    --set "train.metrics_file=\"$work/$1.jsonl\""
}
export OMP_NUM_THREADS=1

echo "== mpirun -np 4 (reference)"
# shellcheck disable=SC2046
run timeout 120 "$mpiexec" --oversubscribe --allow-run-as-root --bind-to none -np 4 \
  "$origami" train "$config" $(train_flags mpirun) >"$work/mpirun.out" 2>&1
echo "   done at $(elapsed)"

echo "== starting the one-node cluster"
bash "$cluster" start "$work/cluster"
export SLURM_CONF=$work/cluster/slurm.conf
if ! srun --mpi=list 2>&1 | grep -qw "$mpi_plugin"; then
  echo "srun has no --mpi=$mpi_plugin plugin:"
  srun --mpi=list 2>&1 || true
  exit 1
fi
echo "   up at $(elapsed)"
# Four ranks share fewer cores here. mpirun sees that and makes idle ranks yield the CPU; under
# srun Open MPI cannot tell, and ranks spinning in MPI waits slow the others down several times.
export OMPI_MCA_mpi_yield_when_idle=1

echo "== srun --mpi=$mpi_plugin -n 4"
# shellcheck disable=SC2046
run timeout 120 srun --mpi="$mpi_plugin" -n 4 --time=5 --kill-on-bad-exit=1 \
  "$origami" train "$config" $(train_flags srun) >"$work/srun.out" 2>&1
grep -q "^layout: world 4," "$work/srun.out" || {
  echo "srun did not start one job of 4 ranks"
  exit 1
}
echo "   done at $(elapsed)"

echo "== sbatch -n 4 scripts/slurm/train.sbatch"
# --wait: sbatch returns when the job ends, with the job's exit code.
# shellcheck disable=SC2046
run env ORIGAMI_BIN="$origami" ORIGAMI_SRUN_MPI="$mpi_plugin" \
  timeout 120 sbatch --wait --nodes=1 --ntasks=4 --ntasks-per-node=4 --time=5 \
  --chdir="$src" --output="$work/sbatch.out" \
  "$src/scripts/slurm/train.sbatch" "$config" $(train_flags sbatch) >"$work/submit.out"
echo "   $(cat "$work/submit.out"), done at $(elapsed)"
if ! grep -q "^origami-train: job .*, 4 ranks on " "$work/sbatch.out" ||
  ! grep -q "^layout: world 4," "$work/sbatch.out"; then
  echo "the batch job did not run 4 ranks"
  exit 1
fi

echo "== srun -n 4 with rank 3 aborting in step 3 (--fault, test only)"
# As Slurm runs it: --kill-on-bad-exit ends the other tasks when one dies; the job must end
# quickly, non-zero, with rank 3 named.
fault_start=$(python3 -c 'import time; print(time.time())')
# shellcheck disable=SC2046
set +e
timeout 120 srun --mpi="$mpi_plugin" -n 4 --time=5 --kill-on-bad-exit=1 \
  "$origami" train "$config" $(train_flags crash) --fault 3:3:abort >"$work/crash.out" 2>&1
crash_rc=$?
set -e
crash_s=$(python3 -c "import sys,time; print(f'{time.time() - float(sys.argv[1]):.1f}')" "$fault_start")
if [ "$crash_rc" -eq 0 ] || [ "$crash_rc" -eq 124 ] ||
  ! grep -q "origami train: rank 3: --fault: aborting in step 3" "$work/crash.out"; then
  echo "srun with a crashing rank: exit $crash_rc after ${crash_s} s; output:"
  tail -20 "$work/crash.out"
  exit 1
fi
echo "   exit $crash_rc after ${crash_s} s: $(grep -m1 'rank 3: --fault' "$work/crash.out")"
echo "   srun: $(grep -m1 -E 'error|task 3|Aborted' "$work/crash.out" | grep -v 'rank 3: --fault' || true)"

echo "== srun --mpi=$mpi_plugin -n 2 origami serve --tp 2 (the mpirun run's checkpoint)"
# Rank 0 serves; a greedy completion must equal origami generate on one process, and SIGTERM
# (srun passes SIGUSR1 to every task) must drain the server and end the job with 0.
serve_log=$work/serve.out
srun --mpi="$mpi_plugin" -n 2 --time=5 --kill-on-bad-exit=1 \
  "$origami" serve --config "$config" --checkpoint "$work/mpirun-ckpt" --tp 2 --port 0 \
  >"$serve_log" 2>&1 &
child=$!
url=""
for _ in $(seq 1 240); do
  url=$(grep -o 'ready on http://[0-9.]*:[0-9]*' "$serve_log" | sed 's/ready on //' || true)
  [ -n "$url" ] && break
  kill -0 "$child" 2>/dev/null || break
  sleep 0.5
done
[ -n "$url" ] || { echo "origami serve under srun did not start"; exit 1; }
"$origami" generate --config "$config" --checkpoint "$work/mpirun-ckpt" --prompt The \
  --temperature 0 --max-new-tokens 12 --no-stream --no-stats >"$work/generate.out"
# The served text against generate's bytes (broken UTF-8 arrives as U+FFFD in JSON).
served=$(python3 -c '
import json, sys, urllib.request
req = urllib.request.Request(sys.argv[1] + "/v1/completions", method="POST",
    data=json.dumps({"prompt": "The", "max_tokens": 12, "temperature": 0}).encode(),
    headers={"Content-Type": "application/json"})
got = "The" + json.load(urllib.request.urlopen(req, timeout=60))["choices"][0]["text"]
want = open(sys.argv[2], "rb").read().decode(errors="replace")
print("same" if got + "\n" == want else "differ: %r vs %r" % (got, want))' "$url" "$work/generate.out")
kill -USR1 "$child"  # srun passes it to every task; the server drains
serve_rc=0
wait "$child" || serve_rc=$?
child=""
if [ "$served" != same ] || [ "$serve_rc" -ne 0 ]; then
  echo "serve under srun: exit $serve_rc, $served"
  exit 1
fi
echo "   the served completion equals origami generate's; exit $serve_rc after SIGUSR1"

python3 - "$steps" "$work" <<'PY'
import json, sys
steps, work = int(sys.argv[1]), sys.argv[2]
runs = {}
for name in ("mpirun", "srun", "sbatch"):
    rows = [json.loads(line) for line in open(f"{work}/{name}.jsonl")]
    assert [r["step"] for r in rows] == list(range(1, steps + 1)), (name, [r["step"] for r in rows])
    runs[name] = rows
    print(f"{name:>7} losses: " + " ".join(f"{r['loss']:.6f}" for r in rows))
ref = runs["mpirun"]
assert ref[-1]["loss"] < ref[0]["loss"], "the reference loss did not fall"
for name in ("srun", "sbatch"):
    for key in ("loss", "grad_norm"):
        worst = max(abs(a[key] - b[key]) for a, b in zip(runs[name], ref))
        scale = max(abs(r[key]) for r in ref)
        print(f"{name}: largest {key} difference from mpirun {worst:.3g}")
        # Same ranks, same layout, same reduction order: equal up to float32 rounding at most.
        assert worst <= 1e-5 * scale, f"{name}: {key} differs from mpirun"
PY
status=0
echo "ok: srun and sbatch match mpirun over $steps steps ($(elapsed))"
