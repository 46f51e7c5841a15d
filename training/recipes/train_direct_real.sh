#!/usr/bin/env bash
# The direct-regression baseline of the shipped 0.3.0 weights (issue #13), recipe configs/train/cpu_real_direct.toml:
# 2,500 steps of batch 16 on the 15 real training cases: the real-data budget of CodeBrain 0.3.0 (its Stage II).
# Resumable: run it again after any interruption. CPU, one thread, niced.
#   DATA=../shared/data RUNS=runs training/recipes/train_direct_real.sh
set -euo pipefail
data=${DATA:-../shared/data}; runs=${RUNS:-runs}; out="$runs/direct-real"
export OMP_NUM_THREADS=${THREADS:-1} MKL_NUM_THREADS=${THREADS:-1}
if [ -f "$out/model.safetensors" ]; then echo "$out: done"
elif [ -f "$out/checkpoints/last.pt" ]; then nice -n 15 codebrain-node train --stage 1 --arch direct --out "$out" --resume
else nice -n 15 codebrain-node train --stage 1 --arch direct --config cpu_real_direct --data "$data" --out "$out" --model small
fi
# the model card's comparison: CodeBrain, the direct baseline and nearest contrast on the 6 held-out cases
codebrain-node evaluate --direct "$out/model.safetensors" --data "$data" --split test --split-file real22 --max-slices 360 \
  --out "$runs/eval-direct-real"
