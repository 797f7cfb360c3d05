"""The paper's experiments by name, with the reference hyperparameters
(docs/paper.md: results, datasets).

Each :class:`Experiment` is a frozen record: dataset, model builder and its arguments, training
hyperparameters, and the number the paper reports for it. :func:`config` turns one into a plain
``dict`` with overrides applied — a fresh dict every call, so runs in one process never share state
(the reference's module-level ``default_config`` leaked between experiments, docs/paper.md:
re-implementation notes). :func:`build_model` and :func:`datasets` give the model and the
train/validation/test pipelines; :func:`snf_tf.training.run` trains one and writes its run folder.

>>> cfg = config("selfnorm_cnn_mnist", epochs=5)
>>> model = build_model(cfg)
"""

import dataclasses
import json
import types

import numpy as np

__all__ = ["EXPERIMENTS", "Experiment", "GECO_RATE", "GLOW_INVERSE_ERROR", "GUARD_VAL_JUMP",
           "NULLABLE", "build_model", "config", "datasets", "get", "names", "parse_duration",
           "parse_override", "setting_names"]

_MNIST_EVAL = 500
#: a validation NLL more than 10 % above the last good epoch's is a collapse
GUARD_VAL_JUMP = 0.1
#: ‖RW − I‖_F above this is a collapse in SNF Glow (healthy runs here stay below 0.05 at
#: λ = 100; the collapsed one reached 0.28). Other models are not checked: the FC flow at λ = 1
#: trains well past ‖RW − I‖_F = 3
GLOW_INVERSE_ERROR = 0.2


@dataclasses.dataclass(frozen=True)
class Experiment:
    """One reference experiment (docs/paper.md: experiments)."""

    name: str
    description: str
    dataset: str
    model: str                      # a builder of snf_tf.architectures, or "single_layer"
    model_kwargs: types.MappingProxyType
    paper: str                      # what the paper reports, in words
    paper_value: float = None       # the same number (nats for MNIST, bits/dim otherwise)
    paper_unit: str = "nats"
    paper_epochs: int = None
    learning_rate: float = 1e-3
    batch_size: int = 100
    eval_batch_size: int = _MNIST_EVAL
    warmup_epochs: int = 10
    augment: bool = False
    clipnorm: float = None
    geco_rate: float = None
    guard_inverse_error: float = None

    def defaults(self):
        """The reference config as a fresh, JSON-serialisable dict."""
        return {
            "experiment": self.name, "dataset": self.dataset, "model": self.model,
            "model_kwargs": dict(self.model_kwargs), "learning_rate": self.learning_rate,
            "batch_size": self.batch_size, "eval_batch_size": self.eval_batch_size,
            "epochs": self.paper_epochs or 10, "warmup_epochs": self.warmup_epochs,
            "augment": self.augment, "clipnorm": self.clipnorm, "geco_rate": self.geco_rate,
            # Keras's default; Keras adds ε to √v before the bias correction, PyTorch (the
            # reference, 1e-8) after it, so Keras's ε acts as ε/√(1 − β₂ᵗ) in PyTorch's terms
            "adam_epsilon": 1e-7,
            "seed": 0, "train_examples": None, "eval_examples": None, "jit_compile": "auto",
            # training to a time budget (seconds of training steps) and exact evaluation every
            # N steps (None: off)
            "time_budget": None, "eval_every_steps": None,
            # the collapse guard (snf_tf.callbacks.CollapseGuard)
            "guard": True, "guard_val_jump": GUARD_VAL_JUMP,
            "guard_inverse_error": self.guard_inverse_error, "guard_lr_factor": 0.5,
            "guard_lambda_factor": 10.0,
            "guard_max_rollbacks": 3,
        }


def _experiment(name, description, dataset, model, paper, paper_value=None, **kwargs):
    model_kwargs = types.MappingProxyType(kwargs.pop("model_kwargs", {}))
    return Experiment(name, description, dataset, model, model_kwargs, paper, paper_value,
                      **kwargs)


def _fc(gradient, paper, value):
    prefix = "selfnorm" if gradient == "self_normalized" else gradient
    return _experiment(
        f"{prefix}_fc_mnist", f"2-layer FC flow on MNIST, {gradient.replace('_', '-')} gradient",
        "mnist", "fc_flow", paper, value, model_kwargs={"gradient": gradient}, learning_rate=1e-4,
        paper_epochs=6000)


def _cnn(layer, label, paper, value):
    return _experiment(f"{layer}_cnn_mnist", f"9-layer conv flow on MNIST, {label}", "mnist",
                       "conv_flow", paper, value, model_kwargs={"layer": layer},
                       paper_epochs=1000)


def _glow(dataset, conv, paper, value, **kwargs):
    short = {"mnist": "mnist", "cifar10": "cifar", "downsampled_imagenet/32x32": "imagenet"}
    prefix = "selfnorm" if conv == "selfnorm" else "conv1x1"
    label = "SNF 1×1 convs" if conv == "selfnorm" else "exact 1×1 convs (Glow)"
    return _experiment(f"{prefix}_glow_{short[dataset]}", f"Glow on {dataset}, {label}", dataset,
                       "glow", paper, value, guard_inverse_error=GLOW_INVERSE_ERROR, **kwargs)


#: GECO's rate in the recommended SNF training (RESULTS.md, "SNF collapse study")
GECO_RATE = 1e-3


def _small_glow(dataset, description, paper, num_classes=None, geco=False, conv="selfnorm",
                kernel_size=1):
    """The CPU-sized SNF Glow of the quick start (2×4 steps, width 64, λ = 100, lr 2e-3 after a
    1-epoch warm-up, 3 epochs), unconditional or class-conditional; with ``geco``, λ starts at 1
    and GECO adapts it (the guard then leaves ‖RW − I‖ alone: at λ = 1 healthy runs reach 0.7
    and GECO, not a rollback, brings a drift back). ``conv``/``kernel_size``: the step's
    invertible convolution (:func:`snf_tf.architectures.glow`)."""
    kwargs = {"conv": conv, "num_blocks": 2, "steps_per_block": 4, "hidden_channels": 64,
              "reconstruction_weight": 1.0 if geco else 100.0}
    prefix = "small_geco" if geco else "small_selfnorm"
    if num_classes:
        kwargs["num_classes"], prefix = num_classes, "conditional"
    if kernel_size != 1:
        kwargs["kernel_size"] = kernel_size
    if conv == "exact":
        prefix = "small_conv1x1" if kernel_size == 1 else f"small_exact{kernel_size}x{kernel_size}"
    elif kernel_size != 1:
        prefix += f"{kernel_size}x{kernel_size}"
    kind = {("selfnorm", 1): "SNF 1×1 convs", ("exact", 1): "exact 1×1 convs"}.get(
        (conv, kernel_size), f"{'SNF' if conv == 'selfnorm' else 'exact-gradient'} "
        f"{kernel_size}×{kernel_size} convs")
    return _experiment(
        f"{prefix}_glow_{dataset}", f"small {'SNF ' if conv == 'selfnorm' else ''}Glow (2×4 "
        f"steps, width 64, {kind}) on " + description, dataset, "glow", paper, None,
        model_kwargs=kwargs, learning_rate=2e-3, warmup_epochs=1, paper_epochs=3,
        geco_rate=GECO_RATE if geco else None,
        # the ‖RW − I‖ bound was calibrated on 1×1 SNF convs; k×k ones start above it
        guard_inverse_error=None if geco or kernel_size != 1 else GLOW_INVERSE_ERROR)


_GLOW_MNIST = {"num_blocks": 2, "steps_per_block": 16, "hidden_channels": 512}
_GLOW_CIFAR = {"num_blocks": 3, "steps_per_block": 32, "hidden_channels": 512}
_GLOW_IMAGENET = {"num_blocks": 3, "steps_per_block": 48, "hidden_channels": 512}
_BIG = {"eval_batch_size": 200, "paper_unit": "bits/dim"}

EXPERIMENTS = {e.name: e for e in (
    _fc("self_normalized", "947.1 ± 0.2 nats (Table 1)", 947.1),
    _fc("exact", "947.6 ± 0.2 nats (Table 1)", 947.6),
    _fc("relative", "1096.5 ± 0.5 nats (Table 1; SNF authors' re-implementation)", 1096.5),
    _cnn("selfnorm", "SNF 3×3 convs", "638.6 ± 0.9 nats (Table 1)", 638.6),
    _cnn("exact", "exact-gradient 3×3 convs", "637.4 ± 0.2 nats (Table 1)", 637.4),
    _cnn("emerging", "Emerging convs (Hoogeboom et al. 2019)", "645.7 ± 3.6 nats (Table 1)",
         645.7),
    _cnn("exponential", "Convolution Exponentials (Hoogeboom et al. 2020)",
         "638.1 ± 1.0 nats (Table 1)", 638.1),
    _glow("mnist", "exact", "575.7 ± 0.8 nats (Table 1)", 575.7,
          model_kwargs=dict(_GLOW_MNIST, conv="exact"), paper_epochs=250),
    _glow("mnist", "selfnorm", "575.4 ± 1.4 nats (Table 1)", 575.4,
          model_kwargs=dict(_GLOW_MNIST, conv="selfnorm", reconstruction_weight=100.0),
          paper_epochs=250, augment=True),
    _glow("cifar10", "exact", "3.36 ± 0.002 bits/dim (ICML Table 2)", 3.36,
          model_kwargs=dict(_GLOW_CIFAR, conv="exact"), augment=True, **_BIG),
    _glow("cifar10", "selfnorm", "3.37 ± 0.004 bits/dim (ICML Table 2)", 3.37,
          model_kwargs=dict(_GLOW_CIFAR, conv="selfnorm", reconstruction_weight=1000.0),
          augment=True, clipnorm=10_000.0, **_BIG),
    _glow("downsampled_imagenet/32x32", "exact", "4.12 ± 0.002 bits/dim (ICML Table 2)", 4.12,
          model_kwargs=dict(_GLOW_IMAGENET, conv="exact"), batch_size=64, warmup_epochs=0,
          clipnorm=10_000.0, **_BIG),
    _glow("downsampled_imagenet/32x32", "selfnorm", "4.14 ± 0.007 bits/dim (ICML Table 2)", 4.14,
          model_kwargs=dict(_GLOW_IMAGENET, conv="selfnorm", reconstruction_weight=1000.0),
          batch_size=64, warmup_epochs=0, clipnorm=10_000.0, **_BIG),
    _experiment(
        "geco_selfnorm_glow_mnist", "small SNF Glow (2×4 steps, 5×5 convs, width 16) on MNIST "
        "with GECO-adapted λ", "mnist", "glow",
        "Table A.5 (GECO on MNIST); its values are not at hand", None,
        model_kwargs={"conv": "selfnorm", "num_blocks": 2, "steps_per_block": 4,
                      "hidden_channels": 16, "split_hidden_channels": 16, "kernel_size": 5,
                      "reconstruction_weight": 1.0},
        geco_rate=GECO_RATE, paper_epochs=1000),
    _small_glow("mnist", "MNIST, 3 epochs in about 4 minutes on 2 CPU cores (the unconditional "
                "control of conditional_glow_mnist, the quick start's model)",
                "not in the paper: a reduced selfnorm_glow_mnist"),
    _small_glow("fashion_mnist", "Fashion-MNIST (the unconditional control of "
                "conditional_glow_fashion_mnist)", "not in the paper"),
    _small_glow("mnist", "MNIST with λ₀ = 1 and GECO-adapted λ: the recommended SNF training "
                "(RESULTS.md, \"SNF collapse study\")", "not in the paper: "
                "small_selfnorm_glow_mnist with GECO (Table A.5's remedy)", geco=True),
    _small_glow("mnist", "MNIST, class-conditional p(x | y): the quick start's model, 3 epochs in "
                "about 4 minutes on 2 CPU cores", "not in the paper: class-conditional SNF Glow "
                "(conditional couplings, split and base)", 10),
    _small_glow("fashion_mnist", "Fashion-MNIST, class-conditional p(x | y)", "not in the "
                "paper: class-conditional SNF Glow (conditional couplings, split and base)", 10),
    # the equal-time study of an architecture only SNF affords: k×k mixing convolutions
    _small_glow("mnist", "MNIST: 3×3 mixing convolutions, which only the self-normalized "
                "gradient makes affordable", "not in the paper: small_selfnorm_glow_mnist with "
                "3×3 SNF convs", kernel_size=3),
    _small_glow("mnist", "MNIST: the exact 1×1 Glow at the small SNF Glow's size", "not in the "
                "paper: a reduced conv1x1_glow_mnist", conv="exact"),
    _small_glow("mnist", "MNIST: 3×3 convs trained with the exact gradient (what the 3×3 SNF "
                "Glow would cost without SNF)", "not in the paper: the exact-gradient cost of "
                "small_selfnorm3x3_glow_mnist", conv="exact", kernel_size=3),
    _experiment(
        "snf_timescaling", "one SNF (or exact) layer on N(0, 1) data of dimension D: time per "
        "batch vs D (Fig. 4; `snf-tf bench scaling` runs the sweep)", "normal", "single_layer",
        "Fig. 4: exact ≈ 137 vs SNF ≈ 34 ms/batch at D ≈ 4000 (workshop figure, read off)", None,
        paper_unit="ms/batch",
        model_kwargs={"layer": "dense", "dimension": 1024, "gradient": "self_normalized"},
        learning_rate=1e-4, batch_size=128, eval_batch_size=500, paper_epochs=10),
)}


def names():
    """The experiment names, in the paper's order."""
    return list(EXPERIMENTS)


def get(name):
    """The :class:`Experiment` called ``name`` (``ValueError`` listing the names otherwise)."""
    if name not in EXPERIMENTS:
        raise ValueError(f"unknown experiment {name!r}; choose one of: {', '.join(EXPERIMENTS)}")
    return EXPERIMENTS[name]


def parse_override(text):
    """``"key=value"`` → ``(key, value)``, the value read as JSON when it parses (``64``, ``1e-3``,
    ``true``, ``null``) and as a string otherwise."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise ValueError(f"an override must look like key=value, got {text!r}")
    try:
        return key.strip(), json.loads(value)
    except json.JSONDecodeError:
        return key.strip(), value


#: settings for which ``None`` (JSON ``null``) is a value: off, or no limit
NULLABLE = ("clipnorm", "geco_rate", "guard_val_jump", "guard_inverse_error", "train_examples",
            "eval_examples", "time_budget", "eval_every_steps")
_POSITIVE_INTS = ("batch_size", "eval_batch_size", "epochs")
_OPTIONAL_POSITIVE_INTS = ("train_examples", "eval_examples", "eval_every_steps")
_DURATION_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(text):
    """Seconds of ``"90s"``, ``"30m"``, ``"2h"``, ``"1.5h"`` or a plain number of seconds;
    ``ValueError`` for anything else or a duration that is not a finite number > 0."""
    value = str(text).strip().lower()
    scale = _DURATION_UNITS.get(value[-1:], None)
    number = value[:-1] if scale else value
    try:
        seconds = float(number) * (scale or 1.0)
    except ValueError:
        raise ValueError(f"a duration must look like 90s, 30m, 2h or a number of seconds, got "
                         f"{text!r}") from None
    if not np.isfinite(seconds) or seconds <= 0:
        raise ValueError(f"a duration must be a finite time > 0, got {text!r}")
    return seconds


def config(name, **overrides):
    """The reference config of ``name`` with ``overrides`` applied, checked.

    Keys of the top level (``epochs``, ``batch_size``, ``learning_rate``, …) and of
    ``model_kwargs`` (``hidden_channels``, ``steps_per_block``, …) can both be overridden by name.
    ``None`` values leave the default, except for the settings that may be off
    (:data:`NULLABLE`: ``geco_rate=None`` trains with a fixed λ, ``clipnorm=None`` without
    clipping). Unknown keys and bad values raise ``ValueError``.
    """
    cfg = get(name).defaults()
    for key, value in overrides.items():
        if value is None and key not in NULLABLE:
            continue
        if key in cfg and key not in ("experiment", "dataset", "model", "model_kwargs"):
            cfg[key] = value
        elif key in _model_arguments(cfg):
            cfg["model_kwargs"][key] = value
        else:
            known = sorted(set(cfg) - {"experiment", "dataset", "model", "model_kwargs"})
            raise ValueError(
                f"{name}: unknown setting {key!r}; settings: {', '.join(known)}; model "
                f"arguments: {', '.join(sorted(_model_arguments(cfg)))}")
    _check(cfg)
    return cfg


def setting_names(name):
    """Every name :func:`config` accepts for experiment ``name``: its top-level settings and
    the arguments of its model builder."""
    cfg = get(name).defaults()
    return (set(cfg) - {"experiment", "dataset", "model", "model_kwargs"}) | _model_arguments(cfg)


def _model_arguments(cfg):
    import inspect

    if cfg["model"] == "single_layer":
        return {"layer", "dimension", "gradient"}
    from snf_tf import architectures

    parameters = inspect.signature(getattr(architectures, cfg["model"])).parameters
    return set(parameters) - {"seed", "name"}


def _check(cfg):
    name = cfg["experiment"]
    for key in _POSITIVE_INTS + _OPTIONAL_POSITIVE_INTS:
        value = cfg[key]
        if value is None and key in _OPTIONAL_POSITIVE_INTS:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name}: {key} must be a positive integer, got {value!r}")
    if cfg["warmup_epochs"] is None or isinstance(cfg["warmup_epochs"], bool) or \
            not isinstance(cfg["warmup_epochs"], int) or cfg["warmup_epochs"] < 0:
        raise ValueError(f"{name}: warmup_epochs must be an integer >= 0, "
                         f"got {cfg['warmup_epochs']!r}")
    for key in ("learning_rate", "clipnorm", "geco_rate", "adam_epsilon", "time_budget"):
        value = cfg[key]
        if value is None and key in NULLABLE:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or \
                not np.isfinite(value) or value <= 0:
            raise ValueError(f"{name}: {key} must be a positive number, got {value!r}")
    if not isinstance(cfg["seed"], int) or isinstance(cfg["seed"], bool):
        raise ValueError(f"{name}: seed must be an integer, got {cfg['seed']!r}")
    if cfg["jit_compile"] not in ("auto", True, False):
        raise ValueError(f"{name}: jit_compile must be auto, true or false, "
                         f"got {cfg['jit_compile']!r}")
    for key in ("augment", "guard"):
        if not isinstance(cfg[key], bool):
            raise ValueError(f"{name}: {key} must be true or false, got {cfg[key]!r}")
    from snf_tf.experiments.guard import check_settings

    check_settings(name, "guard_", **{key: cfg[f"guard_{key}"] for key in (
        "val_jump", "inverse_error", "lr_factor", "max_rollbacks", "lambda_factor")})


def build_model(cfg):
    """The (unbuilt) ``FlowModel`` of a config."""
    from snf_tf import architectures

    kwargs = dict(cfg["model_kwargs"])
    if cfg["model"] == "single_layer":
        return _single_layer(seed=cfg["seed"], **kwargs)
    try:
        builder = getattr(architectures, cfg["model"])
        return builder(seed=cfg["seed"], name=cfg["experiment"], **kwargs)
    except TypeError as error:  # a model argument of the wrong kind
        raise ValueError(f"{cfg['experiment']}: bad model arguments {kwargs}: {error}") from None


def _single_layer(layer="dense", dimension=1024, gradient="self_normalized", seed=None):
    """The timing experiment's model: one SNF/exact dense layer on ``[D]`` inputs, or one 3×3
    conv on ``[1, D, 1]`` inputs (the reference's shape), with a standard-normal base."""
    from snf_tf import layers as L
    from snf_tf.model import FlowModel

    if layer not in ("dense", "conv"):
        raise ValueError(f"snf_timescaling: layer must be 'dense' or 'conv', got {layer!r}")
    if gradient not in ("self_normalized", "exact"):
        raise ValueError(f"snf_timescaling: gradient must be 'self_normalized' or 'exact', "
                         f"got {gradient!r}")
    weight = 1.0 if gradient == "self_normalized" else 0.0
    flow = (L.SelfNormDense(gradient=gradient, reconstruction_weight=weight) if layer == "dense"
            else L.SelfNormConv2D(3, gradient=gradient, reconstruction_weight=weight))
    return FlowModel([flow], name="snf_timescaling")


def _normal_data(cfg):
    """The timing experiment's data: N(0, 1) samples (49 900 for training, as the reference)."""
    import tensorflow as tf

    kwargs = cfg["model_kwargs"]
    dimension = int(kwargs.get("dimension", 1024))
    if dimension < 1:
        raise ValueError(f"snf_timescaling: dimension must be positive, got {dimension}")
    shape = (dimension,) if kwargs.get("layer", "dense") == "dense" else (1, dimension, 1)
    rng = np.random.default_rng(cfg["seed"])
    sizes = {"train": cfg["train_examples"] or 49_900, "validation": cfg["eval_examples"] or 1000,
             "test": cfg["eval_examples"] or 1000}
    out = {}
    for split, n in sizes.items():
        x = rng.standard_normal((n,) + shape).astype(np.float32)
        batch = cfg["batch_size"] if split == "train" else cfg["eval_batch_size"]
        out[split] = tf.data.Dataset.from_tensor_slices(x).batch(batch).prefetch(2)
    return out


def datasets(cfg, data_dir=None):
    """``{"train", "validation", "test"}`` pipelines of a config (the paper's splits; the first
    ``train_examples`` / ``eval_examples`` of each when those are set)."""
    from snf_tf import data

    if cfg["dataset"] == "normal":
        return _normal_data(cfg)
    out = {}
    for split in ("train", "validation", "test"):
        train = split == "train"
        out[split] = data.load(
            cfg["dataset"], split, cfg["batch_size"] if train else cfg["eval_batch_size"],
            augment=cfg["augment"] and train, data_dir=data_dir, seed=cfg["seed"],
            limit=cfg["train_examples"] if train else cfg["eval_examples"],
            labels=cfg["model_kwargs"].get("num_classes") is not None)
    return out
