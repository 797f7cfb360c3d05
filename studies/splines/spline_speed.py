"""SplineActivation forward + backward: snf_tf.ops.spline against
tfp.bijectors.RationalQuadraticSpline.

Same layer, same weights, same input (batch 100 at 28×28×1 by default, the first spline of the
9-layer conv flow), one training-like step in a ``tf.function`` without XLA for the step (the
CPU default): forward, Σ log-det, gradients w.r.t. the input and the three weight arrays. Our
path with its XLA-fused kernels (default), our path with plain TensorFlow kernels, and TFP's
bijector built from the same parameters are timed round-robin; medians and the ratio to TFP.

    python studies/splines/spline_speed.py [--rounds 50] [--shape 28 28 1] [--out DIR]
"""

import argparse
import json
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import snf_tf  # noqa: E402,F401  (oneDNN switch before TensorFlow loads)
from snf_tf.layers import SplineActivation  # noqa: E402
from snf_tf.ops import spline as spline_ops  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))


def main(argv=None):
    parser = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    parser.add_argument("--rounds", type=int, default=50)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--shape", type=int, nargs="+", default=[28, 28, 1])
    parser.add_argument("--out", default=os.path.join(HERE, "results"),
                        help="output folder (default: results/ beside this script)")
    args = parser.parse_args(argv)
    layer = SplineActivation()
    layer.build((None, *args.shape))
    rng = np.random.default_rng(0)
    for w in layer.trainable_weights:
        w.assign(rng.normal(0, 0.5, w.shape).astype("float32"))
    x = tf.constant(rng.normal(0, 3, (args.batch, *args.shape)).astype("float32"))

    def ours(x):
        return layer.forward(x)

    def tfp(x):
        bijector = layer.as_tfp_bijector()
        log_det = bijector.forward_log_det_jacobian(x, 0)
        return bijector.forward(x), tf.reduce_sum(tf.reshape(log_det, [tf.shape(x)[0], -1]), -1)

    def step(fn):
        @tf.function
        def run(x):
            with tf.GradientTape() as tape:
                tape.watch(x)
                z, log_det = fn(x)
                loss = tf.reduce_sum(z * z) - tf.reduce_sum(log_det)
            return tape.gradient(loss, [x] + layer.trainable_weights)
        return run

    with spline_ops.xla_kernels(False):
        plain = step(ours)
        plain(x)
    variants = {"snf_tf (XLA kernels)": step(ours), "snf_tf (plain TF kernels)": plain,
                "TFP RationalQuadraticSpline": step(tfp)}
    for run in variants.values():
        run(x)
    times = {name: [] for name in variants}
    names = list(variants)
    for r in range(args.rounds):
        for name in names[r % 3:] + names[:r % 3]:
            start = time.perf_counter()
            [g.numpy() for g in variants[name](x)]
            times[name].append(1e3 * (time.perf_counter() - start))
    reference = float(np.median(times["TFP RationalQuadraticSpline"]))
    rows = [{"variant": name, "median_ms": float(np.median(ms)),
             "p25_ms": float(np.percentile(ms, 25)), "p75_ms": float(np.percentile(ms, 75)),
             "ratio_to_tfp": float(np.median(ms)) / reference} for name, ms in times.items()]
    print(f"SplineActivation forward+backward, batch {args.batch} × {tuple(args.shape)}")
    print(f"{'variant':30s} {'median ms':>10s} {'÷ TFP':>7s}")
    for row in rows:
        print(f"{row['variant']:30s} {row['median_ms']:10.2f} {row['ratio_to_tfp']:7.3f}")
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "spline_speed.json"), "w") as f:
        json.dump({"args": vars(args), "onednn": snf_tf._environment.onednn_enabled(),
                   "tensorflow": tf.__version__, "results": rows}, f, indent=1)
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 2.4))
    ax.barh([r["variant"] for r in rows], [r["median_ms"] for r in rows],
            xerr=[[r["median_ms"] - r["p25_ms"] for r in rows],
                  [r["p75_ms"] - r["median_ms"] for r in rows]], color=["C0", "C1", "C7"])
    ax.invert_yaxis()
    ax.set_xlabel("ms per forward + backward (median, quartiles)")
    ax.set_title(f"SplineActivation, batch {args.batch} × {tuple(args.shape)}, CPU")
    fig.tight_layout()
    fig.savefig(os.path.join(args.out, "spline_speed.png"), dpi=120)
    print(f"wrote {args.out}/spline_speed.json and .png")


if __name__ == "__main__":
    main()
