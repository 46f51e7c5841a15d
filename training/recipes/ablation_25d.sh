#!/usr/bin/env bash
# 2.5-D input against the plain model: the same data, trainer and budget (configs/train/cpu_ablation.toml), the
# only difference the model's context_slices (configs/model/brats.toml vs brats25d.toml); both scored by
# `evaluate` on the held-out phantom anatomies 17-20 (same folder layout as train_brats_small.sh).
#   DATA=/tmp/cbdata training/recipes/ablation_25d.sh
set -euo pipefail
data=${DATA:?set DATA}; runs=${RUNS:-runs}; cfg=cpu_ablation
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
for model in ${MODELS:-brats brats25d}; do
  run="$runs/ablation-$model"
  codebrain-node train --stage 1 --config $cfg --data "$data/train" --out "$run-s1" --model "$model"
  codebrain-node train --stage 2 --config $cfg --data "$data/train" --out "$run-s2" --from "$run-s1"
  codebrain-node evaluate --checkpoint "$run-s2/model.safetensors" --data "$data/heldout_phantom" --split all \
    --max-slices "${MAX_SLICES:-120}" --out "$runs/eval-ablation-$model"
done
