#!/usr/bin/env bash
# The project's test command (README quick start, .ci/run): sets itself up on a fresh machine.
set -euo pipefail
source "$(dirname "$0")/setup.sh"
# Two workers (pytest-xdist), one test file each at a time: module fixtures are built once.
# SNF_TEST_WORKERS=0 runs in this process (serial).
exec .venv/bin/python -m pytest -n "${SNF_TEST_WORKERS:-2}" --dist loadfile "$@"
