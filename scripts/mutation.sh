#!/usr/bin/env bash
# Mutation testing of snf_tf with mutmut 2 on a copy of the committed HEAD (the checkout is never
# touched). mutmut 3 forks a process per mutant after running the tests once, and TensorFlow
# does not survive a fork (the child's first op never returns), so this uses mutmut 2.5.1,
# which starts the test command afresh for every mutant.
#
#   bash scripts/mutation.sh COPY "PATHS" "TESTS"
#   bash scripts/mutation.sh /tmp/mut "snf_tf/ops/selfnorm.py,snf_tf/ops/toeplitz.py" \
#       "tests/test_ops_selfnorm.py tests/test_toeplitz.py"
#
# Then: cd COPY && "$COPY/.mutmut-venv/bin/mutmut" results (show ID, html). Re-run survivors with
# a wider selection: mutmut run ID --runner "...".
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
copy="$1"; paths="$2"; tests="$3"
python="$root/.venv/bin/python"
[ -x "$python" ] || { echo "mutation.sh: run bash scripts/test.sh once first (it makes .venv)" >&2; exit 1; }
if [ ! -d "$copy" ]; then
  git -C "$root" worktree add -q --detach "$copy" HEAD
fi
[ -x "$copy/.mutmut-venv/bin/mutmut" ] || {
  python3 -m venv "$copy/.mutmut-venv"
  "$copy/.mutmut-venv/bin/pip" install -q "mutmut==2.5.1"
}
cd "$copy"
# the copy's snf_tf, not the checkout's editable install
export PYTHONPATH="$copy" TF_CPP_MIN_LOG_LEVEL=3 TF_ENABLE_ONEDNN_OPTS=1
if [ -z "${TFDS_DATA_DIR:-}" ] && [ -d "$root/../shared/tensorflow_datasets" ]; then
  export TFDS_DATA_DIR="$(cd "$root/../shared/tensorflow_datasets" && pwd)"
fi
"$copy/.mutmut-venv/bin/mutmut" run --paths-to-mutate "$paths" --tests-dir tests --no-progress \
  --runner "$python -m pytest -x -q -p no:cacheprovider -n 0 $tests" || true
"$copy/.mutmut-venv/bin/mutmut" results
