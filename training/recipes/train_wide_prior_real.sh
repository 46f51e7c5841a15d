#!/usr/bin/env bash
# Issue #13's second size: the 0.3.0 model's frozen Stage I with a prior encoder twice as wide
# (configs/model/small_wide_prior.toml, trained from scratch), on 0.3.0's real-data budget: configs/train/cpu_real_prior.toml,
# 2,500 steps of batch 16 on the 15 real training cases of configs/splits/real22.toml.
# Resumable: run it again after any interruption. CPU, one thread.
#   DATA=../shared/data RUNS=runs training/recipes/train_wide_prior_real.sh
set -euo pipefail
data=${DATA:-../shared/data}; runs=${RUNS:-runs}; out="$runs/wide-prior"
export OMP_NUM_THREADS=${THREADS:-1} MKL_NUM_THREADS=${THREADS:-1}
base="$runs/codebrain-brats-small-0.3.0.safetensors"
mkdir -p "$runs"
# 0.3.0 as shipped (its Stage I is 0.1.1's): the last commit that holds it, checked by its sha256
base_sha256=b24f1e2d94f87249e2f7a50549dfc0f967efbcf0ebff983a3d850285008e7e9d
[ -f "$base" ] || git show 13d4bc6:weights/codebrain-brats-small.safetensors > "$base"
echo "$base_sha256  $base" | sha256sum --check --quiet || { echo "$base is not the 0.3.0 weights" >&2; exit 1; }
if [ -f "$out/model.safetensors" ]; then echo "$out: done"
elif [ -f "$out/checkpoints/last.pt" ]; then codebrain-node train --stage 2 --out "$out" --resume
else codebrain-node train --stage 2 --from "$base" --model small_wide_prior --config cpu_real_prior --data "$data" --out "$out"
fi
# the model card's size table: the same 360 slices of the 6 held-out cases as 0.3.0's row
codebrain-node evaluate --checkpoint "$out/model.safetensors" --data "$data" --split test --max-slices 360 \
  --out "$runs/eval-wide-prior"
