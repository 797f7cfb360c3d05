"""Sampling and the TFP views against independent expectations, not against another call of
the same sampler: ``FlowModel.sample`` at temperatures T ≠ 1, with a seed (z = T·ε for the
documented ε, or μ(y) + T·σ(y)·ε with μ, σ computed in NumPy from the conditional base's
weights) and without one (the latents' statistics), and ``as_distribution(context=y)`` of a
conditional model on ``[k, rows]`` batches (each row paired with its own context); and what
``ImageGrid``, ``snf-tf sample`` (checkpoint at T ≠ 1, SavedModel) and the SavedModel's
``sample`` draw, against ``inverse(T·ε)`` of the documented ε."""

import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import perturb

from snf_tf import FlowModel, architectures, callbacks, export
from snf_tf import layers as L
from snf_tf.images import image_grid, save_png

D = 4


def _built(model, context=None, seed=0):
    x = np.random.default_rng(seed).standard_normal((6, D)).astype("float32")
    model.forward(x, training=True, context=context)
    for layer in model.flow_layers:
        perturb(layer, 0.1, seed=seed + 1)
    if model.base is not None:
        perturb(model.base, 0.1, seed=seed + 2)
    return model


def _unconditional():
    keras.utils.set_random_seed(0)
    return _built(FlowModel([L.SelfNormDense(), L.SmoothLeakyReLU(), L.SelfNormDense()]))


def _conditional():
    keras.utils.set_random_seed(0)
    model = FlowModel([L.RealNVPCoupling((8,), context_dim=3), L.SelfNormDense(),
                       L.SmoothLeakyReLU(), L.RealNVPCoupling((8,), reverse=True, context_dim=3)],
                      num_classes=3)
    return _built(model, context=np.array([0, 1, 2, 0, 1, 2]))


def _base_parameters(model, labels):
    """μ(y) and σ(y) of the conditional base from its weights, in float64 NumPy."""
    h = np.eye(model.num_classes)[labels] @ model.base.kernel.numpy().astype(np.float64) \
        + model.base.bias.numpy()
    return h[:, :D], np.exp(h[:, D:])


def _documented_noise(n, seed):
    """ε of ``sample(n, seed=s)``: the stateless normal draw with seed pair (s, 0)."""
    return tf.random.stateless_normal([n, D], seed=[seed, 0]).numpy().astype(np.float64)


@pytest.mark.parametrize("temperature", [0.5, 1.0, 1.7])
def test_seeded_sample_is_the_inverse_of_t_times_the_documented_noise(temperature):
    model = _unconditional()
    got = model.sample(7, temperature=temperature, seed=5)
    z = temperature * _documented_noise(7, 5)
    expected = model.inverse(z.astype("float32"))  # the learned inverses, as sample uses
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    exact = model.sample(7, temperature=temperature, seed=5, exact_inverse=True)
    np.testing.assert_allclose(model.forward(exact)[0], z, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("temperature", [0.4, 1.6])
def test_unseeded_sample_has_latents_of_standard_deviation_t(temperature):
    """Through the exact inverses the latents of 8000 unseeded samples come back: N(0, T²)."""
    model = _unconditional()
    samples = model.sample(8000, temperature=temperature, exact_inverse=True)
    z = model.forward(samples)[0].numpy()
    assert abs(z.std() - temperature) < 0.02 * temperature, z.std()
    assert np.abs(z.mean(axis=0)).max() < 0.05 * temperature, z.mean(axis=0)
    again = model.sample(8000, temperature=temperature, exact_inverse=True)
    assert not np.allclose(again[:10], samples[:10])  # no seed: a fresh draw each call


@pytest.mark.parametrize("temperature", [0.6, 1.0, 1.5])
def test_conditional_sample_is_mu_plus_t_sigma_times_the_documented_noise(temperature):
    model = _conditional()
    labels = np.array([2, 0, 1, 1, 2, 0])
    got = model.sample(6, temperature=temperature, seed=9, context=labels)
    mean, scale = _base_parameters(model, labels)
    z = mean + scale * temperature * _documented_noise(6, 9)
    expected = model.inverse(z.astype("float32"), context=labels)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    one_label = model.sample(6, temperature=temperature, seed=9, context=1)
    mean1, scale1 = _base_parameters(model, np.full(6, 1))
    z1 = mean1 + scale1 * temperature * _documented_noise(6, 9)
    np.testing.assert_allclose(one_label, model.inverse(z1.astype("float32"),
                                                        context=np.full(6, 1)),
                               rtol=1e-5, atol=1e-5)


def test_unseeded_conditional_sample_has_latents_mu_and_t_sigma():
    model = _conditional()
    samples = model.sample(6000, temperature=0.6, context=2, exact_inverse=True)
    labels = np.full(6000, 2)
    z = model.forward(samples, context=labels)[0].numpy()
    mean, scale = _base_parameters(model, labels[:1])
    standard = (z - mean) / scale
    assert np.abs(standard.std(axis=0) - 0.6).max() < 0.03, standard.std(axis=0)
    assert np.abs(standard.mean(axis=0)).max() < 0.05, standard.mean(axis=0)


def test_tfp_view_of_a_conditional_model_pairs_rows_and_contexts_on_k_by_rows_batches():
    """``as_distribution(context=y)`` with ``rows`` labels on ``[k, rows, D]``: entry [i, j]
    is scored and sampled with label j, as ``model.log_prob`` / ``model.inverse`` of that one
    example with that label."""
    model = _conditional()
    labels = np.array([2, 0, 1])
    dist = model.as_distribution(context=labels)
    assert tuple(dist.batch_shape) == (3,) and tuple(dist.event_shape) == (D,)
    x = np.random.default_rng(4).standard_normal((5, 3, D)).astype("float32")
    got = dist.log_prob(x).numpy()
    assert got.shape == (5, 3)
    for i in range(5):
        for j in range(3):
            expected = model.log_prob(x[i, j][None], context=labels[j:j + 1])[0]
            np.testing.assert_allclose(got[i, j], expected, rtol=1e-5, atol=1e-5)
    # the base is N(μ(y_j), σ(y_j)²) per row
    mean, scale = _base_parameters(model, labels)
    np.testing.assert_allclose(dist.distribution.mean(), mean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(dist.distribution.stddev(), scale, rtol=1e-5, atol=1e-6)
    # sampling = the chain's forward of base samples: row j through label j's inverses
    noise = np.random.default_rng(5).standard_normal((5, 3, D))
    z = (mean + scale * noise).astype("float32")
    pushed = dist.bijector.forward(z).numpy()
    for j in range(3):
        expected = model.inverse(z[:, j], context=np.full(5, labels[j]))
        np.testing.assert_allclose(pushed[:, j], expected, rtol=1e-5, atol=1e-5)
    samples = dist.sample(5, seed=(1, 2))
    assert tuple(samples.shape) == (5, 3, D) and np.isfinite(dist.log_prob(samples)).all()


# -- what run folders, the CLI and SavedModels draw: an image flow, ε of shape [n, 784] --------

def _image_flow():
    """The SNF FC flow of MNIST, weights perturbed (R ≠ W⁻¹, as during training)."""
    keras.utils.set_random_seed(0)
    model = architectures.fc_flow(seed=0)
    model.forward(np.random.default_rng(0).integers(0, 256, (4, 28, 28, 1)).astype("float32"),
                  training=True)
    for layer in model.flow_layers:
        perturb(layer, 0.01, seed=3)
    return model


def _expected_grid(model, n, seed, temperature, folder):
    """The gray levels of ``model.inverse(T·ε)`` (ε = stateless_normal([n, 784], seed=[s, 0]))
    as a PNG grid reads back (the PNG writer's own rounding included)."""
    eps = tf.random.stateless_normal([n] + list(model.latent_shape), seed=[seed, 0])
    path = folder / f"expected_{n}_{seed}_{temperature}.png"
    save_png(str(path), image_grid(model.inverse(temperature * eps).numpy()))
    return _png_gray(path)


def _png_gray(path):
    import matplotlib.pyplot as plt

    return np.round(plt.imread(path)[..., 0] * 255).astype(np.int64)


def _assert_same_grid(got, expected):
    """Equal gray levels but for floor() flips of values within round-off of an integer."""
    diff = np.abs(got - expected)
    assert diff.max() <= 1 and (diff > 0).mean() < 1e-3, (diff.max(), (diff > 0).mean())


def test_image_grid_callback_draws_the_inverse_of_t_times_the_documented_noise(tmp_path):
    model = _image_flow()
    grid = callbacks.ImageGrid(str(tmp_path), n=16, temperature=0.5, seed=3)
    grid.set_model(model)
    grid.on_epoch_end(0)
    _assert_same_grid(_png_gray(tmp_path / "samples.png"),
                      _expected_grid(model, 16, 3, 0.5, tmp_path))


def test_saved_model_sample_is_the_inverse_of_the_documented_noise(tmp_path):
    model = _image_flow()
    served = tf.saved_model.load(export.export_saved_model(model, str(tmp_path / "sm")))
    got = served.sample(n=tf.constant(6), seed=tf.constant(4)).numpy()
    eps = tf.random.stateless_normal([6, 784], seed=[4, 0])
    np.testing.assert_allclose(got, model.inverse(eps), rtol=1e-5, atol=1e-3)


@pytest.mark.slow
def test_console_sample_draws_the_inverse_of_t_times_the_documented_noise(tmp_path):
    """``snf-tf sample`` as a user runs it: a checkpoint at T = 0.5 and its SavedModel (T = 1)."""
    model = _image_flow()
    model.save(tmp_path / "flow.keras")
    export.export_saved_model(model, str(tmp_path / "sm"))
    snf_tf_command = os.path.join(os.path.dirname(sys.executable), "snf-tf")
    env = {"PATH": os.path.dirname(sys.executable) + os.pathsep + "/usr/bin:/bin",
           "HOME": str(tmp_path), "LANG": "C.UTF-8"}
    for source, temperature in (("flow.keras", 0.5), ("sm", 1.0)):
        args = [snf_tf_command, "sample", source, "-n", "16", "--seed", "3", "-o", "grid.png"]
        if temperature != 1.0:
            args += ["--temperature", str(temperature)]
        out = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True,
                             timeout=600)
        assert out.returncode == 0, out.stderr[-3000:]
        _assert_same_grid(_png_gray(tmp_path / "grid.png"),
                          _expected_grid(model, 16, 3, temperature, tmp_path))


@pytest.mark.parametrize("temperature", [0.6, 1.0])
def test_seeded_sample_of_a_split_prior_model_walks_back_with_seed_plus_one(temperature):
    """A Glow with a SplitPrior draws again on the way back: ``sample(n, seed=s)`` is the
    inverse of T·ε(s, 0) walked with seed ``s + 1`` (documented), not with ``s`` or ``s + 2``."""
    keras.utils.set_random_seed(0)
    model = architectures.glow(steps_per_block=1, hidden_channels=8, seed=0)
    x = np.random.default_rng(1).integers(0, 256, (4, 8, 8, 1)).astype("float32")
    model.forward(x, training=True)
    perturb(model, 0.05, seed=2)
    eps = tf.random.stateless_normal((3,) + model.latent_shape, seed=[4, 0])
    got = model.sample(3, temperature=temperature, seed=4)
    walked = {s: model.inverse(temperature * eps, temperature=temperature, seed=s).numpy()
              for s in (4, 5, 6)}
    np.testing.assert_allclose(got, walked[5], rtol=1e-5, atol=1e-4)
    for other in (4, 6):  # the split prior's draw shows in the images
        assert np.max(np.abs(walked[other] - walked[5])) > 1e-2
