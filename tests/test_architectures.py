"""snf_tf.architectures: the paper's architectures, and the exact likelihood against NumPy."""


import numpy as np
import pytest

from snf_tf import architectures
from snf_tf import layers as L
from snf_tf.model import FlowModel

ALPHA = 1e-6


def _mnist_like(n=6, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, 28, 28, 1)).astype("uint8")


def _numpy_fc_log_prob(model, x_dequantized):
    """Independent exact log p of fc_flow after dequantization (float64 NumPy)."""
    h = x_dequantized.reshape(len(x_dequantized), -1).astype(np.float64)
    d = h.shape[1]
    log_det = np.full(len(h), -d * np.log(256.0) + d * np.log(1 - 2 * ALPHA))
    h = (h / 256.0 + ALPHA) * (1 - 2 * ALPHA)
    log_det += np.sum(-np.log(h) - np.log1p(-h), axis=1)
    h = np.log(h) - np.log1p(-h)
    dense = [layer for layer in model.flow_layers if isinstance(layer, L.SelfNormDense)]
    for i, layer in enumerate(dense):
        if i:  # smooth leaky ReLU, α = 0.3
            log_det += np.sum(np.log(0.3 + 0.7 / (1 + np.exp(-h))), axis=1)
            h = 0.3 * h + 0.7 * np.logaddexp(0, h)
        kernel = layer.kernel.numpy().astype(np.float64)
        h = h @ kernel + layer.bias.numpy()
        log_det += np.linalg.slogdet(kernel)[1]
    return -0.5 * np.sum(h**2, 1) - 0.5 * d * np.log(2 * np.pi) + log_det


@pytest.mark.parametrize("gradient", ["self_normalized", "exact", "relative"])
def test_fc_flow_exact_log_prob_equals_numpy(gradient):
    model = architectures.fc_flow(gradient)
    x = _mnist_like()
    model.log_prob(x)
    rng = np.random.default_rng(1)
    for layer in model.flow_layers:
        if isinstance(layer, L.SelfNormDense):
            layer.kernel.assign(layer.kernel.numpy() + 0.02 * rng.standard_normal((784, 784)))
    x_deq = model.flow_layers[0].forward(x)[0].numpy()
    rest = FlowModel(model.flow_layers[1:])
    np.testing.assert_allclose(rest.log_prob(x_deq), _numpy_fc_log_prob(model, x_deq), rtol=1e-4)


def test_conv_flow_structure():
    model = architectures.conv_flow()
    model.log_prob(_mnist_like(2))
    kinds = [type(layer).__name__ for layer in model.flow_layers[4:]]
    assert kinds.count("SelfNormConv2D") == 9 and kinds.count("SplineActivation") == 8
    assert kinds.count("Squeeze") == 2 and kinds[-1] == "SelfNormConv2D"
    assert model.latent_shape == (7, 7, 16)


def test_glow_structure_mnist_and_cifar():
    mnist = architectures.glow(steps_per_block=2, hidden_channels=8)
    mnist.log_prob(_mnist_like(2))
    assert mnist.latent_shape == (7, 7, 8)  # 1×28² → 4×14² → split 2 → 8×7²
    cifar = architectures.glow(num_blocks=3, steps_per_block=1, hidden_channels=8,
                        reconstruction_weight=1000.0)
    cifar.log_prob(np.zeros((1, 32, 32, 3), np.uint8))
    assert cifar.latent_shape == (4, 4, 48)  # 12×16² → 6 → 24×8² → 12 → 48×4²
    splits = [layer for layer in cifar.flow_layers if isinstance(layer, L.SplitPrior)]
    assert len(splits) == 2


def test_glow_kernel_sizes():
    exact = architectures.glow(conv="exact", kernel_size=3, steps_per_block=1, hidden_channels=8)
    convs = [layer for layer in exact.flow_layers if isinstance(layer, L.SelfNormConv2D)]
    assert len(convs) == 2 and all(c.gradient == "exact" and c.kernel_size == 3 for c in convs)
    assert np.all(np.isfinite(exact.log_prob(_mnist_like(2))))
    with pytest.raises(ValueError, match="kernel_size must be odd"):
        architectures.glow(kernel_size=2)
    with pytest.raises(ValueError, match="kernel_size must be a positive int"):
        architectures.glow(kernel_size=0)


def test_glow_per_block_steps_and_widths():
    model = architectures.glow(steps_per_block=[1, 3], hidden_channels=[8, 12])
    model.log_prob(_mnist_like(2))
    flow = model.flow_layers
    squeezes = [i for i, layer in enumerate(flow) if isinstance(layer, L.Squeeze)]
    block_1, block_2 = flow[squeezes[0]:squeezes[1]], flow[squeezes[1]:]
    widths = lambda block: [c.hidden_channels for c in block if type(c) is L.AffineCoupling]
    assert widths(block_1) == [8] and widths(block_2) == [12] * 3
    split = next(layer for layer in flow if isinstance(layer, L.SplitPrior))
    assert split.hidden_channels == 8  # the first block's width unless given
    assert model.latent_shape == (7, 7, 8)
    with pytest.raises(ValueError, match="steps_per_block has 1 entries for 2 blocks"):
        architectures.glow(steps_per_block=[4])
    with pytest.raises(ValueError, match="hidden_channels has 3 entries"):
        architectures.glow(hidden_channels=[8, 8, 8])


@pytest.mark.parametrize("build", [
    lambda: architectures.fc_flow("relative"),
    lambda: architectures.conv_flow("selfnorm", num_blocks=2, convs_per_block=1),
    lambda: architectures.conv_flow("exact", num_blocks=2, convs_per_block=1),
    lambda: architectures.conv_flow("emerging", num_blocks=2, convs_per_block=1),
    lambda: architectures.conv_flow("exponential", num_blocks=2, convs_per_block=1),
    lambda: architectures.glow("exact", steps_per_block=1, hidden_channels=8),
    lambda: architectures.glow("selfnorm", steps_per_block=1, hidden_channels=8, kernel_size=5),
])
@pytest.mark.slow
def test_each_architecture_trains_one_step_and_evaluates(build):
    import keras
    model = build()
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    x = _mnist_like(8)
    history = model.fit(x, batch_size=4, epochs=1, verbose=0).history
    assert np.isfinite(history["loss"][-1])
    result = model.evaluate(x, batch_size=8, verbose=0, return_dict=True)
    assert np.isfinite(result["nll"]) and result["bpd"] > 0


def test_bad_choices():
    with pytest.raises(ValueError, match="gradient"):
        architectures.fc_flow("approximate")
    with pytest.raises(ValueError, match="layer"):
        architectures.conv_flow("dense")
    with pytest.raises(ValueError, match="conv must be one of"):
        architectures.glow("emerging")
