#!/usr/bin/env bash
# Create .venv with Python 3.12 and install megatron_mio (editable, test extras) into it.
# Idempotent: a stamp of the install inputs skips the work when nothing changed.
# Usage: bash tools/setup_venv.sh   (prints the venv's python path on its last line)
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV=${MIO_VENV:-$ROOT/.venv}
TORCH_VERSION=${MIO_TORCH_VERSION:-2.13.0}

find_python312() {
  # (pyenv puts a python3.12 shim on PATH that fails unless 3.12 is selected, so try it.)
  if python3.12 -c "" >/dev/null 2>&1; then command -v python3.12; return; fi
  if command -v pyenv >/dev/null 2>&1; then
    local version
    version=$(pyenv versions --bare 2>/dev/null | grep -E '^3\.12(\.[0-9]+)?$' | sort -V | tail -n1)
    if [ -n "$version" ]; then echo "$(pyenv prefix "$version")/bin/python3.12"; return; fi
  fi
  echo "error: Python 3.12 not found (install it, or put python3.12 on PATH)" >&2
  exit 1
}

if [ ! -x "$VENV/bin/python" ]; then
  "$(find_python312)" -m venv "$VENV"
fi
PY="$VENV/bin/python"
stamp="$VENV/.megatron_mio-install"
inputs=$(cat "$ROOT/setup.py" "$ROOT/pyproject.toml" "$ROOT"/csrc/* | sha256sum | cut -c1-16)-$TORCH_VERSION
if [ "$(cat "$stamp" 2>/dev/null)" != "$inputs" ] || ! "$PY" -c "import megatron_mio._C" 2>/dev/null; then
  quiet=(-q --disable-pip-version-check)
  "$PY" -m pip install "${quiet[@]}" --upgrade pip setuptools wheel pybind11 numpy 2>&1 | grep -v "is ignored" || true
  # Pin torch: its PyPI build runs on the CPU here; clusters bring their own CUDA torch.
  "$PY" -m pip install "${quiet[@]}" "torch==$TORCH_VERSION" 2>&1 | grep -v "is ignored" || true
  "$PY" -m pip install "${quiet[@]}" --no-build-isolation -e "$ROOT[test]" 2>&1 | grep -v "is ignored" || true
  "$PY" -c "import torch, megatron.core, megatron_mio._C" || { echo "error: install failed" >&2; exit 1; }
  echo "$inputs" > "$stamp"
fi
echo "$PY"
