#!/usr/bin/env bash
# Training and held-out data for the shipped 4-contrast model (T1, T1Gd, T2, FLAIR): one MR-physics phantom per
# SynthSeg anatomy. Anatomies 1-16 train, 17-20 are held out for evaluation. Variety comes from the seed:
# lesion on odd seeds, skull-stripped on every other anatomy, 1.5 T on every third; sequence timings are
# randomised by the phantom itself.  Usage: make_brats_phantoms.sh OUT_DIR [FIRST LAST]
set -euo pipefail
out=${1:?output folder}; first=${2:-1}; last=${3:-20}
for n in $(seq "$first" "$last"); do
  case_dir="$out/$([ "$n" -le 16 ] && echo train || echo heldout)"
  lesion=$([ $((n % 2)) = 1 ] && echo --lesion || echo --no-lesion)
  skull=$([ $((n % 4)) -lt 2 ] && echo --skull || echo --no-skull)
  field=$([ $((n % 3)) = 0 ] && echo 1.5 || echo 3)
  codebrain-node phantom --out "$case_dir" --contrasts T1,T1Gd,T2,FLAIR --format nifti \
    --anatomy "synthseg:$n" --seed "$n" "$lesion" "$skull" --field "$field"
done
