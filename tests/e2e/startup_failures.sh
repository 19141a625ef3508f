#!/usr/bin/env bash
# A failure on some ranks before the first step must end every rank within seconds, non-zero,
# with the failing rank's own error and one line on each other rank naming it -- not leave the
# others waiting in their first collective until the timeout (300 s). Four ranks under mpirun:
#   corrupt    TP2 x DP2: resume from a checkpoint with one byte flipped in rank_00001.bin
#              (ranks 1 and 3 read its pieces: the CRC error names the file and the piece)
#   truncated  PP4: resume from a checkpoint whose rank_00002.bin was cut in half (only rank 2
#              reads it)
#   memory     TP2 x DP2 with micro-batches of 96 x 128 tokens (about 500 MiB of activation arena
#              per rank): rank 2 runs under `ulimit -d` (private memory; shared libraries do not count) (a wrapper that checks
#              OMPI_COMM_WORLD_RANK), so allocating its part of the model fails
#   startup_failures.sh corrupt|truncated|memory ORIGAMI MPIEXEC CONFIG
set -u
kind=$1 origami=$2 mpiexec=$3 config=$4
source "$(dirname "$0")/lib.sh"

limit_s=10  # from rank 0's first line (its model, printed before the weights load) to the end
ckpt=(--set "train.checkpoint_dir=\"$work/ckpt\"" --set train.save_every=0)
train=(train "$config" "${tiny[@]}" --set train.steps=4)
case $kind in
  corrupt) layout=(--tp 2) ;;
  truncated) layout=(--pp 4 --set train.grad_accum=4) ;;
  memory) layout=(--tp 2 --set train.micro_batch_size=96 --set train.seq_len=128) ;;
  *) fail "unknown kind $kind" ;;
esac

if [ "$kind" != memory ]; then
  # Two steps with a checkpoint at the end, then damage it.
  timeout -k 5 120 "${mpirun_cmd[@]}" -np 4 "$origami" "${train[@]}" "${layout[@]}" "${ckpt[@]}" \
    --no-resume --stop-after 2 >"$work/first.txt" 2>&1 || {
    cat "$work/first.txt"
    fail "the first run failed"
  }
  step_dir=$(cat "$work/ckpt/latest")
  step_dir=$work/ckpt/${step_dir##*/}
  if [ "$kind" = corrupt ]; then
    damaged=$step_dir/rank_00001.bin
    python3 - "$damaged" <<'PY'
import sys
p = sys.argv[1]
b = bytearray(open(p, "rb").read())
b[len(b) // 2] ^= 0x40
open(p, "wb").write(b)
PY
  else
    damaged=$step_dir/rank_00002.bin
    truncate -s $(($(stat -c %s "$damaged") / 2)) "$damaged"
  fi
  cmd=("${mpirun_cmd[@]}" -np 4 "$origami" "${train[@]}" "${layout[@]}" "${ckpt[@]}")
else
  # The wrapper: rank 2 gets 550 MiB of address space (a rank of the demo model with the usual
  # small batches needs about 320 MiB, with these batches about 800 MiB), the others run as usual.
  cat >"$work/rank2_low_memory.sh" <<'SH'
#!/usr/bin/env bash
[ "${OMPI_COMM_WORLD_RANK:-}" = 2 ] && ulimit -d $((550 * 1024))
exec "$@"
SH
  chmod +x "$work/rank2_low_memory.sh"
  cmd=("${mpirun_cmd[@]}" -np 4 "$work/rank2_low_memory.sh" "$origami" "${train[@]}"
       "${layout[@]}" --set 'train.checkpoint_dir=""')
fi

run_stamped "${cmd[@]}"
after_start=$(seconds_since_line "$work/out.txt" "^parallel: " "$end")
sed 's/^[0-9.]* //' "$work/out.txt" | grep -E "origami|error|MPI" | grep -v "^  "
echo "== $kind: exit $rc; the job took ${total} s, ${after_start} s after rank 0 described its model"

[ "$rc" -ne 0 ] || fail "the job exited 0"
[ "$rc" -ne 124 ] && [ "$rc" -ne 137 ] || fail "the job hung until the test's timeout"
text=$(sed 's/^[0-9.]* //' "$work/out.txt")
expect() {  # pattern, how many lines (default: at least one)
  local n
  n=$(grep -c -E -- "$1" <<<"$text")
  if [ -n "${2:-}" ]; then
    [ "$n" -eq "$2" ] || fail "$n lines match '$1', expected $2"
  else
    [ "$n" -ge 1 ] || fail "no line matching '$1'"
  fi
}
file_re=${damaged:-}
case $kind in
  corrupt)
    for r in 1 3; do
      expect "^origami train: rank $r: error: checkpoint file '$file_re' is corrupt: tensor '[^']+' \(its piece at offsets \[[0-9,]+\] of shape \[[0-9,]+\], bytes [0-9]+\.\.[0-9]+ of the file\) fails its CRC-32 check" 1
    done
    for r in 0 2; do
      expect "^origami train: rank $r: stopped: ranks 1 and 3 failed while loading the data, the model and its weights" 1
    done ;;
  truncated)
    expect "^origami train: rank 2: error: checkpoint file '$file_re' is truncated: [0-9]+ bytes, but tensor '[^']+' \(its piece at" 1
    for r in 0 1 3; do
      expect "^origami train: rank $r: stopped: rank 2 failed while loading the data, the model and its weights \(see its error\)" 1
    done ;;
  memory)
    expect "^origami train: rank 2: error: (arena '[a-z ]+' \([0-9.]+ [KMG]iB on cpu\): )?(out of host memory allocating [0-9]+ bytes|out of memory while loading the data, the model and its weights)" 1
    for r in 0 1 3; do
      expect "^origami train: rank $r: stopped: rank 2 failed while loading" 1
    done ;;
esac
expect ": error: " "$([ "$kind" = corrupt ] && echo 2 || echo 1)"  # no other rank reports an error
expect "timed out|never arrived" 0
python3 -c "import sys; a = $after_start; sys.exit(0 if a == a and a <= $limit_s and $total <= 60 else 1)" ||
  fail "the job ended ${after_start} s after start-up (limit $limit_s s), ${total} s in all (limit 60 s)"
leftovers || fail "processes left behind"
if [ "$kind" = corrupt ]; then
  # origami launch names a rank that failed, not one that stopped because of it (exit 3).
  out=$(timeout -k 5 120 "$origami" launch -n 4 --grace-s 2 --mpirun "$mpiexec" -- "${train[@]}" \
        "${layout[@]}" "${ckpt[@]}" 2>&1)
  rc=$?
  grep -q -E "^origami launch: FAILED: rank [13] exited with status 1 " <<<"$out" || {
    echo "$out" | tail -20
    fail "origami launch exited $rc without naming rank 1 or 3"
  }
  grep -m1 "FAILED" <<<"$out" | cut -c1-100
  leftovers || fail "processes left behind"
fi
echo "ok: $kind"
