#!/usr/bin/env bash
# The main job: set everything up, train a thin ResNet-18 on real Fashion-MNIST with the paper's
# large-batch recipe (LAMB, ghost BN, polynomial schedule; CPU by default, a GPU when present),
# then print and save its sharpness measures. Re-running continues or reuses the same run.
# Extra arguments go to `biasdecay measure` (e.g. --measures connectivity,connectivity-m).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
data_root="$(bash scripts/ensure_fashion_mnist.sh)"
out="${BIASDECAY_OUT:-runs/main}"
bd=.venv/bin/biasdecay

if [ -f "$out/config.toml" ]; then
  "$bd" train --resume "$out"
else
  "$bd" train --config configs/fashion_resnet18_cpu.toml --data-root "$data_root" --out "$out" \
    --set "run.epochs=${BIASDECAY_EPOCHS:-1}"
fi
"$bd" measure --checkpoint "$out/model.pt" --data fashion-mnist --data-root "$data_root" \
  --samples 1024 --json "$out/measures.json" "$@"
