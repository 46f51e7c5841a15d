#!/usr/bin/env bash
# Issue #13: 0.3.0's recipe (train_prior_real.sh: Stage II alone on the 15 real training cases, from the 0.1.1
# weights' frozen Stage I) plus the decoded-image term, configs/train/cpu_real_prior_image.toml. Not shipped.
# Resumable: run it again after any interruption. CPU, one thread.
#   DATA=../shared/data RUNS=runs training/recipes/train_prior_image_real.sh
set -euo pipefail
data=${DATA:-../shared/data}; runs=${RUNS:-runs}; out="$runs/prior-image"
"$(dirname "$0")/stage2_real.sh" "$out" codebrain-brats-small-0.1.1.safetensors 2316a5e \
  d8aa18c13874ea83a586da3d2370dd7c7c41a07e472b93c89be8442d431eb3a5 cpu_real_prior_image
# the model card's size table: the same 360 slices of the 6 held-out cases as 0.3.0's row
codebrain-node evaluate --checkpoint "$out/model.safetensors" --data "$data" --split test --max-slices 360 \
  --out "$runs/eval-prior-image"
