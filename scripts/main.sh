#!/usr/bin/env bash
# The main job (README command 1), after scripts/setup.sh and scripts/build.sh:
#   1. origami doctor: what this machine offers (devices, libraries, a GEMM check);
#   2. trains the demo MoE (configs/demo/tiny_moe.pbtxt: Mixtral-style, 4 experts top-2, byte
#      tokenizer) from scratch on the fortunes corpus, printing the falling loss;
#   3. generates samples from the trained checkpoint.
# Extra arguments go to `origami train` (e.g. --set train.steps=50).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bin="${ORIGAMI_BUILD_DIR:-$here/build}/bin"
cd "$here"
config=configs/demo/tiny_moe.pbtxt
run_dir="${ORIGAMI_RUN_DIR:-runs/demo}"

"$bin/origami" doctor --gemm-size 512
echo
"$bin/origami" train "$config" --no-resume --set "train.checkpoint_dir=\"$run_dir\"" "$@"
echo
for prompt in "The" "A computer" "Q: What"; do
  "$bin/origami" generate --config "$config" --checkpoint "$run_dir" --prompt "$prompt" \
    --max-new-tokens 100 --temperature 0.8 --top-k 40 --seed 1
  echo
done
