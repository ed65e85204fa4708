#!/usr/bin/env bash
# Create or update the project environment in .venv/ (idempotent).
# torch is installed first and pinned: a looser pin can pull a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "bootstrap: creating .venv with $($PY --version)"
  "$PY" -m venv .venv
fi
VPY=.venv/bin/python
stamp=.venv/.espnet_mobile_bootstrap
want="$(sha256sum pyproject.toml .ci/bootstrap.sh | sha256sum | cut -c1-16)"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && "$VPY" -c "import espnet_mobile, torch" 2>/dev/null; then
  echo "bootstrap: .venv is up to date"
  exit 0
fi
"$VPY" -m pip install --quiet --upgrade pip
"$VPY" -m pip install --quiet torch==2.13.0
"$VPY" -m pip install --quiet -e ".[all,dev]"
echo "$want" > "$stamp"
echo "bootstrap: .venv ready ($("$VPY" -c 'import torch; print("torch", torch.__version__)'))"
