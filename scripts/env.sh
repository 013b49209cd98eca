#!/usr/bin/env bash
# Create (or reuse) the project's virtual environment and install the plugin into it.
# Sourced by scripts/smoke.sh and scripts/test.sh; safe to run again (it only installs
# what is missing or changed).
#   VENV=path             where the environment lives (default: <repo>/.venv)
#   PYTHON=python3        interpreter used to create it
#   TORCH_SPEC="torch==2.14.1 torchvision==0.29.1"   the torch pair to install if torch
#                         is missing. From PyPI on Linux that is the CUDA build, about 6 GB with
#                         its nvidia-* libraries. On a machine without a GPU use the CPU build
#                         (a few hundred MB):
#   TORCH_SPEC="torch==2.14.1 torchvision==0.29.1 --index-url https://download.pytorch.org/whl/cpu"
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VENV:-$REPO/.venv}"
PYTHON="${PYTHON:-python3}"
TORCH_SPEC="${TORCH_SPEC:-torch==2.14.1 torchvision==0.29.1}"

if [ ! -x "$VENV/bin/python" ]; then
  echo "[env] creating virtual environment $VENV"
  "$PYTHON" -m venv "$VENV"
fi
PY="$VENV/bin/python"
if ! "$PY" -c "import torch, torchvision" >/dev/null 2>&1; then
  echo "[env] installing $TORCH_SPEC into $VENV"
  case "$TORCH_SPEC" in
    *whl/cpu*) echo "[env] (the CPU build of torch: a few hundred MB)";;
    *) echo "[env] (from PyPI on Linux this is the CUDA build: about 6 GB with its nvidia-* libraries."
       if ! command -v nvidia-smi >/dev/null 2>&1; then
         echo "[env]  No GPU here? Stop (Ctrl-C) and rerun with the CPU build:"
         echo "[env]  TORCH_SPEC=\"torch==2.14.1 torchvision==0.29.1 --index-url https://download.pytorch.org/whl/cpu\" bash scripts/smoke.sh)"
         sleep 5
       else
         echo "[env]  Set TORCH_SPEC for another CUDA version, see https://pytorch.org/get-started/locally/)"
       fi;;
  esac
  # shellcheck disable=SC2086
  "$PY" -m pip install --disable-pip-version-check -q $TORCH_SPEC
fi
# Editable install (setup.cfg's `package_dir = =.` makes it a plain .pth path entry, which
# Hydra's scan of the hydra_plugins namespace package sees; tests/test_install.py checks
# it). Re-run whenever setup.cfg changes (cheap otherwise).
STAMP="$VENV/.sam3_lora_plugin.installed"
if [ ! -f "$STAMP" ] || [ "$REPO/setup.cfg" -nt "$STAMP" ]; then
  echo "[env] installing sam3-lora-plugin (editable) and its dependencies"
  "$PY" -m pip install --disable-pip-version-check -q -e "$REPO[dev]"
  touch "$STAMP"
fi
export PATH="$VENV/bin:$PATH"
echo "[env] using $VENV (to run the README's python -m commands in your shell: source $VENV/bin/activate)"
