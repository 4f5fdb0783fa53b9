#!/usr/bin/env bash
# Set up marktune on a fresh machine: a virtual environment in the repo (.venv)
# with the pinned packages, and Debian's Fashion-MNIST where apt and root exist.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    echo "[setup] creating .venv with $($PY --version)"
    "$PY" -m venv .venv
fi
if ! .venv/bin/python -c "import marktune, torch, ray.tune, optuna, pytest, aiohttp_cors, opencensus" 2>/dev/null \
   || [ pyproject.toml -nt .venv/.marktune-installed ]; then
    echo "[setup] installing pinned packages (torch comes from this machine's disk where it lies there)"
    # (this machine's pip config lists local indexes that may be absent: drop those warnings)
    .venv/bin/python -m pip install --quiet --upgrade pip 2> >(grep -v "is ignored: it is neither" >&2)
    .venv/bin/python -m pip install --quiet -e '.[test,cluster]' 2> >(grep -v "is ignored: it is neither" >&2)
    touch .venv/.marktune-installed
fi

FMNIST=/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
if [ ! -f "$FMNIST" ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        echo "[setup] installing Debian's dataset-fashion-mnist"
        (apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1 \
         || { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1; }) \
         || echo "[setup] could not install dataset-fashion-mnist; the fmnist benchmark needs it or --download"
    else
        echo "[setup] hint: 'sudo apt-get install dataset-fashion-mnist' provides Fashion-MNIST offline," \
             "or pass --download to fetch it with torchvision"
    fi
fi
echo "[setup] ready: .venv/bin/python"
