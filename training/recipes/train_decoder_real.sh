#!/usr/bin/env bash
# Stage III on the real cases (issue #13, beyond the paper), recipe configs/train/cpu_real_stage3.toml: the 0.3.0
# weights' common encoder and decoder fitted to their prior's codes (2,500 steps of batch 16 on the 15 real training
# cases), and beside it the direct-regression baseline on the same real-data budget (5,000 steps: Stage II's 2,500
# plus Stage III's 2,500), then both scored on the 6 held-out cases. The two runs are independent: THREADS=1 each,
# run them on two cores with PART=stage3 and PART=direct, then PART=evaluate (the default runs all three in turn).
# Resumable: run it again after any interruption.
#   DATA=../shared/data RUNS=runs training/recipes/train_decoder_real.sh
set -euo pipefail
data=${DATA:-../shared/data}; runs=${RUNS:-runs}; part=${PART:-all}
export OMP_NUM_THREADS=${THREADS:-1} MKL_NUM_THREADS=${THREADS:-1}
base="$runs/codebrain-brats-small-0.3.0.safetensors" stage3="$runs/decoder-real" direct="$runs/direct-real-5k"
mkdir -p "$runs"
[ -f "$base" ] || git show 41c99c3:weights/codebrain-brats-small.safetensors > "$base"
echo "b24f1e2d94f87249e2f7a50549dfc0f967efbcf0ebff983a3d850285008e7e9d  $base" | sha256sum --check --quiet \
  || { echo "$base is not the 0.3.0 weights" >&2; exit 1; }

train() {  # train OUT [options for a fresh run]: finish, resume or start one run
  local out=$1; shift
  if [ -f "$out/model.safetensors" ]; then echo "$out: done"
  elif [ -f "$out/checkpoints/last.pt" ]; then nice -n "${NICE:-0}" codebrain-node train --out "$out" --resume "$@"
  else nice -n "${NICE:-0}" codebrain-node train --out "$out" --config cpu_real_stage3 --data "$data" "$@"
  fi
}
case $part in all | stage3) train "$stage3" --stage 3 --from "$base" ;; esac
case $part in all | direct) train "$direct" --stage 1 --arch direct --model small ;; esac
case $part in all | evaluate)
  codebrain-node evaluate --checkpoint "$stage3/model.safetensors" --direct "$direct/model.safetensors" \
    --data "$data" --split test --max-slices 360 --out "$runs/eval-decoder-real" ;;
esac
