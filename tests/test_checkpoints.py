"""Checkpoints are a promise: `.keras` files written by an earlier version
(tests/fixtures/checkpoints, made by tests/fixtures/make_checkpoints.py and never regenerated)
load and give the numbers they gave when they were written — exact log-likelihoods
(dequantization noise state included) and seeded samples through the learned inverses."""

import json
import pathlib

import keras
import numpy as np
import pytest

import snf_tf  # noqa: F401  (registers the serializable classes)

FIXTURES = pathlib.Path(__file__).parent / "fixtures" / "checkpoints"
VALUES = json.loads((FIXTURES / "values.json").read_text())


def _images(n, seed):
    return np.random.default_rng(seed).integers(0, 256, (n, 8, 8, 1)).astype(np.uint8)


def test_every_family_has_its_fixture():
    assert set(VALUES) == {"fc_selfnorm", "fc_exact", "conv_selfnorm", "conv_exact",
                           "glow_selfnorm", "glow_exact"}
    assert {p.stem for p in FIXTURES.glob("*.keras")} == set(VALUES)
    assert sum(p.stat().st_size for p in FIXTURES.iterdir()) < 1.1e6


@pytest.mark.parametrize("name", sorted(VALUES))
def test_old_checkpoint_loads_and_gives_the_same_numbers(name):
    model = keras.models.load_model(FIXTURES / f"{name}.keras")
    expected = VALUES[name]
    np.testing.assert_allclose(model.log_prob(_images(4, 1)).numpy(), expected["log_prob"],
                               rtol=1e-5)
    np.testing.assert_allclose(model.sample(2, seed=7).numpy().ravel(), expected["sample"],
                               rtol=1e-4, atol=1e-4)
    assert model.optimizer is not None and model.optimizer.iterations.numpy() == 3
