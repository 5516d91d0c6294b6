#!/usr/bin/env bash
# The main job: set everything up, then run the study `main` on real Fashion-MNIST: small vs large
# batch under no bias decay, β decay and adaptive β decay (the paper's Table 4 shape), with C by
# substructure (Table 2), Tr(H), λmax, the Fisher-Rao norm and the invariance check, on the CPU
# (a GPU when present), at the preset `quick` with 3 seeds. Prints the report and leaves
# OUT/report.md and OUT/plots/*.png.
# Re-running skips finished runs and resumes interrupted ones. Extra arguments go to
# `biasdecay sweep` (e.g. --seeds 3, or --set run.device=cpu).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
data_root="$(bash scripts/ensure_fashion_mnist.sh)"
out="${BIASDECAY_OUT:-runs/study-main}"
bd=.venv/bin/biasdecay

# 3 seeds per setting, so that each verdict rests on a noise estimate; 2 runs at a time share
# the CPU's cores (one thread each), which trains small batches faster than one run on two.
"$bd" sweep main --preset "${BIASDECAY_PRESET:-quick}" --out "$out" \
  --data-root "fashion-mnist=$data_root" --seeds "${BIASDECAY_SEEDS:-3}" \
  --jobs "${BIASDECAY_JOBS:-2}" --no-report "$@"
"$bd" report "$out"
