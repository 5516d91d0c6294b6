#!/usr/bin/env bash
# Set everything up and run the whole test suite: ruff (lint + format check), then pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh "data,plot,dev"
py=.venv/bin/python
echo "== ruff check"; "$py" -m ruff check src tests benchmarks
echo "== ruff format --check"; "$py" -m ruff format --check src tests benchmarks
echo "== pytest"; "$py" -m pytest -q "$@"
