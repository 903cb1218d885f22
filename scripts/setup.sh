#!/usr/bin/env bash
# Create or update the project's virtualenv (.venv): CPU torch where no GPU exists, the package
# editable with its dev extra, and a `python3` Jupyter kernelspec inside the venv.
# Idempotent: re-runs only when pyproject.toml changed since the last successful set-up.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=.venv
STAMP=$VENV/.setup-stamp
if [ -f "$STAMP" ] && [ "$STAMP" -nt pyproject.toml ] && [ "$STAMP" -nt scripts/setup.sh ]; then
  exit 0
fi
echo "== set-up: virtualenv in $VENV"
start=$(date +%s)
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
PIP="$VENV/bin/python -m pip"
$PIP install -q --upgrade pip >/dev/null 2>&1 || true
if "$VENV/bin/python" -c "import torch" >/dev/null 2>&1; then
  echo "== torch already installed: $("$VENV/bin/python" -c 'import torch; print(torch.__version__)' 2>/dev/null)"
elif command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi >/dev/null 2>&1; then
  echo "== GPU found: installing the CUDA build of torch"
  $PIP install -q "torch>=2.4,<2.14"
else
  echo "== no GPU: installing the CPU wheel of torch"
  $PIP install -q "torch==2.13.0"
fi
log=$(mktemp)
if ! $PIP install -q -e ".[dev,ray]" >"$log" 2>&1; then
  grep -v "is ignored: it is neither a file nor a directory" "$log" >&2; echo "pip install of the package failed" >&2; exit 1
fi
grep -v "is ignored: it is neither a file nor a directory" "$log" || true
rm -f "$log"
"$VENV/bin/python" -c "import tradingrl_nb, nbdev, torch" # fail loudly if the install did not work
"$VENV/bin/python" -m ipykernel install --sys-prefix --name python3 --display-name "Python 3 (tradingrl_nb)" >/dev/null
bash scripts/install_chromium.sh || true # Debian chromium for the docs browser test; never fails the set-up
touch "$STAMP"
echo "== set-up done in $(( $(date +%s) - start ))s"
