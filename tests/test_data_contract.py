"""One data contract for the Python API and the exported SavedModel (issue 27, item 6).

A model that starts with the image preprocessing (``Dequantize``/``Normalize``/``Logit``, as every
``snf_tf.architectures`` builder) takes pixel values in [0, 256): out-of-range values and images
scaled to [0, 1] are refused with a message naming the range; flows on other data take any finite
values. A missing batch axis is named as such; a temperature is a finite number > 0. The
SavedModel endpoints check the same in their graph, with the same words.
"""

import re

import numpy as np
import pytest
import tensorflow as tf

from snf_tf import FlowModel, architectures, export
from snf_tf import layers as L
from snf_tf.layers.preprocess import pixel_domain
from snf_tf.model import check_temperature

SHAPE = (8, 8, 1)


def _pixels(n=4, seed=0):
    """Real 8-bit images as float32: integers 0..255, both ends present."""
    x = np.random.default_rng(seed).integers(0, 256, (n,) + SHAPE).astype("float32")
    x[0, 0, 0, 0], x[-1, -1, -1, 0] = 0.0, 255.0
    return x


@pytest.fixture(scope="module")
def image_model():
    model = architectures.fc_flow(num_layers=1, seed=1)
    model.log_prob(_pixels())
    return model


@pytest.fixture(scope="module")
def dense_model():
    model = FlowModel([L.SelfNormDense(), L.SmoothLeakyReLU(), L.SelfNormDense()])
    model.log_prob(np.zeros((2, 3), "float32"))
    return model


# -- the declared range ---------------------------------------------------------------------------
def test_image_models_declare_the_pixel_range_and_other_flows_none(image_model, dense_model):
    assert image_model.data_range == (0.0, 256.0)
    for build in (architectures.conv_flow, architectures.glow):
        assert build().data_range == (0.0, 256.0)
    # Normalize(0, 256) before the logit declares it, with or without Dequantize in front
    assert FlowModel([L.Normalize(0.0, 256.0), L.Logit()]).data_range == (0.0, 256.0)
    assert FlowModel([L.Dequantize(), L.Normalize(0.0, 32.0), L.Logit()]).data_range == (0, 32)
    assert dense_model.data_range is None
    # an affine map alone (a standardisation of tabular data) declares no range
    assert FlowModel([L.Normalize(5.0, 2.0), L.SelfNormDense()]).data_range is None


# -- Python: out-of-range pixels and images scaled to [0, 1] -----------------------------------
def test_real_pixels_and_an_all_black_batch_are_scored(image_model):
    assert np.all(np.isfinite(image_model.log_prob(_pixels())))
    assert np.all(np.isfinite(image_model.log_prob(np.zeros((4,) + SHAPE, "float32"))))
    assert np.all(np.isfinite(image_model.log_prob(_pixels().astype("uint8"))))


@pytest.mark.parametrize("low,high", [(-1.0, 255.0), (0.0, 300.0), (-3.5, 256.0)])
def test_out_of_range_pixels_name_the_range_and_the_extremes(image_model, low, high):
    x = _pixels(16)
    x[1, 2, 3, 0], x[2, 3, 4, 0] = low, high
    with pytest.raises(ValueError) as info:
        image_model.log_prob(x)
    message = str(info.value)
    assert "[0, 256)" in message
    assert f"min {low:g}" in message and f"max {high:g}" in message
    assert "logit" not in message.lower()  # the data is at fault, not a layer
    assert len(message) < 400  # never the whole array
    with pytest.raises(ValueError, match=re.escape("[0, 256)")):
        image_model.forward(x)


def test_the_logit_margin_passes_so_the_models_own_samples_score(image_model, served):
    """Samples reach just past [0, 256) where the sigmoid saturates (the logit pre-scaling maps
    (−256α, 256(1 + α)) onto (0, 1)); there the flow is finite, and the checks let it pass."""
    alpha = 1e-6
    low, high = pixel_domain(image_model.flow_layers)
    np.testing.assert_allclose([low, high], [-256 * alpha, 256 / (1 - 2 * alpha) - 256 * alpha])
    x = _pixels()
    x[1, 0, 0, 0], x[2, 0, 0, 0] = -1.5e-4, 256.0 + 1.5e-4
    assert np.all(np.isfinite(image_model.log_prob(x, noise=False)))
    assert np.all(np.isfinite(served.log_prob(x)))
    x[2, 0, 0, 0] = 256.01
    with pytest.raises(ValueError, match=re.escape("got min -0.00015, max 256.01")):
        image_model.log_prob(x, noise=False)
    with pytest.raises(tf.errors.InvalidArgumentError, match=re.escape("[0, 256)")):
        served.log_prob(x)


def test_images_scaled_to_unit_range_are_refused(image_model):
    with pytest.raises(ValueError, match=re.escape(
            "takes pixel values in [0, 256), not images scaled to [0, 1]")):
        image_model.log_prob(_pixels() / 255.0)
    with pytest.raises(ValueError, match="not images scaled to"):
        image_model.forward(_pixels() / 255.0, exact=True)


def test_the_unit_range_rule_spares_small_batches_and_can_be_switched_off(image_model):
    tiny = FlowModel(architectures.preprocessing(seed=0) + [L.Flatten(), L.SelfNormDense()])
    dark = np.full((3, 2, 2, 1), 0.5, "float32")  # 12 values: too few to tell
    assert np.all(np.isfinite(tiny.log_prob(dark)))
    scaled = _pixels() / 255.0
    image_model.check_unit_scaled = False
    try:
        assert np.all(np.isfinite(image_model.log_prob(scaled)))
    finally:
        image_model.check_unit_scaled = True
    with pytest.raises(ValueError, match="not images scaled to"):
        image_model.log_prob(scaled)


def test_flows_on_other_data_take_any_finite_values(dense_model):
    rng = np.random.default_rng(0)
    for x in (rng.uniform(0, 1, (64, 3)), 1e3 * rng.normal(size=(4, 3)), -rng.uniform(size=(4, 3))):
        assert np.all(np.isfinite(dense_model.log_prob(x.astype("float32"))))


# -- Python: a missing batch axis ------------------------------------------------------------------
def test_a_missing_batch_axis_is_named(image_model, dense_model):
    expected = ("FlowModel: inputs need a batch axis: got shape (8, 8, 1), the model takes "
                "(None, 8, 8, 1); add one with x[None]")
    with pytest.raises(ValueError, match=re.escape(expected)):
        image_model.log_prob(_pixels()[0])
    with pytest.raises(ValueError, match=re.escape("inputs need a batch axis: got shape (3,)")):
        dense_model.log_prob(np.zeros(3, "float32"))
    with pytest.raises(ValueError, match=re.escape("add one with x[None]")):
        dense_model.forward(np.zeros(3, "float32"))


# -- temperatures ------------------------------------------------------------------------------
BAD_TEMPERATURES = [-1, -0.5, 0, 0.0, float("nan"), float("inf"), "1", True, None]


@pytest.mark.parametrize("value", BAD_TEMPERATURES, ids=repr)
def test_check_temperature_refuses_all_but_finite_positive_numbers(value):
    with pytest.raises(ValueError) as info:
        check_temperature(value)
    assert str(info.value) == f"FlowModel.sample: temperature must be a finite number > 0, " \
                              f"got {value!r}"
    with pytest.raises(ValueError, match=re.escape("snf-tf sample: temperature must be")):
        check_temperature(value, where="snf-tf sample")


@pytest.mark.parametrize("value", [1, 0.7, 2.5, np.float32(0.5), np.int64(2)])
def test_check_temperature_accepts_finite_positive_numbers(value):
    assert check_temperature(value) == value


@pytest.mark.parametrize("value", [-1, float("nan"), 0.0])
def test_sampling_refuses_a_bad_temperature(dense_model, value):
    with pytest.raises(ValueError) as info:
        dense_model.sample(2, temperature=value)
    assert str(info.value) == (f"FlowModel.sample: temperature must be a finite number > 0, "
                               f"got {value!r}")
    assert type(info.value) is ValueError  # not a NonFiniteError about a layer


@pytest.mark.parametrize("method", ["as_distribution", "as_bijector"])
def test_the_tfp_views_refuse_a_bad_temperature(dense_model, method):
    for value in (-1.0, float("nan")):
        with pytest.raises(ValueError, match=re.escape(
                f"FlowModel.{method}: temperature must be a finite number > 0, got {value!r}")):
            getattr(dense_model, method)(temperature=value)


def test_inverse_refuses_a_negative_or_non_finite_temperature_and_takes_zero(dense_model):
    z = np.zeros((2, 3), "float32")
    for value in (-1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match=re.escape(
                f"FlowModel.inverse: temperature must be a finite number >= 0, got {value!r}")):
            dense_model.inverse(z, temperature=value)
    assert np.all(np.isfinite(dense_model.inverse(z, temperature=0.0)))


# -- the SavedModel --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def served(image_model, tmp_path_factory):
    return tf.saved_model.load(export.export_saved_model(
        image_model, str(tmp_path_factory.mktemp("contract") / "fc")))


def _x_endpoints(sm):
    """The endpoints that take images, each as ``x -> result``."""
    return {"log_prob": sm.log_prob,
            "dequantized_log_prob": lambda x: sm.dequantized_log_prob(x, tf.constant(0)),
            "forward": sm.forward}


def test_served_endpoints_score_real_pixels_as_python_does(image_model, served):
    x = _pixels()
    np.testing.assert_allclose(served.log_prob(x), export.log_prob(image_model, x), rtol=1e-5)
    assert np.all(np.isfinite(served.log_prob(np.zeros((4,) + SHAPE, "float32"))))


@pytest.mark.parametrize("endpoint", ["log_prob", "dequantized_log_prob", "forward"])
def test_served_endpoints_refuse_out_of_range_pixels(served, endpoint):
    x = _pixels()
    x[1, 0, 0, 0], x[2, 0, 0, 0] = -2.0, 400.0
    with pytest.raises(tf.errors.InvalidArgumentError) as info:
        _x_endpoints(served)[endpoint](x)
    message = info.value.message
    assert re.search(rf"{endpoint}: x must be pixel values in \[0, 256\).*min -2, max 400",
                     message), message


@pytest.mark.parametrize("endpoint", ["log_prob", "dequantized_log_prob", "forward"])
def test_served_endpoints_refuse_images_scaled_to_unit_range(served, endpoint):
    with pytest.raises(tf.errors.InvalidArgumentError, match=re.escape(
            f"{endpoint}: the model takes pixel values in [0, 256), not images scaled to [0, 1]")):
        _x_endpoints(served)[endpoint](_pixels() / 255.0)


@pytest.mark.parametrize("endpoint", ["log_prob", "dequantized_log_prob", "forward"])
def test_served_endpoints_refuse_an_empty_batch(served, endpoint):
    with pytest.raises(tf.errors.InvalidArgumentError, match=f"{endpoint}: empty batch in x"):
        _x_endpoints(served)[endpoint](np.zeros((0,) + SHAPE, "float32"))


@pytest.mark.parametrize("shape,words", [
    ((2, 8, 8, 2), r"x must have shape \[batch, 8, 8, 1\], got \[2, 8, 8, 2\]"),
    ((8, 8, 1), r"x needs a batch axis: got shape \[8, 8, 1\], the model takes \[batch, 8, 8, 1\]"),
])
def test_served_wrong_shapes_are_named_without_printing_the_array(served, shape, words):
    x = np.full(shape, 123.0, "float32")
    for call in (served.log_prob, lambda v: served.signatures["log_prob"](x=tf.constant(v))):
        with pytest.raises(tf.errors.InvalidArgumentError) as info:
            call(x)
        message = info.value.message
        assert re.search(words, message), message
        assert "123" not in message and len(message) < 600, message


def test_served_inverse_and_sample_check_their_inputs(served, image_model):
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"inverse: z must have shape"):
        served.inverse(np.zeros((2, 7), "float32"))
    with pytest.raises(tf.errors.InvalidArgumentError, match="inverse: empty batch in z"):
        served.inverse(np.zeros((0,) + image_model.latent_shape, "float32"))
    with pytest.raises(tf.errors.InvalidArgumentError,
                       match="sample: n must be a positive int, got 0"):
        served.sample(tf.constant(0), tf.constant(1))


def test_a_served_flow_on_other_data_takes_any_finite_values(dense_model, tmp_path):
    sm = tf.saved_model.load(export.export_saved_model(dense_model, str(tmp_path / "dense")))
    x = np.random.default_rng(0).uniform(0, 1, (64, 3)).astype("float32")
    np.testing.assert_allclose(sm.log_prob(x), dense_model.log_prob(x), rtol=1e-5)
    x = -500.0 * np.ones((2, 3), "float32")
    np.testing.assert_allclose(sm.log_prob(x), dense_model.log_prob(x), rtol=1e-5)
    with pytest.raises(tf.errors.InvalidArgumentError, match="log_prob: empty batch in x"):
        sm.log_prob(np.zeros((0, 3), "float32"))


def test_a_temperature_tensor_is_checked_eagerly_and_in_a_graph(dense_model):
    assert float(check_temperature(tf.constant(0.5))) == 0.5
    with pytest.raises(ValueError, match="temperature must be a finite number > 0"):
        check_temperature(tf.constant(-1.0))
    traced = tf.function(lambda t: dense_model.sample(2, temperature=t, seed=0))
    assert traced(tf.constant(0.5)).shape == (2, 3)
    with pytest.raises(tf.errors.InvalidArgumentError, match=re.escape(
            "FlowModel.sample: temperature must be a finite number > 0")):
        traced(tf.constant(float("nan")))


def test_a_layer_that_samples_on_inverse_refuses_a_negative_temperature():
    layer = L.SplitPrior(4)
    kept, _ = layer.forward(np.zeros((2, 2, 2, 4), "float32"))
    assert layer.inverse(kept, temperature=0.0).shape == (2, 2, 2, 4)
    with pytest.raises(ValueError, match=re.escape(
            f"{layer.name}.inverse: temperature must be a finite number >= 0, got -0.5")):
        layer.inverse(kept, temperature=-0.5)


def test_a_served_conditional_model_checks_the_shape_of_its_labels(tmp_path):
    model = architectures.fc_flow(num_layers=1, num_classes=3, seed=1)
    model.log_prob(_pixels(), context=[0, 1, 2, 0])
    sm = tf.saved_model.load(export.export_saved_model(model, str(tmp_path / "conditional")))
    y = np.array([0, 1, 2, 0], np.int32)
    np.testing.assert_allclose(sm.log_prob(_pixels(), y),
                               export.log_prob(model, _pixels(), y), rtol=1e-5)
    with pytest.raises(tf.errors.InvalidArgumentError,
                       match=re.escape("log_prob: y must have shape [batch], got [4, 1].")):
        sm.log_prob(_pixels(), y[:, None])
    with pytest.raises(tf.errors.InvalidArgumentError,
                       match=re.escape("sample: y needs a batch axis: got shape []")):
        sm.sample(tf.constant(2), tf.constant(1), tf.constant(0))
    with pytest.raises(tf.errors.InvalidArgumentError, match=re.escape(
            "log_prob: x must be pixel values in [0, 256)")):
        sm.log_prob(_pixels() + 300.0, y)
