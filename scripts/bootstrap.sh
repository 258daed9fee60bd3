#!/usr/bin/env bash
# Create (or reuse) the project venv and install what the project needs, torch first.
# Why torch first: a bare `torch` requirement resolves to a multi-GB CUDA build on a
# machine with no torch; installing the CPU build first makes pip's `torch>=2.6` a no-op.
# One line per phase on stderr, with its wall time, so a two-minute install is never silent.
set -euo pipefail
VENV=${VENV:-.venv}
PY=${PYTHON:-python3}
STAMP="$VENV/.installed-$(cat pyproject.toml scripts/bootstrap.sh | sha256sum | cut -c1-16)"
[ -f "$STAMP" ] && exit 0

started=$SECONDS
phase() { echo "[bootstrap $((SECONDS - started))s] $*" >&2; }

if [ -x "$VENV/bin/python" ]; then
  phase "reusing the venv in $VENV"
else
  phase "creating the venv in $VENV"
  "$PY" -m venv "$VENV"
fi
pip() { "$VENV/bin/python" -m pip --disable-pip-version-check -q "$@" 2> >(grep -v "is ignored: it is neither" >&2); }

if "$VENV/bin/python" -c "import torch" 2>/dev/null; then
  phase "torch already installed"
elif "$PY" -c "import torch" 2>/dev/null; then
  # Keep the machine's torch: reuse it through a .pth pointing at its site-packages.
  phase "reusing this machine's torch"
  site=$("$PY" -c "import torch, os; print(os.path.dirname(os.path.dirname(torch.__file__)))")
  echo "$site" > "$("$VENV/bin/python" -c 'import site; print(site.getsitepackages()[0])')/system-torch.pth"
elif command -v nvidia-smi >/dev/null 2>&1; then
  phase "installing torch (CUDA build; the largest download)"
  pip install torch
else
  phase "installing torch (CPU build)"
  pip install "torch==2.13.0" 2>/dev/null \
    || pip install torch --index-url https://download.pytorch.org/whl/cpu
fi
phase "installing pythia-forensics and its dependencies (editable, with the test and bench extras)"
pip install -e ".[test,bench]"
rm -f "$VENV"/.installed-*
touch "$STAMP"
phase "done: $("$VENV/bin/python" -m pythia_forensics --version)"
