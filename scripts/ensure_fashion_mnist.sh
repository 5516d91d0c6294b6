#!/usr/bin/env bash
# Make sure the real Fashion-MNIST idx files are on this machine.
# Order: $BIASDECAY_FASHION_MNIST (a directory you give), the Debian package's directory, then an
# install of the Debian package `dataset-fashion-mnist` where apt-get is there and we are root.
# Prints the directory on stdout; explains how to get the files and fails otherwise.
set -euo pipefail

has_files() {
  local d="$1"
  for f in train-images-idx3-ubyte train-labels-idx1-ubyte t10k-images-idx3-ubyte t10k-labels-idx1-ubyte; do
    [ -f "$d/$f" ] || [ -f "$d/$f.gz" ] || return 1
  done
}

debian_dir=/usr/share/datasets/fashion-mnist
if [ -n "${BIASDECAY_FASHION_MNIST:-}" ]; then
  if has_files "$BIASDECAY_FASHION_MNIST"; then echo "$BIASDECAY_FASHION_MNIST"; exit 0; fi
  echo "data: BIASDECAY_FASHION_MNIST=$BIASDECAY_FASHION_MNIST lacks the four idx files" >&2
  exit 1
fi
if has_files "$debian_dir"; then echo "$debian_dir"; exit 0; fi

if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  echo "data: installing the Debian package dataset-fashion-mnist" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -qq dataset-fashion-mnist >/dev/null 2>&1 \
    || { apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq dataset-fashion-mnist >/dev/null; }
  if has_files "$debian_dir"; then echo "$debian_dir"; exit 0; fi
fi

cat >&2 <<MSG
data: Fashion-MNIST was not found and could not be installed here.
  Either install the Debian package as root:   apt-get install dataset-fashion-mnist
  or download train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz
  and t10k-labels-idx1-ubyte.gz (the Fashion-MNIST project's files) into a directory DIR and run
  again with BIASDECAY_FASHION_MNIST=DIR.
MSG
exit 1
