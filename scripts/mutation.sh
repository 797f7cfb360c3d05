#!/usr/bin/env bash
# Mutation testing of snf_tf with mutmut 2 on a copy of the committed HEAD (the checkout is never
# touched). mutmut 3 forks a process per mutant after running the tests once, and TensorFlow
# does not survive a fork (the child's first op never returns), so this uses mutmut 2.5.1,
# which starts the test command afresh for every mutant.
#
#   bash scripts/mutation.sh COPY "PATHS" "PYTEST ARGS" [FILE:FUNCTION,FUNCTION ...]
#
#   bash scripts/mutation.sh /tmp/mut "snf_tf/ops/selfnorm.py,snf_tf/ops/toeplitz.py" \
#       "tests/test_ops_selfnorm.py tests/test_toeplitz.py"
#   bash scripts/mutation.sh /tmp/mut snf_tf/model.py \
#       "-m 'not slow' tests/test_model.py tests/test_public_numbers.py" \
#       snf_tf/model.py:log_prob,sample
#
# With FILE:FUNCTION arguments only the numeric lines of those functions are mutated
# (scripts/mutation_lines.py: no docstrings, no raise statements). Each mutant runs
# "pytest -x -n 0 PYTEST ARGS" in a fresh process; results stay in COPY/.mutmut-cache, where a
# later run re-tests only the survivors once the tests change (copy the new tests into COPY/tests).
# Then: cd COPY && .mutmut-venv/bin/mutmut results (show ID, html).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
copy="$1"; paths="$2"; tests="$3"; shift 3
python="$root/.venv/bin/python"
[ -x "$python" ] || { echo "mutation.sh: run bash scripts/test.sh once first (it makes .venv)" >&2; exit 1; }
if [ ! -d "$copy" ]; then
  git -C "$root" worktree add -q --detach "$copy" HEAD
fi
[ -x "$copy/.mutmut-venv/bin/mutmut" ] || {
  python3 -m venv "$copy/.mutmut-venv"
  "$copy/.mutmut-venv/bin/pip" install -q "mutmut==2.5.1" "whatthepatch==1.0.7"
}
patch_args=()
if [ $# -gt 0 ]; then
  "$python" "$root/scripts/mutation_lines.py" "$@" > "$copy/.mutation-lines.patch"
  patch_args=(--use-patch-file "$copy/.mutation-lines.patch")
fi
cd "$copy"
# the copy's snf_tf, not the checkout's editable install
export PYTHONPATH="$copy" TF_CPP_MIN_LOG_LEVEL=3 TF_ENABLE_ONEDNN_OPTS=1
if [ -z "${TFDS_DATA_DIR:-}" ] && [ -d "$root/../shared/tensorflow_datasets" ]; then
  export TFDS_DATA_DIR="$(cd "$root/../shared/tensorflow_datasets" && pwd)"
fi
"$copy/.mutmut-venv/bin/mutmut" run --paths-to-mutate "$paths" --tests-dir tests --no-progress \
  "${patch_args[@]}" \
  --runner "$python -m pytest -x -q -p no:cacheprovider -p no:randomly -n 0 -o addopts= $tests" \
  || true
"$copy/.mutmut-venv/bin/mutmut" results
