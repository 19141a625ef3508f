#!/usr/bin/env bash
# origami generate on 4 ranks (TP2, two data-parallel replicas) must end every rank within
# seconds, non-zero, when loading fails on some ranks -- each failing rank printing its own error,
# the others one line naming them -- instead of leaving the others waiting in a collective:
#   corrupt  a byte flipped inside a parameter piece of rank_00001.bin of a TP2 x DP2 training
#            checkpoint (tensor-parallel rank 1 of each replica, ranks 1 and 3, read it)
#   memory   rank 2 under `ulimit -d` (private memory: the shared libraries, CUDA's included,
#            do not count), through a wrapper that checks OMPI_COMM_WORLD_RANK, with a KV cache
#            it cannot allocate
#   generate_failures.sh corrupt|memory ORIGAMI MPIEXEC CONFIG
set -u
kind=$1 origami=$2 mpiexec=$3 config=$4
source "$(dirname "$0")/lib.sh"

limit_s=10  # from the first error line to the end of the job
ckpt=(--set "train.checkpoint_dir=\"$work/ckpt\"" --set train.save_every=0)
timeout -k 5 120 "${mpirun_cmd[@]}" -np 4 "$origami" train "$config" "${tiny[@]}" --tp 2 \
  "${ckpt[@]}" --set train.steps=2 --no-resume >"$work/train.txt" 2>&1 || {
  cat "$work/train.txt"
  fail "training the checkpoint failed"
}
step_dir=$(cat "$work/ckpt/latest")
step_dir=$work/ckpt/${step_dir##*/}
generate=("$origami" generate --config "$config" --checkpoint "$step_dir" --tp 2 --prompt "The"
          --max-new-tokens 4 --temperature 0)
case $kind in
  corrupt)
    damaged=$step_dir/rank_00001.bin
    # The middle byte of the first parameter piece that file holds.
    python3 - "$step_dir/rank_00001.json" "$damaged" <<'PY'
import json, sys
index, path = json.load(open(sys.argv[1])), sys.argv[2]
piece = next(t for t in index["tensors"] if t["name"].startswith("params/") and t["bytes"] > 0)
b = bytearray(open(path, "rb").read())
b[piece["byte_offset"] + piece["bytes"] // 2] ^= 0x40
open(path, "wb").write(b)
PY
    cmd=("${mpirun_cmd[@]}" -np 4 "${generate[@]}") ;;
  memory)
    cat >"$work/rank2_low_memory.sh" <<'SH'
#!/usr/bin/env bash
[ "${OMPI_COMM_WORLD_RANK:-}" = 2 ] && ulimit -d $((600 * 1024))
exec "$@"
SH
    chmod +x "$work/rank2_low_memory.sh"
    # 65536 blocks of 16 tokens: 4 layers x K,V x 1 KV head x 32 x 4 bytes = about 1 GiB a rank.
    cmd=("${mpirun_cmd[@]}" -np 4 "$work/rank2_low_memory.sh" "${generate[@]}" --kv-blocks 65536) ;;
  *) fail "unknown kind $kind" ;;
esac

run_stamped "${cmd[@]}"
after_error=$(seconds_since_line "$work/out.txt" "origami generate: rank [0-9]+: (error|stopped)" "$end")
sed "s/^[0-9.]* //" "$work/out.txt" | cut -c1-240 | tail -20
echo "== $kind: exit $rc; the job took ${total} s, ${after_error} s after the first error line"
[ "$rc" -ne 0 ] || fail "the job exited 0"
[ "$rc" -ne 124 ] && [ "$rc" -ne 137 ] || fail "the job hung until the test's timeout"
text=$(sed 's/^[0-9.]* //' "$work/out.txt")
count() { grep -c -E -- "$1" <<<"$text"; }
case $kind in
  corrupt)
    for r in 1 3; do
      [ "$(count "^origami generate: rank $r: error: checkpoint file '$damaged' is corrupt: tensor 'params/")" -eq 1 ] ||
        fail "rank $r did not print its CRC error"
    done
    for r in 0 2; do
      [ "$(count "^origami generate: rank $r: stopped: ranks 1 and 3 failed while loading the model")" -eq 1 ] ||
        fail "rank $r did not say that ranks 1 and 3 failed"
    done ;;
  memory)
    [ "$(count "^origami generate: rank 2: error: .*(out of host memory|out of memory)")" -eq 1 ] ||
      fail "rank 2 did not print its allocation error"
    for r in 0 1 3; do
      [ "$(count "^origami generate: rank $r: stopped: rank 2 failed while loading the model")" -eq 1 ] ||
        fail "rank $r did not say that rank 2 failed"
    done ;;
esac
[ "$(count "timed out|never arrived")" -eq 0 ] || fail "a collective timed out"
python3 -c "import sys; a = $after_error; sys.exit(0 if a == a and a <= $limit_s and $total <= 60 else 1)" ||
  fail "the job ended ${after_error} s after the first error (limit $limit_s s), ${total} s in all"
leftovers || fail "processes left behind"
echo "ok: generate $kind"
