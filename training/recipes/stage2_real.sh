#!/usr/bin/env bash
# Shared by the Stage II recipes on the real cases (train_prior_real.sh, train_prior_image_real.sh,
# train_wide_prior_real.sh): take the base weights from the commit that holds them, check their sha256, then
# train Stage II into OUT, or resume it after an interruption, or say it is done.
#   stage2_real.sh OUT BASE_NAME BASE_COMMIT BASE_SHA256 CONFIG [train options, e.g. --model small_wide_prior]
# Environment: DATA (../shared/data), RUNS (runs), THREADS (1), NICE (0).
set -euo pipefail
out=$1 base_name=$2 base_commit=$3 base_sha256=$4 config=$5; shift 5
data=${DATA:-../shared/data}; runs=${RUNS:-runs}
export OMP_NUM_THREADS=${THREADS:-1} MKL_NUM_THREADS=${THREADS:-1}
base="$runs/$base_name"
mkdir -p "$runs"
[ -f "$base" ] || git show "$base_commit:weights/codebrain-brats-small.safetensors" > "$base"
echo "$base_sha256  $base" | sha256sum --check --quiet || { echo "$base is not the weights of $base_commit" >&2; exit 1; }
if [ -f "$out/model.safetensors" ]; then echo "$out: done"
elif [ -f "$out/checkpoints/last.pt" ]; then nice -n "${NICE:-0}" codebrain-node train --stage 2 --out "$out" --resume
else nice -n "${NICE:-0}" codebrain-node train --stage 2 --from "$base" --config "$config" --data "$data" --out "$out" "$@"
fi
