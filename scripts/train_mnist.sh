#!/usr/bin/env bash
# The main job (README quick start): train the default SNF (2-layer FC, reference config) on real
# MNIST for a short budget, report the exact test NLL in nats and bits/dim, write samples as PNG.
# Runs `snf-tf train selfnorm_fc_mnist --epochs 1` into a new runs/quickstart-<time> folder; extra
# arguments go to `snf-tf train` (e.g. --epochs 5, or --out DIR --resume to continue a run).
set -euo pipefail
source "$(dirname "$0")/setup.sh"
exec .venv/bin/snf-tf train selfnorm_fc_mnist --epochs 1 --out "runs/quickstart-$(date +%Y%m%d-%H%M%S)" "$@"
