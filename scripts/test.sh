#!/usr/bin/env bash
# The project's test command (README quick start, .ci/run): sets itself up on a fresh machine.
set -euo pipefail
source "$(dirname "$0")/setup.sh"
exec .venv/bin/python -m pytest "$@"
