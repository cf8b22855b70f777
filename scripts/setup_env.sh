#!/usr/bin/env bash
# Create .venv with attnlab installed. Without CUDA, install the CPU build of torch (a plain `pip install torch`
# would pull a multi-GB CUDA build); with CUDA, PyPI's default build.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
PIP=".venv/bin/python -m pip"
$PIP install --quiet --upgrade pip
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi >/dev/null 2>&1; then
    $PIP install --quiet "torch==2.13.0"
  elif $PIP download --quiet --no-deps --no-index -d "$(mktemp -d)" "torch==2.13.0" >/dev/null 2>&1; then
    $PIP install --quiet "torch==2.13.0"          # a local CPU wheel (find-links) is available
  else
    $PIP install --quiet "torch==2.13.0" --index-url https://download.pytorch.org/whl/cpu
  fi
fi
$PIP install --quiet -e ".[dev,plot]"
.venv/bin/python -c "import torch, transformers, attnlab; print('attnlab ready: torch', torch.__version__, '| transformers', transformers.__version__)"
