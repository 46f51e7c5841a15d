#!/usr/bin/env bash
# How weights/codebrain-brats-small.safetensors was made (CPU, one thread per run; see weights/MODEL_CARD.md).
#   DATA=/tmp/cbdata training/recipes/train_brats_small.sh
# DATA/train: phantom anatomies 1-16 (make_brats_phantoms.sh) + the real BraTS-GLI-00001-000 case (a link);
# DATA/heldout_phantom: anatomies 17-20; DATA/heldout_real: the real TCGA-FG-6692 case (a link).
set -euo pipefail
data=${DATA:?set DATA}; runs=${RUNS:-runs}; cfg=cpu_brats
export OMP_NUM_THREADS=1
codebrain-node train --stage 1 --config $cfg --data "$data/train" --out "$runs/brats-small-s1" --model small &
codebrain-node train --stage 1 --arch direct --config $cfg --data "$data/train" --out "$runs/brats-small-direct" --model small &
wait
codebrain-node train --stage 2 --config $cfg --data "$data/train" --out "$runs/brats-small-s2" --from "$runs/brats-small-s1"
for held in heldout_phantom heldout_real; do
  codebrain-node evaluate --checkpoint "$runs/brats-small-s2/model.safetensors" --direct "$runs/brats-small-direct/model.safetensors" \
    --data "$data/$held" --split all --max-slices 240 --out "$runs/eval-$held"
done
