#!/usr/bin/env bash
# origami train with impossible layouts under mpirun: every rank must stop before allocating,
# with a message naming the numbers, and the job must exit non-zero (not hang).
#   cli_invalid_layout.sh MPIEXEC ORIGAMI DENSE_CONFIG MOE_CONFIG
set -u
mpiexec=$1 origami=$2 config=$3 moe_config=$4
fail=0
check() {  # ranks, expected message piece, flags...
  local np=$1 want=$2
  shift 2
  local out rc
  out=$(timeout 120 "$mpiexec" --oversubscribe --allow-run-as-root --bind-to none -np "$np" \
        "$origami" train "$config" --no-resume --set train.steps=1 \
        --set 'train.checkpoint_dir=""' "$@" 2>&1)
  rc=$?
  local ranks
  ranks=$(grep -c "error: .*$want" <<<"$out")
  if [ "$rc" -eq 0 ] || [ "$rc" -eq 124 ] || [ "$ranks" -ne "$np" ]; then
    echo "FAIL: -np $np $* exited $rc with $ranks of $np ranks naming '$want':"
    echo "$out" | tail -20
    fail=1
  else
    echo "ok: -np $np $*: exit $rc, every rank says: $(grep -m1 "error:" <<<"$out")"
  fi
}
check 4 "is not divisible by TP" --tp 3
check 4 "does not divide the 6 attention heads" --tp 4 --set model.num_heads=6 \
  --set model.hidden_size=96
check 4 "layers cannot fill 4 pipeline stages" --pp 4 --set model.num_layers=2
check 4 "does not split into 2 x cp = 8" --cp 4 --set train.seq_len=36
# MoE layouts (the demo MoE has 4 experts).
config=$moe_config
check 3 "does not divide the 4 experts" --ep 3
check 4 "needs sequence parallelism" --tp 2 --ep 2
check 8 "EDP" --tp 2 --pp 2 --sequence-parallel --ep 4 --etp 1 \
  --set 'parallel.order="tp-cp-ep-pp-dp"' --set model.moe.aux_loss_coeff=0
exit $fail
