#!/usr/bin/env bash
# The main job: set everything up, train a thin ResNet-18 on real Fashion-MNIST for a short while
# (CPU by default; a GPU when one is present), then print and save its sharpness measures.
# Extra arguments go to `biasdecay measure` (e.g. --measures connectivity,connectivity-m).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
data_root="$(bash scripts/ensure_fashion_mnist.sh)"
out="${BIASDECAY_OUT:-runs/main}"
bd=.venv/bin/biasdecay

"$bd" train --model resnet18 --width 0.25 --data fashion-mnist --data-root "$data_root" \
  --epochs "${BIASDECAY_EPOCHS:-1}" --batch-size 128 --lr 0.05 --out "$out"
"$bd" measure --checkpoint "$out/model.pt" --data fashion-mnist --data-root "$data_root" \
  --samples 1024 --json "$out/measures.json" "$@"
