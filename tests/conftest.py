"""Test set-up: quiet TensorFlow, fixed seeds, offline data directory."""

import os
import pathlib

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
_shared_data = pathlib.Path(__file__).resolve().parents[1].parent / "shared" / "tensorflow_datasets"
if "TFDS_DATA_DIR" not in os.environ and _shared_data.is_dir():
    os.environ["TFDS_DATA_DIR"] = str(_shared_data)

import keras  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def fixed_seed():
    keras.utils.set_random_seed(1234)
    yield
