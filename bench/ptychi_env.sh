#!/usr/bin/env bash
# Create bench/.ptychi-venv: a separate virtual environment for the pty-chi baseline.
#
# pty-chi imports torchvision, and PyPI's torchvision does not import beside the project's CPU
# torch 2.13.0 wheel, so pty-chi gets its own interpreter (torch 2.14.1 + torchvision 0.29.1) and the
# benchmark talks to it through NPZ files (bench/ptychi_runner.py). The project's torch pin is not
# touched. The install is large (~5.5 GB: torch's CUDA wheels come along even though the baseline
# runs on the CPU), so the script checks free disk first.
#
#     bash bench/ptychi_env.sh            # then: python -m bench quality
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
venv="$here/.ptychi-venv"
python="${PYTHON:-python3.11}"
need_gb=8
free_gb=$(df -Pk "$here" | awk 'NR==2 {print int($4 / 1024 / 1024)}')
if (( free_gb < need_gb )); then
  echo "bench/ptychi_env.sh: needs ~${need_gb} GB free under $here, found ${free_gb} GB; free some disk and retry" >&2
  exit 1
fi
"$python" -m venv "$venv"
"$venv/bin/pip" install --quiet --upgrade pip
"$venv/bin/pip" install torch==2.14.1 torchvision==0.29.1
# ptychi unpinned: the current PyPI release (2.2.0 when this was checked on 2026-12-07); every
# benchmark run records the version it ran (`versions` in bench/results/*.json)
"$venv/bin/pip" install --upgrade ptychi
"$venv/bin/python" -c "import ptychi, torch; print('pty-chi', ptychi.__version__ if hasattr(ptychi, '__version__') else '?', 'torch', torch.__version__)"
echo "ready: $venv"
