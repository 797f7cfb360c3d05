#!/usr/bin/env bash
# The main job (README quick start): train the paper's SNF conv flow (reference config) on real
# MNIST for a short budget, report the exact test NLL in nats and bits/dim, write samples as PNG.
# Runs `snf-tf train selfnorm_cnn_mnist --epochs 5` into a new runs/quickstart-<time> folder;
# extra arguments go to `snf-tf train` (e.g. --epochs 20, or --out DIR --resume to continue).
set -euo pipefail
source "$(dirname "$0")/setup.sh"
exec .venv/bin/snf-tf train selfnorm_cnn_mnist --epochs 5 --out "runs/quickstart-$(date +%Y%m%d-%H%M%S)" "$@"
