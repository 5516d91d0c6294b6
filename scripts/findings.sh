#!/usr/bin/env bash
# The project's findings: the studies behind docs/results/, at the preset `cpu` with 3 seeds
# (and a replica of the main job on fresh seeds), each followed by its report, which is copied
# with its plots to docs/results/STUDY/. Hours on 2 CPU cores (evolution alone: about half an
# hour). Re-running skips
# finished runs. Arguments name the studies to run (default: table4 evolution adaptation table2
# main-replica).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
data_root="$(bash scripts/ensure_fashion_mnist.sh)"
bd=.venv/bin/biasdecay
out="${BIASDECAY_FINDINGS:-runs/findings}"

run_study() {  # NAME, then the arguments of `biasdecay sweep`
  local name=$1
  shift
  local start
  start=$(date +%s)
  "$bd" sweep "$@" --jobs "${BIASDECAY_JOBS:-2}" --out "$out/$name" \
    --data-root "fashion-mnist=$data_root"
  echo "findings: $name took $(($(date +%s) - start)) s"
  rm -rf "docs/results/$name"
  mkdir -p "docs/results/$name"
  cp "$out/$name/report.md" "docs/results/$name/"
  if [ -d "$out/$name/plots" ]; then cp -r "$out/$name/plots" "docs/results/$name/"; fi
}

for name in "${@:-table4 evolution adaptation table2 main-replica}"; do
  for study in $name; do
    case "$study" in
      main-replica) run_study main-replica main --preset quick --seeds 3 --first-seed 3 ;;
      *) run_study "$study" "$study" --preset cpu --seeds 3 ;;
    esac
  done
done
