#!/usr/bin/env bash
# origami launch on one machine: two ranks train with prefixed output and exit 0; --log-dir writes
# one log per rank instead; a command that fails on start is reported with the rank, its status
# and its error line; nothing is left running.
#   launch_basic.sh ORIGAMI MPIEXEC CONFIG
set -u
origami=$1 mpiexec=$2 config=$3
source "$(dirname "$0")/lib.sh"
launch=("$origami" launch --mpirun "$mpiexec")
train=(train "$config" --no-resume --set train.steps=3 "${tiny[@]}"
       --set "train.checkpoint_dir=\"$work/ckpt\"")

out=$(timeout -k 5 120 "${launch[@]}" -n 2 -- "${train[@]}" 2>&1)
rc=$?
echo "$out" | grep -E "origami launch|step"
[ "$rc" -eq 0 ] || fail "2-rank training exited $rc"
grep -q -E "^\[r0\] step +3 \| loss" <<<"$out" || fail "no '[r0] step 3' line"
grep -q -E "^origami launch: all 2 ranks exited 0" <<<"$out" || fail "no success line"
grep -q -E "^\[r0\] parallel: tp=1 .*dp=2" <<<"$out" || fail "the ranks did not form one world"
leftovers || fail "processes left behind"
echo "ok: 2 ranks, prefixed output"

# One log per rank (-n4 form of the rank count, options before the command without --).
out=$(timeout -k 5 120 "${launch[@]}" -n2 --log-dir "$work/logs" "${train[@]}" 2>&1)
rc=$?
[ "$rc" -eq 0 ] || fail "--log-dir run exited $rc: $out"
grep -q "^\[r" <<<"$out" && fail "rank lines on the console with --log-dir"
grep -q -E "^step +3 \| loss" "$work/logs/rank_0.log" || fail "rank_0.log has no step 3"
[ -f "$work/logs/rank_1.log" ] || fail "no rank_1.log"
echo "ok: --log-dir wrote $(ls "$work/logs" | tr '\n' ' ')"

# A command that fails on start.
out=$(timeout -k 5 120 "${launch[@]}" -n 2 --grace-s 1 -- no-such-command "$work" 2>&1)
rc=$?
echo "$out" | grep "origami launch"
[ "$rc" -eq 2 ] || fail "a failing command gave exit $rc, not its status 2"
grep -q -E "^origami launch: FAILED: rank [01] exited with status 2" <<<"$out" || fail "no summary"
grep -q -E "^  \| origami: unknown command 'no-such-command'" <<<"$out" || fail "no error tail"
leftovers || fail "processes left behind"
echo "ok: failing command reported"

# The launcher killed outright (SIGKILL, no chance to clean up): mpirun, wrappers and ranks must
# still go (mpirun gets SIGTERM when its parent dies; ranks die with their wrappers).
# (TMPDIR: the control folder it cannot remove goes with the test's folder.)
TMPDIR=$work timeout -k 5 120 "${launch[@]}" -n 2 -- train "$config" --no-resume \
  --set train.steps=100000 \
  "${tiny[@]}" --set "train.checkpoint_dir=\"$work/killed\"" >"$work/killed.txt" 2>&1 &
job=$!
for _ in $(seq 600); do
  grep -q "^\[r0\] step" "$work/killed.txt" && break
  sleep 0.05
done
launcher=$(ps -o pid= --ppid "$job" | head -1 | tr -d ' ')
[ -n "$launcher" ] || fail "no launcher process"
kill -KILL "$launcher"
wait "$job"
leftovers || fail "processes left behind after SIGKILL of the launcher"
echo "ok: nothing left after SIGKILL of the launcher"

# Bad launcher options are errors before anything starts.
out=$("$origami" launch -n 0 -- doctor 2>&1) && fail "-n 0 accepted"
grep -q -- "-n must be at least 1" <<<"$out" || fail "-n 0: $out"
out=$("$origami" launch -n 2 2>&1) && fail "no command accepted"
grep -q "needs the command to run" <<<"$out" || fail "no command: $out"
echo "ok: bad options refused"
