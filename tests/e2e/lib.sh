# Shared by the launch tests (sourced). Expects: origami, mpiexec, config set by the caller.
set -u
# A tiny run of the demo dense model: a few hundred tokens a step, one thread per rank.
export OMP_NUM_THREADS=1
work=$(mktemp -d /tmp/origami-e2e-XXXXXX)
tiny=(--set train.log_every=1 --set train.micro_batch_size=1 --set train.seq_len=32
      --set train.grad_accum=1 --set train.warmup_steps=2 --no-progress)
# Open MPI as root in a container, without fabric probing (what origami launch sets by itself).
mpirun_cmd=(env OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
            OMPI_MCA_btl=self,vader,tcp OMPI_MCA_pml=ob1
            "$mpiexec" --oversubscribe --allow-run-as-root --bind-to none)

cleanup() {
  # Anything of ours still running is a failure of the test, but must not outlive it.
  local left
  left=$(ps -eo pid=,args= | grep -F -- "$work" | grep -v -e grep -e "ps -eo" | awk '{print $1}')
  [ -n "$left" ] && kill -KILL $left 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT

fail() {
  echo "FAIL: $*"
  exit 1
}

# Prints each line of stdin prefixed by the wall-clock time (seconds), as it arrives.
stamp() {
  python3 -u -c '
import sys, time
for line in iter(sys.stdin.readline, ""):
    sys.stdout.write("%.3f %s" % (time.time(), line))
'
}

# Runs "$@" (at most 120 s) with its output stamped line by line into $work/out.txt; sets rc (its
# exit status), end (when it ended) and total (the seconds it took).
run_stamped() {
  local start
  start=$(date +%s.%N)
  timeout -k 5 120 "$@" 2>&1 | stamp >"$work/out.txt"
  rc=${PIPESTATUS[0]}
  end=$(date +%s.%N)
  total=$(python3 -c "print('%.2f' % ($end - $start))")
}

# Seconds between the first stamped line matching $2 in file $1 and the stamp $3.
seconds_since_line() {
  python3 - "$1" "$2" "$3" <<'PY'
import re, sys
path, pattern, end = sys.argv[1], sys.argv[2], float(sys.argv[3])
for line in open(path, errors="replace"):
    t, _, text = line.partition(" ")
    if re.search(pattern, text):
        print("%.2f" % (end - float(t)))
        break
else:
    print("nan")
PY
}

# Processes still running whose command line names this test's folder (none may be left).
leftovers() {
  local i
  for i in 1 2 3 4 5 6 7 8 9 10; do
    ps -eo args= | grep -F -- "$work" | grep -v -e grep -e "ps -eo" >/dev/null || return 0
    sleep 0.5
  done
  ps -eo pid=,args= | grep -F -- "$work" | grep -v -e grep -e "ps -eo"
  return 1
}
