#!/usr/bin/env bash
# The main job (README quick start): train a small class-conditional SNF Glow on real MNIST for
# about 4 minutes, report the exact test NLL in nats and bits/dim, write samples (one row per
# digit, beside real test digits) as PNG. Runs `snf-tf train conditional_glow_mnist` (3 epochs)
# into a new runs/quickstart-<time> folder; extra arguments go to `snf-tf train` (e.g. --epochs 10,
# or --out DIR --resume --epochs 10 to continue a run). The unconditional model of the same size is
# `small_selfnorm_glow_mnist`; the paper's models are `snf-tf list`.
set -euo pipefail
source "$(dirname "$0")/setup.sh"
exec .venv/bin/snf-tf train conditional_glow_mnist --out "runs/quickstart-$(date +%Y%m%d-%H%M%S)" "$@"
