"""Time per training step of one flow layer vs. input size (cf. Keller et al., ICML 2021, Fig. 4).

What is measured: one full training step with batch 100 — forward, backward and an Adam(1e-4)
update, all inside one ``tf.function`` — for a single layer on random N(0, 1) inputs:

* dense, D in {256, 784, 1024, 2048, 3072, 4096}:
  ``SelfNormDense()`` (SNF: self-normalized gradient plus the fused reconstruction loss),
  ``SelfNormDense(gradient="exact")`` (autodiff through ``slogdet``) and a plain
  ``keras.layers.Dense(D)`` reference with loss ``mean(0.5 z²)``;
* 3×3 conv on 28×28×1, 14×14×4 and 32×32×3 inputs: ``SelfNormConv2D(3)`` vs. its exact twin
  (``slogdet`` of the dense Toeplitz matrix, D = H·W·C).

Flow loss: ``-mean(log N(z; 0, I) + log_det) + sum(layer.losses)`` with
``z, log_det = layer.forward(x, training=True)``. Layers and optimizers are built and every step
function is traced and warmed up before timing. The variants of one size are then timed
round-robin (one step of each per round, order rotated each round) so that machine noise hits all
of them alike; each step ends with ``loss.numpy()``, so a time includes completion. Medians are
reported. The exact variant never uses XLA (``slogdet`` has no XLA kernel); ``--jit`` compiles the
other variants. TF enables oneDNN by default only on CPUs with AVX-512; this script turns it on
(``TF_ENABLE_ONEDNN_OPTS=1`` unless set) because it makes the SNF steps faster on AVX2 CPUs
(convs most; docs/install.md, "oneDNN on x86-64"); run with ``TF_ENABLE_ONEDNN_OPTS=0`` for
TF's default kernels. The JSON records it.

Run (default run ≈ 5-15 min on a 2-core CPU):

    snf-tf bench scaling
    snf-tf bench scaling --quick      # smoke test

Writes ``layer_scaling.json`` and ``layer_scaling.png`` to ``--out`` (default results/).
"""

import argparse
import json
import math
import os
import platform
import time

# before TensorFlow loads; see the module docstring. The JSON records the setting.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")

import keras  # noqa: E402
import matplotlib  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from snf_tf.layers.selfnorm import SelfNormConv2D, SelfNormDense  # noqa: E402

BATCH = 100
DENSE_DIMS = (256, 784, 1024, 2048, 3072, 4096)
CONV_SHAPES = ((28, 28, 1), (14, 14, 4), (32, 32, 3))
VARIANTS = ("snf", "exact", "dense")
LABELS = {"snf": "SNF", "exact": "exact gradient", "dense": "plain Dense"}


def flow_loss(layer, x):
    """Negative log-likelihood under a standard normal base plus the layer's registered losses."""
    z, log_det = layer.forward(x, training=True)
    dim = math.prod(z.shape[1:])
    log_pz = -0.5 * tf.reduce_sum(tf.square(z), axis=list(range(1, z.shape.rank)))
    log_pz -= 0.5 * dim * math.log(2 * math.pi)
    return -tf.reduce_mean(log_pz + log_det) + sum(layer.losses, tf.constant(0.0))


def dense_loss(layer, x):
    return tf.reduce_mean(0.5 * tf.square(layer(x)))


def make_step(layer, loss_fn, x, jit):
    """Build layer and optimizer, return a traced ``step() -> loss`` (fwd, bwd, Adam update)."""
    layer(x) if isinstance(layer, keras.layers.Dense) else layer.forward(x)
    optimizer = keras.optimizers.Adam(1e-4)
    optimizer.build(layer.trainable_weights)

    # autograph=False: nothing here needs it, and the step cannot pick up source edited mid-run.
    @tf.function(jit_compile=jit, autograph=False)
    def step():
        with tf.GradientTape() as tape:
            loss = loss_fn(layer, x)
        grads = tape.gradient(loss, layer.trainable_weights)
        optimizer.apply(grads, layer.trainable_weights)
        return loss

    return step


def time_interleaved(steps, n_steps, warmup):
    """Warm each step up, then time them round-robin; returns {name: [ms, ...]}."""
    for step in steps.values():
        for _ in range(warmup):
            step().numpy()
    times = {name: [] for name in steps}
    names = list(steps)
    for r in range(max(n_steps.values())):
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            if len(times[name]) < n_steps[name]:
                start = time.perf_counter()
                loss = steps[name]().numpy()
                times[name].append(1e3 * (time.perf_counter() - start))
                if not np.isfinite(loss):
                    raise FloatingPointError(f"{name}: non-finite loss {loss}")
    return times


def summarize(ms):
    p25, median, p75 = np.percentile(ms, [25, 50, 75])
    return {"median_ms": median, "p25_ms": p25, "p75_ms": p75, "n": len(ms), "times_ms": ms}


def bench(kind, shape, args):
    """Time all variants of one configuration ("dense" D or "conv" H×W×C)."""
    x = tf.random.stateless_normal((BATCH, *shape), seed=(0, 1))
    dim = math.prod(shape)
    if kind == "dense":
        variants = {"snf": (SelfNormDense(), flow_loss),
                    "exact": (SelfNormDense(gradient="exact"), flow_loss),
                    "dense": (keras.layers.Dense(dim), dense_loss)}
    else:
        variants = {"snf": (SelfNormConv2D(3), flow_loss),
                    "exact": (SelfNormConv2D(3, gradient="exact"), flow_loss)}
    steps = {name: make_step(layer, loss_fn, x, args.jit and name != "exact")
             for name, (layer, loss_fn) in variants.items()}
    n_steps = {name: args.steps for name in steps}
    if dim >= 3072:
        n_steps["exact"] = args.exact_steps
    times = time_interleaved(steps, n_steps, args.warmup)
    label = str(dim) if kind == "dense" else "x".join(map(str, shape))
    return {"kind": kind, "label": label, "shape": list(shape), "D": dim,
            **{name: summarize(ms) for name, ms in times.items()}}


def ratio(result, a, b):
    if a in result and b in result:
        return result[a]["median_ms"] / result[b]["median_ms"]
    return float("nan")


def print_row(result):
    cells = [f"{result.get(v, {}).get('median_ms', float('nan')):10.1f}" for v in VARIANTS]
    print(f"{result['kind']:5s} {result['label']:>8s} {' '.join(cells)} "
          f"{ratio(result, 'exact', 'snf'):9.1f} {ratio(result, 'snf', 'dense'):9.2f}", flush=True)


def plot(results, path):
    fig, (ax_dense, ax_conv) = plt.subplots(1, 2, figsize=(10, 4))
    for ax, kind in ((ax_dense, "dense"), (ax_conv, "conv")):
        rows = [r for r in results if r["kind"] == kind]
        if not rows:
            ax.set_visible(False)
            continue
        xs = [r["D"] for r in rows] if kind == "dense" else list(range(len(rows)))
        for v in VARIANTS:
            if v in rows[0]:
                med = np.array([r[v]["median_ms"] for r in rows])
                err = [med - [r[v]["p25_ms"] for r in rows], [r[v]["p75_ms"] for r in rows] - med]
                ax.errorbar(xs, med, yerr=err, marker="o", capsize=3, label=LABELS[v])
        ax.set_yscale("log")
        ax.set_ylabel("time per training step [ms]")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
        if kind == "dense":
            ax.set_xlabel("input dimension D")
            ax.set_title(f"dense layer, batch {BATCH}")
        else:
            ax.set_xticks(xs, [f"{r['label']}\n(D={r['D']})" for r in rows])
            ax.set_xlabel("input H×W×C")
            ax.set_title(f"3×3 conv layer, batch {BATCH}")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="snf-tf bench scaling",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=20, help="timed steps per variant")
    parser.add_argument("--exact-steps", type=int, default=20,
                        help="timed steps of the exact variant at D >= 3072")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps per variant")
    parser.add_argument("--jit", action="store_true", help="XLA for SNF and Dense (never exact)")
    parser.add_argument("--quick", action="store_true",
                        help="smoke test: D in {256, 784}, conv 28x28x1, 5 steps")
    parser.add_argument("--out", default="results", help="output directory")
    args = parser.parse_args(argv)
    dims, shapes = DENSE_DIMS, CONV_SHAPES
    if args.quick:
        dims, shapes = DENSE_DIMS[:2], CONV_SHAPES[:1]
        args.steps = args.exact_steps = 5
    os.makedirs(args.out, exist_ok=True)

    print(f"TF {tf.__version__}, Keras {keras.__version__}, {os.cpu_count()} CPUs, "
          f"batch {BATCH}, jit={args.jit}; medians in ms")
    print(f"{'kind':5s} {'size':>8s} {'SNF':>10s} {'exact':>10s} {'Dense':>10s} "
          f"{'exact/SNF':>9s} {'SNF/Dense':>9s}", flush=True)
    results = []
    for kind, configs in (("dense", [(d,) for d in dims]), ("conv", shapes)):
        for shape in configs:
            results.append(bench(kind, shape, args))
            print_row(results[-1])
            keras.backend.clear_session()

    info = {"tensorflow": tf.__version__, "keras": keras.__version__,
            "numpy": np.__version__, "python": platform.python_version(),
            "platform": platform.platform(), "processor": platform.processor(),
            "cpu_count": os.cpu_count(), "batch": BATCH, "args": vars(args),
            "TF_ENABLE_ONEDNN_OPTS": os.environ.get("TF_ENABLE_ONEDNN_OPTS"),
            "date": time.strftime("%Y-%m-%d %H:%M:%S")}
    json_path = os.path.join(args.out, "layer_scaling.json")
    with open(json_path, "w") as f:
        json.dump({"machine": info, "results": results}, f, indent=1)
    png_path = os.path.join(args.out, "layer_scaling.png")
    plot(results, png_path)
    print(f"wrote {json_path} and {png_path}")
    return results


if __name__ == "__main__":
    main()
