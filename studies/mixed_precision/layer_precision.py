"""What half precision breaks, layer by layer: the measurement behind snf_tf's mixed precision.

For each flow layer (MNIST-sized shapes, weights moved off their init) the same batch through:

- ``float32``: the round-trip error ``max|f⁻¹(f(x)) − x|`` and the log-det;
- ``mixed_bfloat16`` with the same weights, as snf_tf runs it (the flow in float32, only the
  sub-networks in bfloat16): the round-trip error, and how far z and the log-det move from the
  float32 numbers (a coupling's network computes a slightly different function; the flow stays
  exactly invertible and its log-det exact for that function);
- a bfloat16 *data path*, what a layer computing in the policy's dtype would give: z and the
  log-det rounded to bfloat16 (the round-trip error of inverting the rounded z; the log-det's
  error in nats), and for learned inverses ‖RW − I‖_F with W and R rounded to bfloat16.

    python studies/mixed_precision/layer_precision.py --out DIR

writes ``DIR/layer_precision.json`` and ``layer_precision.png`` and prints the table.
"""

import argparse
import json
import os
import platform
import time

import keras
import numpy as np
import tensorflow as tf

import snf_tf.layers as L

#: (label, make(dtype), per-example shape, inputs)
LAYERS = [
    ("SelfNormDense D=784", lambda d: L.SelfNormDense(dtype=d), (784,), "normal"),
    ("SelfNormConv2D 3×3", lambda d: L.SelfNormConv2D(3, dtype=d), (14, 14, 4), "normal"),
    ("SelfNormConv2D 1×1", lambda d: L.SelfNormConv2D(1, dtype=d), (14, 14, 4), "normal"),
    ("Conv1x1 (exact)", lambda d: L.Conv1x1(dtype=d), (14, 14, 4), "normal"),
    ("ActNorm", lambda d: L.ActNorm(dtype=d), (14, 14, 4), "normal"),
    ("AffineCoupling w=512", lambda d: L.AffineCoupling(512, dtype=d), (14, 14, 4), "normal"),
    ("AffineCoupling w=64, cond.", lambda d: L.AffineCoupling(64, context_dim=10, dtype=d),
     (14, 14, 4), "normal"),
    ("SplitPrior w=64", lambda d: L.SplitPrior(64, dtype=d), (14, 14, 4), "normal"),
    ("EmergingConv2D", lambda d: L.EmergingConv2D(dtype=d), (14, 14, 4), "normal"),
    ("ConvExponential", lambda d: L.ConvExponential(dtype=d), (14, 14, 4), "normal"),
    ("SplineActivation", lambda d: L.SplineActivation(dtype=d), (14, 14, 4), "wide"),
    ("SmoothLeakyReLU", lambda d: L.SmoothLeakyReLU(dtype=d), (784,), "normal"),
    ("RealNVPCoupling (64,)", lambda d: L.RealNVPCoupling((64,), dtype=d), (784,), "normal"),
    ("Logit", lambda d: L.Logit(dtype=d), (28, 28, 1), "unit"),
]


def _inputs(kind, shape, batch=16, seed=0):
    rng = np.random.default_rng(seed)
    if kind == "unit":
        return rng.uniform(0.01, 0.99, (batch,) + shape).astype("float32")
    scale = 3.0 if kind == "wide" else 1.0
    return (scale * rng.standard_normal((batch,) + shape)).astype("float32")


def _to_bf16(values):
    return tf.cast(tf.cast(values, tf.bfloat16), tf.float32)


def _round_trip(layer, x, z, context):
    if isinstance(layer, L.SplitPrior):
        return layer.merge(z, layer.split(x, **context)[1], **context)
    return layer.inverse(z, exact=True, **context)


def measure(label, make, shape, kind):
    x = _inputs(kind, shape)
    layer = make("float32")
    context = {}
    if layer.uses_context:
        context = {"context": np.eye(layer.context_dim, dtype="float32")[np.arange(len(x)) % 10]}
    layer.forward(x, training=True, **context)  # build, ActNorm's data-dependent init
    rng = np.random.default_rng(1)
    for w in layer.trainable_weights:  # off the init (zero-initialised convs, identities)
        w.assign(w.numpy() + 0.05 * rng.standard_normal(w.shape).astype("float32"))
    z, log_det = layer.forward(x, exact=True, **context)
    row = {"layer": label, "shape": list(shape),
           "float32_round_trip": float(np.abs(_round_trip(layer, x, z, context) - x).max()),
           "log_det_mean": float(np.mean(log_det))}

    mixed = make("mixed_bfloat16")
    mixed.forward(x, training=True, **context)
    mixed.set_weights(layer.get_weights())
    z_mixed, log_det_mixed = mixed.forward(x, exact=True, **context)
    row.update(
        mixed_round_trip=float(np.abs(_round_trip(mixed, x, z_mixed, context) - x).max()),
        mixed_z_change=float(np.abs(z_mixed - z).max()),
        mixed_log_det_change=float(np.abs(log_det_mixed - log_det).max()),
        half_precision_work=any(not isinstance(sub, L.FlowLayer)
                                for sub in mixed._flatten_layers(include_self=False)))

    z_half = _to_bf16(z)
    row.update(
        bf16_path_round_trip=float(np.abs(_round_trip(layer, x, z_half, context) - x).max()),
        bf16_path_log_det_error=float(np.abs(_to_bf16(log_det) - log_det).max()))
    if layer.learns_inverse:
        row["inverse_error_float32"] = float(layer.inverse_error())
        exact = layer.inverse_kernel.numpy()  # R = W⁻¹ first: the floor that rounding alone sets
        kernel = layer.kernel.numpy()
        if kernel.ndim == 2:
            exact = np.linalg.inv(kernel.astype("float64")).astype("float32")
            layer.inverse_kernel.assign(exact)
            row["inverse_error_exact_r"] = float(layer.inverse_error())
            layer.kernel.assign(_to_bf16(kernel))
            layer.inverse_kernel.assign(_to_bf16(exact))
            row["inverse_error_bf16_weights"] = float(layer.inverse_error())
    return row


def _plot(rows, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    y = np.arange(len(rows))
    fig, ax = plt.subplots(figsize=(9, 5.5))
    for offset, key, name in ((-0.27, "float32_round_trip", "float32"),
                              (0.0, "mixed_round_trip", "mixed_bfloat16 (snf_tf)"),
                              (0.27, "bf16_path_round_trip", "bfloat16 data path")):
        ax.barh(y + offset, [max(r[key], 1e-9) for r in rows], 0.27, label=name)
    ax.set_xscale("log")
    ax.set_yticks(y, [r["layer"] for r in rows])
    ax.invert_yaxis()
    ax.set_xlabel("max |f⁻¹(f(x)) − x| (one batch of 16)")
    ax.grid(alpha=0.3, axis="x")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results"))
    args = parser.parse_args(argv)
    keras.utils.set_random_seed(0)
    rows = [measure(*spec) for spec in LAYERS]
    print(f"{'layer':28s} {'f32 trip':>9s} {'mixed trip':>10s} {'Δlogdet mix':>11s} "
          f"{'bf16 trip':>9s} {'bf16 Δlogdet':>12s}")
    for r in rows:
        print(f"{r['layer']:28s} {r['float32_round_trip']:9.1e} {r['mixed_round_trip']:10.1e} "
              f"{r['mixed_log_det_change']:11.1e} {r['bf16_path_round_trip']:9.1e} "
              f"{r['bf16_path_log_det_error']:12.2e}")
    os.makedirs(args.out, exist_ok=True)
    info = {"tensorflow": tf.__version__, "keras": keras.__version__,
            "python": platform.python_version(), "date": time.strftime("%Y-%m-%d %H:%M:%S")}
    with open(os.path.join(args.out, "layer_precision.json"), "w") as f:
        json.dump({"machine": info, "rows": rows}, f, indent=1)
    _plot(rows, os.path.join(args.out, "layer_precision.png"))
    print(f"wrote {args.out}/layer_precision.json and layer_precision.png")
    return rows


if __name__ == "__main__":
    main()
