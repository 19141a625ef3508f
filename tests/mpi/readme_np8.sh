#!/usr/bin/env bash
# The README's parallel commands as a user types them: mpirun with only the run-as-root variables,
# no OMPI_MCA_* settings and no OMP_NUM_THREADS (origami makes what Open MPI needs itself and
# shares the cores among the ranks, parallel/mpi_environment.h).
# A few steps each; then the 8-rank run again with osc/rdma forced, whose shared-memory windows
# clash between groups in Open MPI 4 (MPI_ERR_WIN on some ranks): the run must still finish,
# without arrival records where the window failed.
#   readme_np8.sh MPIEXEC ORIGAMI DENSE_CONFIG MOE_CONFIG
set -u
mpiexec=$1 origami=$2 dense=$3 moe=$4
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
fail=0
# The environment of a user: every OMPI_MCA_* variable and OMP_NUM_THREADS removed.
clean_env=(env -u OMP_NUM_THREADS)
for v in $(env | grep -o '^OMPI_MCA_[A-Za-z0-9_]*'); do clean_env+=(-u "$v"); done
clean_env+=(OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1)

run() {  # name, extra environment ("" for none), ranks, config, flags...
  local name=$1 extra=$2 np=$3 config=$4
  shift 4
  local start end rc
  start=$(date +%s.%N)
  timeout -k 5 120 "${clean_env[@]}" $extra "$mpiexec" -np "$np" --oversubscribe \
    "$origami" train "$config" --set train.steps=3 --set train.log_every=1 \
    --set train.checkpoint_dir= --no-progress "$@" >"$work/$name.txt" 2>&1
  rc=$?
  end=$(date +%s.%N)
  local secs
  secs=$(python3 -c "print('%.1f' % ($end - $start))")
  if [ "$rc" -ne 0 ] || ! grep -q "^step      3 " "$work/$name.txt"; then
    echo "FAIL: $name: exit $rc after $secs s:"
    tail -30 "$work/$name.txt"
    fail=1
    return 1
  fi
  echo "ok: $name: 3 steps, exit 0 in $secs s ($(grep -c 'note: .*arrival records' "$work/$name.txt") group(s) without arrival records)"
}

if run dense_tp2_pp2_dp2 "" 8 "$dense" --tp 2 --pp 2 --dp 2 &&
  grep -E "error|MPI_ERR|note: .*(arrival|process_vm_readv)" "$work/dense_tp2_pp2_dp2.txt"; then
  echo "FAIL: the README's 8-rank run printed the lines above"
  fail=1
fi
run moe_tp2_sp_ep4 "" 4 "$moe" --tp 2 --sequence-parallel --ep 4 --etp 1 \
  --set train.micro_batch_size=4 || true
# The fallback: whatever Open MPI does with the windows, the run ends normally.
run dense_osc_rdma OMPI_MCA_osc=rdma,sm,pt2pt 8 "$dense" --tp 2 --pp 2 --dp 2 || true
exit $fail
