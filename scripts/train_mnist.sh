#!/usr/bin/env bash
# The main job (README quick start): train the default SNF (2-layer FC, reference config) on real
# MNIST for a short budget, report the exact test NLL in nats and bits/dim, write samples as PNG.
# Extra arguments go to examples/fc_mnist.py (e.g. --epochs 5 --out runs/fc5).
set -euo pipefail
source "$(dirname "$0")/setup.sh"
exec .venv/bin/python examples/fc_mnist.py --epochs 1 --out runs/quickstart "$@"
