#!/usr/bin/env bash
# The real-data model (issue #13): CodeBrain `brats` and its direct-regression baseline on the committed split
# configs/splits/real22.toml (15 train + 1 validation case of ../shared/data; 6 held out), recipe cpu_real.
# Resumable: run it again after any interruption and every stage continues from its last checkpoint (a finished
# stage is skipped). CPU, one thread per run, niced so a node or the tests on the same machine keep priority.
#   DATA=../shared/data RUNS=runs CONFIG=cpu_real_2h TAG=real2h training/recipes/train_real.sh
# (CONFIG: a recipe of configs/train; TAG names the run folders RUNS/TAG-MODEL-s1, -direct, -s2, eval-TAG-MODEL)
set -euo pipefail
data=${DATA:-../shared/data}; runs=${RUNS:-runs}; cfg=${CONFIG:-cpu_real}; model=${MODEL:-brats}; tag=${TAG:-real}
export OMP_NUM_THREADS=${THREADS:-1} MKL_NUM_THREADS=${THREADS:-1}
run() {  # run OUT ARGS...: train into OUT, resuming when OUT has a checkpoint, skipping when it has finished
  local out=$1; shift
  if [ -f "$out/model.safetensors" ]; then echo "$out: done"; return; fi
  if [ -f "$out/checkpoints/last.pt" ]; then
    nice -n 15 codebrain-node train --out "$out" --resume "$@"
  else
    nice -n 15 codebrain-node train --out "$out" --config "$cfg" --data "$data" "$@"
  fi
}
run "$runs/$tag-$model-s1" --stage 1 --model "$model" &
run "$runs/$tag-$model-direct" --stage 1 --arch direct --model "$model" &
wait
run "$runs/$tag-$model-s2" --stage 2 --from "$runs/$tag-$model-s1"
codebrain-node evaluate --checkpoint "$runs/$tag-$model-s2/model.safetensors" \
  --direct "$runs/$tag-$model-direct/model.safetensors" --data "$data" --split test --out "$runs/eval-$tag-$model"
