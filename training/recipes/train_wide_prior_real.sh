#!/usr/bin/env bash
# Issue #13's second size: the 0.3.0 model's frozen Stage I with a prior encoder twice as wide
# (configs/model/small_wide_prior.toml, trained from scratch), on 0.3.0's real-data budget (configs/train/
# cpu_real_prior.toml: 2,500 steps of batch 16 on the 15 real training cases of configs/splits/real22.toml). Not shipped.
# Resumable: run it again after any interruption. CPU, one thread.
#   DATA=../shared/data RUNS=runs training/recipes/train_wide_prior_real.sh
set -euo pipefail
data=${DATA:-../shared/data}; runs=${RUNS:-runs}; out="$runs/wide-prior"
# 0.3.0 as shipped (its Stage I is 0.1.1's)
"$(dirname "$0")/stage2_real.sh" "$out" codebrain-brats-small-0.3.0.safetensors 13d4bc6 \
  b24f1e2d94f87249e2f7a50549dfc0f967efbcf0ebff983a3d850285008e7e9d cpu_real_prior --model small_wide_prior
# the model card's size table: the same 360 slices of the 6 held-out cases as 0.3.0's row
codebrain-node evaluate --checkpoint "$out/model.safetensors" --data "$data" --split test --max-slices 360 \
  --out "$runs/eval-wide-prior"
