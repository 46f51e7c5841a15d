#!/usr/bin/env bash
# The shipped 0.3.0 weights (issue #13): Stage II alone on the real training cases, from the 0.1.1 weights' Stage I
# (phantoms + one real case: training/recipes/train_brats_small.sh), recipe configs/train/cpu_real_prior.toml.
# Resumable: run it again after any interruption. CPU, one thread, niced.
#   DATA=../shared/data RUNS=runs training/recipes/train_prior_real.sh
set -euo pipefail
data=${DATA:-../shared/data}; runs=${RUNS:-runs}; out="$runs/prior-real"
# 0.1.1 as shipped before 0.3.0 replaced it: the last commit that holds it
NICE=15 "$(dirname "$0")/stage2_real.sh" "$out" codebrain-brats-small-0.1.1.safetensors 2316a5e \
  d8aa18c13874ea83a586da3d2370dd7c7c41a07e472b93c89be8442d431eb3a5 cpu_real_prior
python training/recipes/ship_weights.py "$out" brats-small 0.3.0 --no-confidence
# the model card's table (6 held-out cases, nearest contrast fitted on the 15 training cases)
codebrain-node evaluate --checkpoint "$out/model.safetensors" --data "$data" --split test --max-slices 360 \
  --out "$runs/eval-prior-real"
