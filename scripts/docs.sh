#!/usr/bin/env bash
# The documentation site, checked in a real browser:
#   1. builds it with `mkdocs build --strict` into a temporary folder,
#   2. serves it with `python -m http.server` on a free port of 127.0.0.1 (loopback only),
#   3. runs scripts/check_site.py: every internal link of the built HTML resolves; headless
#      Chromium renders the home page, the quick start, the own-data tutorial and the
#      SelfNormDense API entry (title, main heading, theme, signature, formulas), with 1280×1600
#      screenshots; and every page, laid out at 1280 px, has no code block wider than its
#      column, no raw LaTeX and no formula KaTeX failed on.
# Usage: bash scripts/docs.sh [SCREENSHOT_DIR]   (default docs-check/, which git ignores)
# PYTHON=/path/to/python uses that interpreter (it needs the docs extra); otherwise the project's
# .venv is set up as by the other scripts. Installs Chromium with apt-get if it is missing.
# For a live preview while writing, use `mkdocs serve` instead.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
shots="${1:-docs-check}"

if [ -z "${PYTHON:-}" ]; then
  source scripts/setup.sh
  PYTHON=.venv/bin/python
fi

if ! command -v chromium >/dev/null 2>&1; then
  if command -v apt-get >/dev/null 2>&1; then
    echo "docs.sh: installing chromium with apt-get" >&2
    if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; } \
        >"${TMPDIR:-/tmp}/docs-sh-apt.log" 2>&1; then
      echo "docs.sh: apt-get install chromium failed (needs root and Debian's archive; log: ${TMPDIR:-/tmp}/docs-sh-apt.log)" >&2
      exit 1
    fi
  else
    echo "docs.sh: chromium is not installed and apt-get is not available: install Chromium" >&2
    exit 1
  fi
fi

site="$(mktemp -d)"
server=""
cleanup() {
  if [ -n "$server" ]; then kill "$server" 2>/dev/null || true; wait "$server" 2>/dev/null || true; fi
  rm -rf "$site"
}
trap cleanup EXIT

start=$(date +%s)
if ! NO_MKDOCS_2_WARNING=1 "$PYTHON" -m mkdocs build --strict --quiet -d "$site/site"; then
  echo "docs.sh: mkdocs build --strict failed (the warnings above say which page)" >&2
  exit 1
fi
echo "docs.sh: site built in $(( $(date +%s) - start )) s"

port="$("$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
"$PYTHON" -m http.server --bind 127.0.0.1 --directory "$site/site" "$port" >"$site/server.log" 2>&1 &
server=$!
url="http://127.0.0.1:$port/"
for _ in $(seq 50); do
  if "$PYTHON" -c "import urllib.request, sys; urllib.request.urlopen(sys.argv[1], timeout=1)" "$url" 2>/dev/null; then
    break
  fi
  if ! kill -0 "$server" 2>/dev/null; then
    echo "docs.sh: the http.server on 127.0.0.1:$port did not start: $(tail -1 "$site/server.log")" >&2
    exit 1
  fi
  sleep 0.2
done

"$PYTHON" scripts/check_site.py "$site/site" --url "$url" --screenshots "$shots"
echo "docs.sh: OK in $(( $(date +%s) - start )) s"
