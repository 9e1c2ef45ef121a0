#!/usr/bin/env bash
# The main job: serve the shipped default model, reconstruct the held-out half of the real
# Siemens-star scan over HTTP, and write the amplitude/phase PNGs and the arrays.
#   scripts/demo.sh [OUT_DIR]      (default out/demo; PORT overrides the port, default 8765)
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-out/demo}
port=${PORT:-8765}
bin=${VENV:-.venv}/bin
scan=data/siemens-star-small.npz.bz2

"$bin/ptychopinn" serve --port "$port" &
server=$!
trap 'kill "$server" 2>/dev/null; wait "$server" 2>/dev/null || true' EXIT

"$bin/python" -c "from serving.client import Client; Client('http://127.0.0.1:$port').wait_ready(120)"

"$bin/ptychopinn" reconstruct --server "http://127.0.0.1:$port" --data "$scan" --n 64 --split test --out "$out"
echo "wrote $out/: reconstructed_{amplitude,phase}.{png,tif}, reconstruction.npz and reconstruction.cxi"
