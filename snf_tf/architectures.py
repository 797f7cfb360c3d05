"""The paper's architectures as ready-made ``FlowModel``s
(docs/paper.md: experiments, reference hyperparameters).

All models start with the common preprocessing of the reference (docs/paper.md: image pipeline):
uniform dequantization (one noise sample, also at evaluation, as the reference), ``x/256``, the
reference's logit pre-scaling ``(x + α)(1 − 2α)`` and a logit; their log-dets count in the
likelihood. So every model here takes pixel values in [0, 256) (``model.data_range``; uint8 images
or floats on that scale) and refuses others, and batches of images scaled to [0, 1]
(``docs/design.md``, "The data contract").
"""

from snf_tf import layers as L
from snf_tf.layers.base import check_positive_int
from snf_tf.model import FlowModel

__all__ = ["preprocessing", "fc_flow", "conv_flow", "glow", "CONV_LAYERS"]


def preprocessing(alpha=1e-6, seed=None, dtype=None):
    """Dequantize → /256 → (x + α)(1 − 2α) → logit, as flow layers."""
    kw = _dtype(dtype)
    return [L.Dequantize(always=True, seed=seed, **kw), L.Normalize(0.0, 256.0, **kw),
            L.Normalize.logit_prescaling(alpha, **kw), L.Logit(**kw)]


def _dtype(dtype):
    """The keyword every layer and the model of a builder get: ``dtype`` (a dtype or a policy
    such as ``"mixed_bfloat16"``) or nothing, so the global Keras policy applies. Under a mixed
    policy the flow stays float32 and the coupling networks compute in half precision
    (:attr:`snf_tf.layers.FlowLayer.network_dtype`)."""
    return {} if dtype is None else {"dtype": dtype}


def _per_block(value, num_blocks, what):
    """An int for every block, or a list/tuple with one int per block → a list of ``num_blocks``."""
    if isinstance(value, (list, tuple)):
        if len(value) != num_blocks:
            raise ValueError(f"{what} has {len(value)} entries for {num_blocks} blocks; give one "
                             f"number per block or a single number, got {list(value)!r}.")
        return [check_positive_int(v, what, "glow") for v in value]
    return [check_positive_int(value, what, "glow")] * num_blocks


def _check_choice(value, choices, what):
    if value not in choices:
        raise ValueError(f"{what} must be one of {tuple(choices)}, got {value!r}.")


def fc_flow(gradient="self_normalized", num_layers=2, alpha=0.3, reconstruction_weight=None,
            num_classes=None, seed=None, name="fc_flow", dtype=None):
    """FC flow of Table 1: Flatten, then ``num_layers`` square dense layers with Smooth Leaky ReLU
    (α = 0.3) between them. ``gradient``: ``"self_normalized"`` (SNF FC, λ = 1), ``"exact"`` (Exact
    Gradient FC) or ``"relative"`` (Relative Grad. FC, Gresele et al. 2020). ``num_classes``: a
    class-conditional variant whose base is the learned N(μ(y), σ(y)²) (the layers have no
    networks to condition: x → z is the same map for every class). ``dtype``: a dtype or Keras
    policy for every layer and the model (None: the global policy)."""
    _check_choice(gradient, ("self_normalized", "exact", "relative"), "gradient")
    num_layers = check_positive_int(num_layers, "num_layers", "fc_flow")
    if reconstruction_weight is None:
        reconstruction_weight = 1.0 if gradient == "self_normalized" else 0.0
    kw = _dtype(dtype)
    flow = preprocessing(seed=seed, dtype=dtype) + [L.Flatten(**kw)]
    for i in range(num_layers):
        if i:
            flow.append(L.SmoothLeakyReLU(alpha, **kw))
        flow.append(L.SelfNormDense(gradient=gradient, reconstruction_weight=reconstruction_weight,
                                    **kw))
    return FlowModel(flow, num_classes=num_classes, name=name, **kw)


CONV_LAYERS = ("selfnorm", "exact", "emerging", "exponential")


def _conv_layer(kind, reconstruction_weight, kw):
    if kind == "selfnorm":
        return L.SelfNormConv2D(3, reconstruction_weight=reconstruction_weight, **kw)
    if kind == "exact":
        return L.SelfNormConv2D(3, gradient="exact", reconstruction_weight=0.0, **kw)
    if kind == "emerging":
        return L.EmergingConv2D(**kw)
    return L.ConvExponential(**kw)


def conv_flow(layer="selfnorm", num_blocks=3, convs_per_block=3, reconstruction_weight=1.0,
              num_classes=None, seed=None, name="conv_flow", dtype=None):
    """Conv flow of Table 1: ``num_blocks`` blocks of ``convs_per_block`` C→C 3×3 flow convs with a
    per-element spline activation after every conv but the last, and a Squeeze between blocks
    (MNIST: 1×28² → 4×14² → 16×7²). ``layer``: ``"selfnorm"`` (SNF Conv), ``"exact"`` (Exact
    Gradient Conv), ``"emerging"`` (Hoogeboom et al. 2019) or ``"exponential"`` (Conv. Exponential,
    Hoogeboom et al. 2020). ``num_classes``: class-conditional through the learned base only, as
    :func:`fc_flow`; ``dtype`` as in :func:`fc_flow`."""
    _check_choice(layer, CONV_LAYERS, "layer")
    num_blocks = check_positive_int(num_blocks, "num_blocks", "conv_flow")
    convs_per_block = check_positive_int(convs_per_block, "convs_per_block", "conv_flow")
    kw = _dtype(dtype)
    flow = preprocessing(seed=seed, dtype=dtype)
    total = num_blocks * convs_per_block
    for i in range(total):
        if i and i % convs_per_block == 0:
            flow.append(L.Squeeze(**kw))
        flow.append(_conv_layer(layer, reconstruction_weight, kw))
        if i < total - 1:
            flow.append(L.SplineActivation(**kw))
    return FlowModel(flow, num_classes=num_classes, name=name, **kw)


def _glow_conv(conv, kernel_size, reconstruction_weight, kw):
    """The invertible convolution of a Glow step."""
    if conv == "selfnorm":
        return L.SelfNormConv2D(kernel_size, reconstruction_weight=reconstruction_weight, **kw)
    if kernel_size == 1:
        return L.Conv1x1(**kw)  # Glow's own: QR log-det, matrix inverse
    return L.SelfNormConv2D(kernel_size, gradient="exact", reconstruction_weight=0.0, **kw)


def glow(conv="selfnorm", num_blocks=2, steps_per_block=16, hidden_channels=512, kernel_size=1,
         reconstruction_weight=100.0, split_hidden_channels=None, num_classes=None,
         context_dim=None, seed=None, name="glow", dtype=None):
    """Glow of Table 1 / Table 2: per block a Squeeze, then ``steps_per_block`` steps
    [ActNorm, invertible conv, affine coupling], and a SplitPrior after every block but the last.

    ``conv="selfnorm"``: ``SelfNormConv2D(kernel_size)`` (SNF Glow; λ = 100 on MNIST, 1000 on
    CIFAR-10/ImageNet32); ``conv="exact"``: the exact Glow 1×1 conv (``Conv1x1``), or for
    ``kernel_size`` k > 1 a k×k conv trained with the exact gradient
    (``SelfNormConv2D(k, gradient="exact")``: a slogdet of the conv's matrix every step). MNIST uses
    2 blocks × 16 steps, CIFAR-10 3 × 32, ImageNet32 3 × 48; the GECO model 2 × 4 with 5×5 SNF
    convs and width 16. ``steps_per_block`` and ``hidden_channels`` are one number for every block
    or a list with one entry per block (e.g. ``[2, 8]``: fewer steps at full resolution, more at the
    coarse level, where a step is 4× cheaper); ``split_hidden_channels`` defaults to the first
    block's width.

    Conditional Glow ``p(x | y)``: ``num_classes=K`` (integer labels) or ``context_dim=d`` (real
    vectors) makes every coupling and SplitPrior conditional (a learned embedding of y added in
    their networks) and the base a learned ``N(μ(y), σ(y)²)``; the linear layers (SNF or exact
    1×1 convs) and ActNorm do not see y.

    ``dtype`` as in :func:`fc_flow`: under ``"mixed_bfloat16"`` / ``"mixed_float16"`` the
    couplings' networks (most of a Glow step's work) compute in half precision.
    """
    _check_choice(conv, ("selfnorm", "exact"), "conv")
    kernel_size = check_positive_int(kernel_size, "kernel_size", "glow")
    if kernel_size % 2 == 0:
        raise ValueError(f"glow: kernel_size must be odd ('same' convolutions), got {kernel_size}.")
    num_blocks = check_positive_int(num_blocks, "num_blocks", "glow")
    steps = _per_block(steps_per_block, num_blocks, "steps_per_block")
    widths = _per_block(hidden_channels, num_blocks, "hidden_channels")
    split_hidden_channels = check_positive_int(split_hidden_channels or widths[0],
                                               "split_hidden_channels", "glow")
    if num_classes is not None and context_dim is not None:
        raise ValueError("glow: give num_classes (integer labels) or context_dim (real vectors), "
                         "not both.")
    width = num_classes or context_dim
    kw = _dtype(dtype)
    flow = preprocessing(seed=seed, dtype=dtype)
    for block in range(num_blocks):
        flow.append(L.Squeeze(**kw))
        for _ in range(steps[block]):
            flow.append(L.ActNorm(**kw))
            flow.append(_glow_conv(conv, kernel_size, reconstruction_weight, kw))
            flow.append(L.AffineCoupling(widths[block], context_dim=width, **kw))
        if block < num_blocks - 1:
            flow.append(L.SplitPrior(split_hidden_channels, context_dim=width, **kw))
    return FlowModel(flow, num_classes=num_classes, context_dim=context_dim, name=name, **kw)
