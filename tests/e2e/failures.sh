#!/usr/bin/env bash
# A rank that fails must end the whole job promptly, non-zero, with a message naming it -- and
# leave no process behind. Four ranks of the tiny dense model (DP4), under origami launch or
# under mpirun directly:
#   crash  rank 3 aborts (SIGABRT) in the middle of step 3
#   hang   rank 2 sleeps before the collectives of step 3; --collective-timeout 5 must end it
#   error  rank 1 throws in step 3 (origami train calls MPI_Abort after naming itself)
# Prints how long the job took to end after the fault.
#   failures.sh crash|hang|error launch|mpirun ORIGAMI MPIEXEC CONFIG
set -u
kind=$1 how=$2 origami=$3 mpiexec=$4 config=$5
source "$(dirname "$0")/lib.sh"

timeout_s=5
case $kind in
  crash) fault=3:3:abort want_rank=3 limit=20 ;;
  hang) fault=2:3:sleep want_rank=2 limit=$((timeout_s + 20)) ;;
  error) fault=1:3:throw want_rank=1 limit=20 ;;
  *) fail "unknown kind $kind" ;;
esac
train=(train "$config" --no-resume --set train.steps=50 "${tiny[@]}"
       --set "train.checkpoint_dir=\"$work/ckpt\"" --set train.save_every=0
       --collective-timeout "$timeout_s" --fault "$fault")
if [ "$how" = launch ]; then
  cmd=("$origami" launch -n 4 --grace-s 2 --mpirun "$mpiexec" -- "${train[@]}")
else
  cmd=("${mpirun_cmd[@]}" -np 4 "$origami" "${train[@]}")
fi

run_stamped "${cmd[@]}"
after_fault=$(seconds_since_line "$work/out.txt" "rank $want_rank: --fault:|--fault: rank $want_rank" "$end")
# The output without rank 0's start-up tables.
sed 's/^[0-9.]* //' "$work/out.txt" |
  grep -v -E '^(\[r0\] )?(  [a-z-]+ +[0-9]+ x |  (dense|expert): |  [a-z() ]+ +[0-9]+ bytes|layout|memory plan|parallel:|model:|this rank|optimizer|data:)'
echo "== $kind under $how: exit $rc, the job took ${total} s, ended ${after_fault} s after the fault"

[ "$rc" -ne 0 ] || fail "the job exited 0"
[ "$rc" -ne 124 ] && [ "$rc" -ne 137 ] || fail "the job hung until the test's timeout"
text=$(sed 's/^[0-9.]* //' "$work/out.txt")
expect() {
  grep -q -E -- "$1" <<<"$text" || fail "no line matching '$1'"
}
if [ "$how" = launch ]; then
  case $kind in
    crash) expect "origami launch: FAILED: rank 3 killed by SIGABRT \(signal 6\)"
           expect "^  \| origami train: rank 3: --fault: aborting in step 3" ;;
    hang) expect "origami launch: FAILED: rank [013] exited with status 1"
          expect "^  \| origami train: rank [013]: error: .* timed out after 5 s .*Ranks that never arrived: member [0-9]+ \(global rank 2\)" ;;
    error) expect "origami launch: FAILED: rank 1 exited with status 1"
           expect "^  \| origami train: rank 1: error: --fault: rank 1 fails in step 3" ;;
  esac
  expect "^  rank $want_rank: "
else
  # mpirun's own notices ("MPI_ABORT was invoked ...", "process rank N ... exited on signal")
  # go through Open MPI's help aggregation, which drops them now and then when ranks fail at the
  # same moment (ORTE_ERROR_LOG in show_help.c): the lines the ranks print are what is checked.
  case $kind in
    crash) expect "origami train: rank 3: --fault: aborting in step 3" ;;
    hang) expect "origami train: rank [013]: error: .* timed out after 5 s .*Ranks that never arrived: member [0-9]+ \(global rank 2\)" ;;
    error) expect "origami train: rank 1: error: --fault: rank 1 fails in step 3" ;;
  esac
fi
python3 -c "import sys; sys.exit(0 if $after_fault == $after_fault and $after_fault <= $limit else 1)" ||
  fail "the job ended ${after_fault} s after the fault (limit $limit s)"
leftovers || fail "processes left behind"
echo "ok: $kind under $how"
