#!/usr/bin/env bash
# Set everything up and run the whole test suite: ruff (lint + format check), then pytest.
# Extra arguments go to pytest (e.g. -k connectivity, -x).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# Tests of the real Fashion-MNIST files run when they are here (installed if apt allows).
bash scripts/ensure_fashion_mnist.sh >/dev/null \
  || echo "test: Fashion-MNIST is not available; the tests that read its files are skipped"
py=.venv/bin/python
echo "== ruff check"; "$py" -m ruff check src tests benchmarks
echo "== ruff format --check"; "$py" -m ruff format --check src tests benchmarks
echo "== pytest"; "$py" -m pytest -q "$@"
