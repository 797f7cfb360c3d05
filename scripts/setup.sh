# Sourced by the quick-start scripts: a project venv with the package installed, and the offline
# tfds folder (../shared/tensorflow_datasets) when present.
cd "$(dirname "${BASH_SOURCE[0]}")/.."
[ -x .venv/bin/python ] || python3 -m venv .venv
# Install (editable, with the test and docs extras) once per version of pyproject.toml: later
# runs start at once. The stamp holds the pyproject.toml it was installed from.
if ! cmp -s pyproject.toml .venv/.snf-tf-installed-from 2>/dev/null; then
  .venv/bin/python -m pip install -q --upgrade pip
  # PYTHONWARNINGS: setuptools' notice about editable installs is not for our users
  PYTHONWARNINGS=ignore .venv/bin/python -m pip install -q -e ".[test,docs]"
  cp pyproject.toml .venv/.snf-tf-installed-from
fi
if [ -z "${TFDS_DATA_DIR:-}" ] && [ -d ../shared/tensorflow_datasets ]; then
  export TFDS_DATA_DIR="$(cd ../shared/tensorflow_datasets && pwd)"
fi
export TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-3}"
# TF turns oneDNN on by itself only on AVX-512 CPUs; on AVX2 ones it makes the SNF conv and dense
# steps 1.5-3× faster (snf-tf bench scaling). Export TF_ENABLE_ONEDNN_OPTS=0 to opt out.
export TF_ENABLE_ONEDNN_OPTS="${TF_ENABLE_ONEDNN_OPTS:-1}"
