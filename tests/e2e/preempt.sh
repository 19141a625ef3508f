#!/usr/bin/env bash
# Preemption: a signal to a running two-rank job makes both ranks stop after the same step, save
# a checkpoint and exit 0; resuming then finishes the run exactly as an uninterrupted run does --
# every step's loss, CE, learning rate and gradient norm bit for bit, and the final checkpoint's
# files byte for byte.
#   preempt.sh MODE ORIGAMI MPIEXEC CONFIG
# MODE: launch-term       SIGTERM to origami launch
#       launch-rank-term  SIGTERM to one rank started by origami launch
#       mpirun-usr1       SIGUSR1 to mpirun (Open MPI passes it on to the ranks)
#       mpirun-rank-term  SIGTERM to one rank started by mpirun (what Slurm sends to tasks)
set -u
mode=$1 origami=$2 mpiexec=$3 config=$4
source "$(dirname "$0")/lib.sh"
steps=30

# train_cmd NAME: the command of a run writing into $work/NAME.
train_cmd() {
  train=(train "$config" --set train.steps=$steps "${tiny[@]}"
         --set "train.checkpoint_dir=\"$work/$1/ckpt\"" --set train.save_every=0 --set train.keep=5
         --set "train.metrics_file=\"$work/$1/metrics.jsonl\"")
  mkdir -p "$work/$1"
}

# The uninterrupted reference.
train_cmd ref
timeout -k 5 300 "${mpirun_cmd[@]}" -np 2 "$origami" "${train[@]}" >"$work/ref.txt" 2>&1 ||
  { tail -20 "$work/ref.txt"; fail "the reference run failed"; }

# The interrupted run, signalled once its third step is logged.
train_cmd run
case $mode in
  launch-*) cmd=("$origami" launch -n 2 --mpirun "$mpiexec" -- "${train[@]}") ;;
  mpirun-*) cmd=("${mpirun_cmd[@]}" -np 2 "$origami" "${train[@]}") ;;
  *) fail "unknown mode $mode" ;;
esac
timeout -k 5 300 "${cmd[@]}" >"$work/run.txt" 2>&1 &
job=$!
for _ in $(seq 600); do
  [ -f "$work/run/metrics.jsonl" ] && [ "$(wc -l <"$work/run/metrics.jsonl")" -ge 3 ] && break
  sleep 0.05
done
# The process the signal goes to: the launcher (timeout's child), or one rank.
launcher=$(ps -o pid= --ppid "$job" | head -1 | tr -d ' ')
rank_pid() {  # the last `origami train` process of this run
  ps -eo pid=,args= | grep -F -- "$work/run/" | grep -F "$origami train" | grep -v grep |
    tail -1 | awk '{print $1}'
}
case $mode in
  launch-term) target=$launcher sig=TERM ;;
  mpirun-usr1) target=$launcher sig=USR1 ;;
  *-rank-term) target=$(rank_pid) sig=TERM ;;
esac
[ -n "$target" ] || fail "no process to signal"
sent=$(date +%s.%N)
kill -s "$sig" "$target"
wait "$job"
rc=$?
took=$(python3 -c "print('%.2f' % ($(date +%s.%N) - $sent))")
grep -E "stopped after|origami launch|SIG" "$work/run.txt"
echo "== $mode: SIG$sig to pid $target; exit $rc ${took} s after the signal"
[ "$rc" -eq 0 ] || { tail -30 "$work/run.txt"; fail "the interrupted run exited $rc"; }
stopped=$(grep -o -E "stopped after step [0-9]+ on SIG[A-Z0-9]+" "$work/run.txt" | head -1)
[ -n "$stopped" ] || fail "no 'stopped after step' message"
step=$(awk '{print $4}' <<<"$stopped")
[ "$step" -lt "$steps" ] || fail "the run finished before the signal took effect"
latest=$(cat "$work/run/ckpt/latest")
[ "$latest" = "$(printf 'step_%08d' "$step")" ] || fail "latest checkpoint is $latest, not step $step"
[ "$(wc -l <"$work/run/metrics.jsonl")" -eq "$step" ] || fail "metrics lines != $step"
leftovers || fail "processes left behind"

# Resume (same command, under mpirun) to the end.
train_cmd run
timeout -k 5 300 "${mpirun_cmd[@]}" -np 2 "$origami" "${train[@]}" >"$work/resume.txt" 2>&1 ||
  { tail -20 "$work/resume.txt"; fail "the resumed run failed"; }
grep -q "resumed from .*$latest" "$work/resume.txt" || fail "the second run did not resume"

python3 - "$work/ref/metrics.jsonl" "$work/run/metrics.jsonl" <<'PY' || fail "metrics differ"
import json, sys
keys = ("step", "loss", "ce", "lr", "grad_norm")
ref = [json.loads(l) for l in open(sys.argv[1])]
run = [json.loads(l) for l in open(sys.argv[2])]
assert len(ref) == len(run), (len(ref), len(run))
for a, b in zip(ref, run):
    for k in keys:
        # Python floats are the JSON doubles: == is bit-for-bit equality.
        assert a[k] == b[k], ("step", a["step"], k, a[k], b[k])
print(f"metrics: {len(ref)} steps identical (loss {ref[0]['loss']:.4f} -> {ref[-1]['loss']:.4f})")
PY
final=$(printf 'step_%08d' "$steps")
diff -r "$work/ref/ckpt/$final" "$work/run/ckpt/$final" >/dev/null ||
  fail "the final checkpoints differ"
echo "checkpoint $final: every file identical"
echo "ok: $mode stopped after step $step of $steps, resumed bit for bit"
