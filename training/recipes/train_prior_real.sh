#!/usr/bin/env bash
# The shipped 0.3.0 weights (issue #13): Stage II alone on the real training cases, from the 0.1.1 weights' Stage I
# (phantoms + one real case: training/recipes/train_brats_small.sh), recipe configs/train/cpu_real_prior.toml.
# Resumable: run it again after any interruption. CPU, one thread, niced.
#   DATA=../shared/data RUNS=runs training/recipes/train_prior_real.sh
set -euo pipefail
data=${DATA:-../shared/data}; runs=${RUNS:-runs}; out="$runs/prior-real"
export OMP_NUM_THREADS=${THREADS:-1} MKL_NUM_THREADS=${THREADS:-1}
base="$runs/codebrain-brats-small-0.1.1.safetensors"
mkdir -p "$runs"
# 0.1.1 as shipped before 0.3.0 replaced it: the last commit that holds it, checked by its sha256
base_sha256=d8aa18c13874ea83a586da3d2370dd7c7c41a07e472b93c89be8442d431eb3a5
[ -f "$base" ] || git show 2316a5e:weights/codebrain-brats-small.safetensors > "$base"
echo "$base_sha256  $base" | sha256sum --check --quiet || { echo "$base is not the 0.1.1 weights" >&2; exit 1; }
if [ -f "$out/model.safetensors" ]; then echo "$out: done"
elif [ -f "$out/checkpoints/last.pt" ]; then nice -n 15 codebrain-node train --stage 2 --out "$out" --resume
else nice -n 15 codebrain-node train --stage 2 --from "$base" --config cpu_real_prior --data "$data" --out "$out"
fi
python training/recipes/ship_weights.py "$out" brats-small 0.3.0 --no-confidence
# the model card's table (6 held-out cases, nearest contrast fitted on the 15 training cases)
codebrain-node evaluate --checkpoint "$out/model.safetensors" --data "$data" --split test --max-slices 360 \
  --out "$runs/eval-prior-real"
