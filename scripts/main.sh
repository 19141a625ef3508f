#!/usr/bin/env bash
# The main job (README command 1), after scripts/setup.sh and scripts/build.sh:
#   1. origami doctor: what this machine offers (devices, libraries, a GEMM check);
#   2. trains the demo MoE (configs/demo/tiny_moe.pbtxt: Mixtral-style, 4 experts top-2, byte
#      tokenizer) from scratch on the fortunes corpus on 4 ranks under mpirun, with MoE parallel
#      folding: attention layers TP2 x DP2 (sequence parallel), expert layers EP4 -- the same 4
#      ranks laid out twice -- printing both layouts and the falling loss;
#   3. generates samples from the checkpoint it saved, on the same 4 ranks with the model split
#      the same way (attention TP2, experts EP4), over a paged KV cache.
# Extra arguments go to `origami train` (e.g. --set train.steps=50). ORIGAMI_RANKS=1 trains on
# one process instead.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bin="${ORIGAMI_BUILD_DIR:-$here/build}/bin"
cd "$here"
config=configs/demo/tiny_moe.pbtxt
run_dir="${ORIGAMI_RUN_DIR:-runs/demo}"
ranks="${ORIGAMI_RANKS:-4}"

"$bin/origami" doctor --gemm-size 512
echo
train=("$bin/origami" train "$config" --no-resume --set "train.checkpoint_dir=\"$run_dir\"")
if [ "$ranks" -gt 1 ]; then
  # Open MPI as root in a container: allow root, no fabric probing.
  export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
  export OMPI_MCA_btl=self,vader,tcp OMPI_MCA_pml=ob1 OMP_NUM_THREADS=1
  # 4 sequences per data-parallel rank: the global batch of 8 sequences of the config.
  mpirun --oversubscribe --allow-run-as-root --bind-to none -np "$ranks" "${train[@]}" \
    --tp 2 --sequence-parallel --ep 4 --etp 1 \
    --set train.micro_batch_size=4 "$@"
else
  "${train[@]}" "$@"
fi
echo
# Generation on the same ranks and layout (attention TP2 folded with experts EP4), the three
# prompts as one batch; with ORIGAMI_RANKS=1 on one process.
generate=("$bin/origami" generate --config "$config" --checkpoint "$run_dir" --prompt "The"
  --prompt "A computer" --prompt "Q: What" --max-new-tokens 100 --temperature 0.8 --top-k 40
  --seed 1)
if [ "$ranks" -gt 1 ]; then
  mpirun --oversubscribe --allow-run-as-root --bind-to none -np "$ranks" "${generate[@]}" \
    --tp 2 --ep 4 --etp 1
else
  "${generate[@]}"
fi
