#!/usr/bin/env bash
# Create (or reuse) the project's virtual environment in .venv and install biasdecay into it.
#
# Usage: bash scripts/setup.sh [EXTRAS]      e.g. EXTRAS="data,plot,dev"
#
# Torch: a CUDA build of torch that the system python already has is reused (the venv is then
# created with --system-site-packages); otherwise the pinned CPU build is installed *before*
# biasdecay, so that biasdecay's `torch>=2.2` requirement never pulls a multi-GB CUDA build.
# Override the pinned spec with BIASDECAY_TORCH_SPEC (e.g. "torch==2.13.0").
set -euo pipefail
cd "$(dirname "$0")/.."

extras="${1:-data,plot,dev}"
venv="${BIASDECAY_VENV:-.venv}"
torch_spec="${BIASDECAY_TORCH_SPEC:-torch==2.13.0}"
python="${PYTHON:-python3}"

if ! command -v "$python" >/dev/null 2>&1; then
  echo "setup: '$python' not found. Install Python >= 3.10 or point PYTHON at one." >&2
  exit 1
fi

if [ ! -x "$venv/bin/python" ]; then
  site_flag=""
  if "$python" -c "import torch, sys; sys.exit(0 if torch.version.cuda else 1)" >/dev/null 2>&1; then
    echo "setup: reusing the system's CUDA torch"
    site_flag="--system-site-packages"
  fi
  echo "setup: creating $venv"
  "$python" -m venv $site_flag "$venv"
fi
py="$venv/bin/python"

if ! "$py" -c "import torch" >/dev/null 2>&1; then
  echo "setup: installing $torch_spec (CPU build where no CUDA torch is present)"
  "$py" -m pip install --quiet "$torch_spec"
fi

# Reinstall only when pyproject.toml changed since the last install (keeps repeat runs fast).
stamp="$venv/.biasdecay-installed"
want="$(cat pyproject.toml | cksum | cut -d' ' -f1)-$extras"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "setup: installing biasdecay[$extras]"
  # The installed torch is a constraint: an extra's dependency must never replace it.
  torch_now="torch==$("$py" -c 'import torch; print(torch.__version__.split("+")[0])')"
  "$py" -m pip install --quiet -e ".[$extras]" "$torch_now"
  echo "$want" > "$stamp"
fi
# A benchmark peer (curvlinops, via BackPACK) pulls in torchvision, whose wheel may not match
# this torch; a torchvision that cannot import breaks every package that tries it (lightning).
if "$py" -m pip show torchvision >/dev/null 2>&1 && ! "$py" -c "import torchvision" >/dev/null 2>&1; then
  echo "setup: removing torchvision, which does not import with this torch (nothing here needs it)"
  "$py" -m pip uninstall --quiet -y torchvision
fi
"$py" -c "import biasdecay, torch; print(f'setup: biasdecay {biasdecay.__version__}, torch {torch.__version__}')"
