#!/usr/bin/env bash
# origami doctor on one process, under origami launch and under mpirun: ranks, hosts, local
# ranks, devices, library versions, an all-reduce with its bandwidth, and advice.
#   doctor.sh ORIGAMI MPIEXEC
set -u
origami=$1 mpiexec=$2 config=none
source "$(dirname "$0")/lib.sh"

check() {  # name, output, expected lines (regex)...
  local name=$1 out=$2
  shift 2
  for want in "$@"; do
    grep -q -E -- "$want" <<<"$out" || fail "$name: no line matching '$want'"
  done
  echo "ok: $name"
}
libs=("MPI: Open MPI v[0-9]" "oneDNN: [0-9]+\.[0-9]+" "Protobuf: [0-9]+\.[0-9]+" "UCX: "
      "CUDA: " "NCCL: " "devices:" "advice:")

out=$(timeout 120 "$origami" doctor --gemm-size 64 2>&1) || fail "doctor exited $?: $out"
echo "$out"
check "one process" "$out" "ranks: 1 on 1 host" "rank 0: host .*local rank 0/1" "${libs[@]}" \
  "cpu gemm 64\^3" "one rank: run 'origami launch -n 2 -- doctor'"

out=$(timeout 120 "$origami" launch -n 3 --mpirun "$mpiexec" -- doctor --gemm-size 0 2>&1) ||
  fail "doctor under launch exited $?: $out"
echo "$out"
check "origami launch -n 3" "$out" "ranks: 3 on 1 host" "started by origami launch" \
  "rank 2: host .*local rank 2/3" "${libs[@]}" \
  "all-reduce over 3 ranks \(mpi, f32, 4 MiB, 5 reps\): [0-9.]+ ms, algbw [0-9.]+ GB/s, busbw"

out=$(timeout 120 "${mpirun_cmd[@]}" -np 2 "$origami" doctor --gemm-size 0 --allreduce-mb 1 2>&1) ||
  fail "doctor under mpirun exited $?: $out"
check "mpirun -np 2" "$out" "ranks: 2 on 1 host.*started by openmpi" \
  "rank 1: host .*local rank 1/2" "${libs[@]}" "all-reduce over 2 ranks .*busbw"
grep -q "WRONG RESULT" <<<"$out" && fail "the all-reduce gave a wrong sum"
exit 0
