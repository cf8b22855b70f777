#!/usr/bin/env bash
# Run the model tests against another transformers release in a side environment, e.g.
#   bash scripts/test_transformers_version.sh 5.23.0
# CI runs the suite on the latest release that pyproject.toml admits; this checks an older (or newer) one.
set -euo pipefail
cd "$(dirname "$0")/.."
VERSION=${1:?usage: scripts/test_transformers_version.sh TRANSFORMERS_VERSION [pytest args]}
shift
VENV=".venv-transformers-$VERSION"
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet "torch==2.13.0" 2>/dev/null \
  || "$VENV/bin/python" -m pip install --quiet "torch==2.13.0" --index-url https://download.pytorch.org/whl/cpu
"$VENV/bin/python" -m pip install --quiet "transformers==$VERSION" accelerate datasets safetensors tokenizers \
  huggingface_hub tqdm pytest matplotlib
"$VENV/bin/python" -c "import transformers; print('testing with transformers', transformers.__version__)"
PYTHONPATH=. "$VENV/bin/python" -m pytest -q tests/test_contract.py tests/test_elita.py tests/test_evolving.py \
  tests/test_depth_recurrent.py tests/test_vqlnmlp.py tests/test_gradient_checkpointing.py \
  tests/test_triple_product.py "$@"
