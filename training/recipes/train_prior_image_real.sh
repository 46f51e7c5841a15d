#!/usr/bin/env bash
# Issue #13: 0.3.0's recipe (train_prior_real.sh: Stage II alone on the 15 real training cases, from the 0.1.1
# weights' frozen Stage I) plus the decoded-image term, configs/train/cpu_real_prior_image.toml.
# Resumable: run it again after any interruption. CPU, one thread.
#   DATA=../shared/data RUNS=runs training/recipes/train_prior_image_real.sh
set -euo pipefail
data=${DATA:-../shared/data}; runs=${RUNS:-runs}; out="$runs/prior-image"
export OMP_NUM_THREADS=${THREADS:-1} MKL_NUM_THREADS=${THREADS:-1}
base="$runs/codebrain-brats-small-0.1.1.safetensors"
mkdir -p "$runs"
# 0.1.1 as shipped before 0.3.0 replaced it: the last commit that holds it, checked by its sha256
base_sha256=d8aa18c13874ea83a586da3d2370dd7c7c41a07e472b93c89be8442d431eb3a5
[ -f "$base" ] || git show 2316a5e:weights/codebrain-brats-small.safetensors > "$base"
echo "$base_sha256  $base" | sha256sum --check --quiet || { echo "$base is not the 0.1.1 weights" >&2; exit 1; }
if [ -f "$out/model.safetensors" ]; then echo "$out: done"
elif [ -f "$out/checkpoints/last.pt" ]; then codebrain-node train --stage 2 --out "$out" --resume
else codebrain-node train --stage 2 --from "$base" --config cpu_real_prior_image --data "$data" --out "$out"
fi
# the model card's table: the same 360 slices of the 6 held-out cases as 0.3.0's row
codebrain-node evaluate --checkpoint "$out/model.safetensors" --data "$data" --split test --max-slices 360 \
  --out "$runs/eval-prior-image"
