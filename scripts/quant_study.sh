#!/usr/bin/env bash
# The quantization study (docs/quantization.md, "Accuracy"): trains the 20.9M-parameter model of
# configs/quant/fortunes_22m.pbtxt on the fortunes text (every file but science, literature and
# wisdom, which are the held-out text), quantizes it with `origami quantize` several ways, and
# prints the held-out perplexity of each with `origami perplexity` (the kernels that serve it).
#
#   scripts/quant_study.sh [--windows N] [--samples N]     (defaults 400 and 64)
#
# After scripts/setup.sh and scripts/build.sh. Work folder runs/quant/ (kept: a second run skips
# the training and the quantizations already there). On 2 cores: ~20 minutes of training, ~3
# minutes per GPTQ variant, ~1 minute per perplexity.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bin="${ORIGAMI_BUILD_DIR:-$here/build}/bin/origami"
cd "$here"
windows=400
samples=64
while [ $# -gt 0 ]; do
  case "$1" in
    --windows) windows="$2"; shift 2 ;;
    --samples) samples="$2"; shift 2 ;;
    -h|--help) sed -n '2,11p' "$0"; exit 0 ;;
    *) echo "quant_study.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
config=configs/quant/fortunes_22m.pbtxt
work=runs/quant
export OMP_WAIT_POLICY=passive

# The text: training files and held-out files (regular files, not the .dat indexes or links).
if [ ! -d "$work/heldout" ]; then
  mkdir -p "$work/train" "$work/heldout"
  for f in /usr/share/games/fortunes/*; do
    name="$(basename "$f")"
    [ -f "$f" ] && [ ! -L "$f" ] || continue
    case "$name" in *.dat|*.u8) continue ;; esac
    case "$name" in
      science|literature|wisdom) cp "$f" "$work/heldout/" ;;
      *) cp "$f" "$work/train/" ;;
    esac
  done
fi
if [ ! -f "$work/model/latest" ]; then
  echo "== training $config"
  "$bin" train "$config" --no-resume
fi

quantize() {  # NAME ARGS...: runs/quant/NAME, a GPTQ folder
  local name="$1"; shift
  [ -f "$work/$name/config.json" ] && return 0
  echo "== quantizing: $name"
  "$bin" quantize --config "$config" --checkpoint "$work/model" "$work/$name" \
    --calibration "$work/train" --samples "$samples" --seq-len 256 --dtype f32 "$@" \
    >"$work/$name.log"
  tail -1 "$work/$name.log"
}
quantize gptq-8-g128 --bits 8 --group-size 128
quantize gptq-4-g128 --bits 4 --group-size 128
quantize rtn-4-g128 --bits 4 --group-size 128 --method rtn
quantize gptq-4-g128-act --bits 4 --group-size 128 --act-order
quantize gptq-3-g128 --bits 3 --group-size 128
quantize rtn-3-g128 --bits 3 --group-size 128 --method rtn
quantize gptq-4-row --bits 4 --group-size -1
quantize rtn-4-row --bits 4 --group-size -1 --method rtn

ppl() {  # perplexity of its arguments' model
  "$bin" perplexity "$@" --text "$work/heldout" --seq-len 256 --max-windows "$windows" \
    2>/dev/null | awk '{ print $2 }'
}
base="$(ppl --config "$config" --checkpoint "$work/model")"
echo
echo "held-out perplexity ($(cat "$work"/heldout/* | wc -c) bytes of science, literature and" \
  "wisdom; $windows windows of 256 tokens; calibration $samples windows of the training text)"
printf '%-18s %10s %9s\n' model perplexity "vs fp32"
row() { awk -v n="$1" -v p="$2" -v b="$base" 'BEGIN { printf "%-18s %10.4f %+8.2f%%\n", n, p, 100 * (p / b - 1) }'; }
row fp32 "$base"
row "int8 (rtn, load)" "$(ppl --config "$config" --checkpoint "$work/model" --weights int8)"
row "int4 (rtn, load)" "$(ppl --config "$config" --checkpoint "$work/model" --weights int4)"
for name in gptq-8-g128 gptq-4-g128 gptq-4-g128-act rtn-4-g128 gptq-3-g128 rtn-3-g128 \
    gptq-4-row rtn-4-row; do
  row "$name" "$(ppl "$work/$name")"
done
