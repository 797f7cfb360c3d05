"""snf_tf.experiments: the reference names and hyperparameters, overrides, full-size models."""

import pytest

from snf_tf import experiments
from snf_tf import layers as L

REFERENCE_NAMES = [
    "selfnorm_fc_mnist", "exact_fc_mnist", "relative_fc_mnist",
    "selfnorm_cnn_mnist", "exact_cnn_mnist", "emerging_cnn_mnist", "exponential_cnn_mnist",
    "conv1x1_glow_mnist", "selfnorm_glow_mnist", "conv1x1_glow_cifar", "selfnorm_glow_cifar",
    "conv1x1_glow_imagenet", "selfnorm_glow_imagenet", "geco_selfnorm_glow_mnist",
    "small_selfnorm_glow_mnist", "small_selfnorm_glow_fashion_mnist", "conditional_glow_mnist",
    "conditional_glow_fashion_mnist", "small_geco_glow_mnist", "snf_timescaling",
    "small_selfnorm3x3_glow_mnist", "small_conv1x1_glow_mnist", "small_exact3x3_glow_mnist",
]


def test_every_reference_name_is_registered():
    assert sorted(experiments.names()) == sorted(REFERENCE_NAMES)


def test_conditional_experiments_match_their_unconditional_controls():
    for dataset in ("mnist", "fashion_mnist"):
        conditional = experiments.config(f"conditional_glow_{dataset}")
        control = experiments.config(f"small_selfnorm_glow_{dataset}")
        assert conditional["model_kwargs"].pop("num_classes") == 10
        assert conditional["dataset"] == control["dataset"] == dataset
        strip = lambda cfg: {k: v for k, v in cfg.items() if k != "experiment"}  # noqa: E731
        assert strip(conditional) == strip(control)  # the same model size and training
        model = experiments.build_model(experiments.config(f"conditional_glow_{dataset}"))
        assert model.num_classes == 10


def test_the_recommended_geco_experiment_is_the_quick_start_size_with_geco():
    recommended = experiments.config("small_geco_glow_mnist")
    control = experiments.config("small_selfnorm_glow_mnist")
    assert recommended["model_kwargs"].pop("reconstruction_weight") == 1.0
    assert control["model_kwargs"].pop("reconstruction_weight") == 100.0
    assert (recommended["geco_rate"], control["geco_rate"]) == (experiments.GECO_RATE, None)
    assert recommended["guard_inverse_error"] is None  # healthy ‖RW − I‖ reaches 0.7 at λ = 1
    differ = {"experiment", "geco_rate", "guard_inverse_error"}
    assert {k: v for k, v in recommended.items() if k not in differ} == \
        {k: v for k, v in control.items() if k not in differ}


@pytest.mark.parametrize("name,expected", [
    ("selfnorm_fc_mnist", dict(learning_rate=1e-4, batch_size=100, warmup_epochs=10,
                               augment=False, epochs=6000)),
    ("exact_fc_mnist", dict(learning_rate=1e-4)),
    ("selfnorm_cnn_mnist", dict(learning_rate=1e-3, epochs=1000)),
    ("conv1x1_glow_mnist", dict(augment=False, epochs=250)),
    ("selfnorm_glow_mnist", dict(augment=True, epochs=250)),
    ("selfnorm_glow_cifar", dict(augment=True, clipnorm=10_000.0, warmup_epochs=10)),
    ("conv1x1_glow_imagenet", dict(batch_size=64, warmup_epochs=0, clipnorm=10_000.0,
                                   augment=False)),
    ("geco_selfnorm_glow_mnist", dict(geco_rate=1e-3, epochs=1000)),
    ("small_selfnorm_glow_mnist", dict(learning_rate=2e-3, warmup_epochs=1, augment=False,
                                       epochs=3, batch_size=100)),
    ("snf_timescaling", dict(batch_size=128, learning_rate=1e-4, epochs=10)),
])
def test_reference_hyperparameters(name, expected):
    cfg = experiments.config(name)
    assert {key: cfg[key] for key in expected} == expected


@pytest.mark.parametrize("name,weight", [
    ("selfnorm_glow_mnist", 100.0), ("selfnorm_glow_cifar", 1000.0),
    ("selfnorm_glow_imagenet", 1000.0), ("geco_selfnorm_glow_mnist", 1.0)])
def test_reference_reconstruction_weights(name, weight):
    assert experiments.config(name)["model_kwargs"]["reconstruction_weight"] == weight


def _count(model, kind):
    return sum(isinstance(layer, kind) for layer in model.flow_layers)


@pytest.mark.parametrize("name,shape,counts", [
    ("selfnorm_fc_mnist", (28, 28, 1), {L.SelfNormDense: 2, L.SmoothLeakyReLU: 1}),
    ("selfnorm_cnn_mnist", (28, 28, 1), {L.SelfNormConv2D: 9, L.SplineActivation: 8,
                                         L.Squeeze: 2}),
    ("emerging_cnn_mnist", (28, 28, 1), {L.EmergingConv2D: 9}),
    ("exponential_cnn_mnist", (28, 28, 1), {L.ConvExponential: 9}),
    ("conv1x1_glow_mnist", (28, 28, 1), {L.Conv1x1: 32, L.AffineCoupling: 32, L.SplitPrior: 1}),
    ("selfnorm_glow_mnist", (28, 28, 1), {L.SelfNormConv2D: 32, L.ActNorm: 32}),
    ("selfnorm_glow_cifar", (32, 32, 3), {L.SelfNormConv2D: 96, L.SplitPrior: 2}),
    ("conv1x1_glow_imagenet", (32, 32, 3), {L.Conv1x1: 144, L.SplitPrior: 2}),
    ("geco_selfnorm_glow_mnist", (28, 28, 1), {L.SelfNormConv2D: 8}),
])
@pytest.mark.slow
def test_full_size_models(name, shape, counts):
    model = experiments.build_model(experiments.config(name))
    model.build((None,) + shape)
    for kind, count in counts.items():
        assert _count(model, kind) == count, kind.__name__
    assert model.data_dimension == shape[0] * shape[1] * shape[2]


def test_glow_layer_details():
    model = experiments.build_model(experiments.config("geco_selfnorm_glow_mnist"))
    convs = [layer for layer in model.flow_layers if isinstance(layer, L.SelfNormConv2D)]
    assert {layer.kernel_size for layer in convs} == {5}
    cifar = experiments.build_model(experiments.config("selfnorm_glow_cifar"))
    cifar.build((None, 32, 32, 3))
    assert cifar.latent_shape == (4, 4, 48)  # 12×16² → 6 → 24×8² → 12 → 48×4²


def test_overrides_reach_settings_and_model_arguments():
    cfg = experiments.config("selfnorm_glow_mnist", epochs=3, hidden_channels=64,
                             learning_rate=5e-4, batch_size=None)
    assert cfg["epochs"] == 3 and cfg["learning_rate"] == 5e-4 and cfg["batch_size"] == 100
    assert cfg["model_kwargs"]["hidden_channels"] == 64
    model = experiments.build_model(cfg)
    couplings = [layer for layer in model.flow_layers if isinstance(layer, L.AffineCoupling)]
    assert couplings[0].hidden_channels == 64


def test_configs_are_fresh_dicts():
    first = experiments.config("selfnorm_glow_mnist")
    first["model_kwargs"]["hidden_channels"] = 7
    first["epochs"] = 1
    again = experiments.config("selfnorm_glow_mnist")
    assert again["model_kwargs"]["hidden_channels"] == 512 and again["epochs"] == 250


@pytest.mark.parametrize("text,expected", [
    ("hidden_channels=64", ("hidden_channels", 64)),
    ("learning_rate=1e-3", ("learning_rate", 1e-3)),
    ("augment=true", ("augment", True)), ("clipnorm=null", ("clipnorm", None)),
    ("layer=conv", ("layer", "conv"))])
def test_parse_override(text, expected):
    assert experiments.parse_override(text) == expected


@pytest.mark.parametrize("call,message", [
    (lambda: experiments.config("glow_svhn"), "unknown experiment 'glow_svhn'.*selfnorm_fc_mnist"),
    (lambda: experiments.config("selfnorm_fc_mnist", hidden_channels=8),
     "unknown setting 'hidden_channels'"),
    (lambda: experiments.config("selfnorm_fc_mnist", epochs=0), "epochs must be a positive"),
    (lambda: experiments.config("selfnorm_fc_mnist", batch_size=2.5), "batch_size"),
    (lambda: experiments.config("selfnorm_fc_mnist", learning_rate=-1.0), "learning_rate"),
    (lambda: experiments.config("selfnorm_fc_mnist", learning_rate=float("nan")),
     "learning_rate"),
    (lambda: experiments.config("selfnorm_fc_mnist", warmup_epochs=-1), "warmup_epochs"),
    (lambda: experiments.config("selfnorm_fc_mnist", adam_epsilon=0),
     "adam_epsilon must be a positive number"),
    (lambda: experiments.config("selfnorm_fc_mnist", adam_epsilon="1e-8"), "adam_epsilon"),
    (lambda: experiments.config("selfnorm_fc_mnist", augment="yes"), "augment"),
    (lambda: experiments.config("selfnorm_fc_mnist", jit_compile="always"), "jit_compile"),
    (lambda: experiments.config("selfnorm_fc_mnist", train_examples=0), "train_examples"),
    (lambda: experiments.config("selfnorm_fc_mnist", guard="on"), "guard must be true or false"),
    (lambda: experiments.config("selfnorm_fc_mnist", guard_val_jump=0), "guard_val_jump"),
    (lambda: experiments.config("selfnorm_fc_mnist", guard_lr_factor=2.0),
     r"guard_lr_factor must be a number in \(0, 1\]"),
    (lambda: experiments.config("selfnorm_fc_mnist", guard_lambda_factor=0.5),
     "guard_lambda_factor must be a number >= 1"),
    (lambda: experiments.config("selfnorm_fc_mnist", guard_max_rollbacks=1.5),
     "guard_max_rollbacks"),
    (lambda: experiments.config("selfnorm_glow_mnist", guard_inverse_error=-1),
     "guard_inverse_error"),
    (lambda: experiments.parse_override("epochs"), "key=value"),
    (lambda: experiments.build_model(experiments.config("selfnorm_fc_mnist", gradient="natural")),
     "gradient must be one of"),
    (lambda: experiments.build_model(experiments.config("snf_timescaling", layer="lstm")),
     "layer must be 'dense' or 'conv'"),
])
def test_bad_settings_are_named(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_timescaling_data_and_model():
    cfg = experiments.config("snf_timescaling", dimension=64, layer="conv", train_examples=256,
                             eval_examples=100)
    splits = experiments.datasets(cfg)
    batch = next(iter(splits["train"]))
    assert batch.shape == (128, 1, 64, 1)
    model = experiments.build_model(cfg)
    assert float(model.log_prob(batch[:4]).numpy().mean()) < 0


def test_null_turns_off_the_settings_that_may_be_off():
    cfg = experiments.config("geco_selfnorm_glow_mnist", geco_rate=None, epochs=None)
    assert cfg["geco_rate"] is None and cfg["epochs"] == 1000  # fixed λ; epochs left alone
    assert experiments.config("selfnorm_glow_cifar", clipnorm=None)["clipnorm"] is None
    assert experiments.config("selfnorm_glow_mnist",
                              guard_inverse_error=None)["guard_inverse_error"] is None


def test_the_guard_is_on_everywhere_and_checks_rw_in_glow_only():
    for name in experiments.names():
        cfg = experiments.config(name)
        assert cfg["guard"] is True and cfg["guard_val_jump"] == experiments.GUARD_VAL_JUMP
        # GECO runs: λ grows instead; k×k SNF convs: the bound was calibrated on 1×1 ones
        glow = cfg["model"] == "glow" and not cfg["geco_rate"] and \
            cfg["model_kwargs"].get("kernel_size", 1) == 1
        assert cfg["guard_inverse_error"] == (experiments.GLOW_INVERSE_ERROR if glow else None)
    assert experiments.config("selfnorm_fc_mnist", guard=False)["guard"] is False


def test_the_kxk_glow_study_models_differ_from_the_small_glow_only_in_their_convs():
    """The equal-time study's Glows: the small SNF Glow with 3×3 SNF convs, with exact 1×1
    convs, and with exact-gradient 3×3 convs; the same size and training otherwise."""
    control = experiments.config("small_selfnorm_glow_mnist")
    expected = {"small_selfnorm3x3_glow_mnist": ("selfnorm", 3),
                "small_conv1x1_glow_mnist": ("exact", 1),
                "small_exact3x3_glow_mnist": ("exact", 3)}
    for name, (conv, kernel) in expected.items():
        cfg = experiments.config(name)
        kwargs = dict(cfg["model_kwargs"])
        assert kwargs.pop("conv") == conv and kwargs.pop("kernel_size", 1) == kernel
        same = {k: v for k, v in control["model_kwargs"].items() if k not in ("conv",)}
        assert kwargs == same
        strip = lambda c: {k: v for k, v in c.items()  # noqa: E731
                           if k not in ("experiment", "model_kwargs", "guard_inverse_error")}
        assert strip(cfg) == strip(control)
        convs = [layer for layer in experiments.build_model(cfg).flow_layers
                 if isinstance(layer, (L.SelfNormConv2D, L.Conv1x1))]
        assert len(convs) == 8
        if conv == "exact" and kernel == 1:
            assert all(type(c) is L.Conv1x1 for c in convs)
        else:
            assert all(c.kernel_size == kernel for c in convs)
            assert all(c.gradient == ("exact" if conv == "exact" else "self_normalized")
                       for c in convs)
