"""The exact conv log-det: dense ``slogdet`` of the Toeplitz matrix vs banded LU, in one process.

Three measurements, each variant timed round-robin (order alternated) with medians:

1. ``log|det T(K)|`` and its gradient w.r.t. the kernel for the three shapes of the conv flow on
   MNIST (28×28×1, 14×14×4, 7×7×16; D = 784; 3×3 kernels), forward only (the evaluation refresh)
   and forward + backward (the exact-gradient training step);
2. the Exact Conv 9L training step (batch 100, Keras train function, as ``fit``) with each
   log-det, beside the SNF Conv 9L step;
3. the refresh of the exact log-dets before an evaluation (SNF Conv 9L, 9 layers).

    python studies/exact_conv_logdet/exact_conv_logdet.py [--rounds 15] [--out DIR]
"""

import argparse
import contextlib
import json
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import snf_tf  # noqa: E402  (oneDNN switch before TensorFlow loads)
from snf_tf import architectures  # noqa: E402
from snf_tf.experiments.bench.timing import train_step_runner  # noqa: E402
from snf_tf.ops import toeplitz  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
SHAPES = [(28, 28, 1), (14, 14, 4), (7, 7, 16)]


@contextlib.contextmanager
def dense_log_det():
    """Trace ``conv_log_abs_det`` as before the banded LU: one dense ``slogdet``."""
    banded = toeplitz.banded_log_abs_det
    toeplitz.banded_log_abs_det = lambda matrix, bandwidth: tf.linalg.slogdet(matrix)[1]
    try:
        yield
    finally:
        toeplitz.banded_log_abs_det = banded


def _log_det_runner(shape, backward):
    h, w, c = shape
    positions, taps = toeplitz.toeplitz_indices(h, w, c, 3)
    kernel = np.zeros((3, 3, c, c), np.float32)
    kernel[1, 1] = np.eye(c)
    kernel = tf.constant(kernel + 0.1 * np.random.default_rng(0).standard_normal(kernel.shape),
                         tf.float32)

    @tf.function
    def run(k):
        with tf.GradientTape() as tape:
            tape.watch(k)
            value = toeplitz.conv_log_abs_det(k, positions, taps, h * w * c)
        return (value, tape.gradient(value, k)) if backward else value

    return lambda: [t.numpy() for t in tf.nest.flatten(run(kernel))]


def _train_runner(layer, x):
    model = architectures.conv_flow(layer)
    model.compile(optimizer=keras.optimizers.Adam(1e-4), jit_compile=False)
    model.build((None, 28, 28, 1))
    model.log_prob(x[:2])
    return train_step_runner(model, x)


def _refresh_runner(x):
    model = architectures.conv_flow("selfnorm")
    model.build((None, 28, 28, 1))
    model.log_prob(x[:2])
    return lambda: [float(v) for v in [layer.refresh_log_det() for layer in model.flow_layers
                                       if hasattr(layer, "refresh_log_det")]]


def _time(runners, rounds):
    for run in runners.values():  # trace and warm up
        run(), run()
    times = {name: [] for name in runners}
    for r in range(rounds):
        for name in (list(runners) if r % 2 else list(runners)[::-1]):
            start = time.perf_counter()
            runners[name]()
            times[name].append(1e3 * (time.perf_counter() - start))
    return times


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--out", default=os.path.join(HERE, "results"),
                        help="output folder (default: results/ beside this script)")
    args = parser.parse_args(argv)
    keras.utils.set_random_seed(0)
    x = tf.constant(np.random.default_rng(0).integers(0, 256, (100, 28, 28, 1)).astype("uint8"))
    runners = {}
    for variant in ("dense", "banded"):
        with dense_log_det() if variant == "dense" else contextlib.nullcontext():
            for shape in SHAPES:
                for backward in (False, True):
                    label = f"{'×'.join(map(str, shape))} {'fwd+bwd' if backward else 'fwd'}"
                    runners[(label, variant)] = _log_det_runner(shape, backward)
            runners[("Exact Conv 9L step", variant)] = _train_runner("exact", x)
            runners[("SNF Conv 9L refresh", variant)] = _refresh_runner(x)
            for run in [r for (k, v), r in runners.items() if v == variant]:
                run()  # trace inside the switch
    runners[("SNF Conv 9L step", "banded")] = _train_runner("selfnorm", x)
    times = _time({f"{k}|{v}": r for (k, v), r in runners.items()}, args.rounds)
    medians = {name: float(np.median(ms)) for name, ms in times.items()}
    rows = sorted({name.split("|")[0] for name in medians}, key=list(runners and
                  dict.fromkeys(k for k, _ in runners)).index)
    print(f"{'what':24s} {'dense ms':>9s} {'banded ms':>10s} {'ratio':>6s}")
    table = {}
    for row in rows:
        dense, banded = medians.get(f"{row}|dense"), medians.get(f"{row}|banded")
        ratio = banded / dense if dense else None
        table[row] = {"dense_ms": dense, "banded_ms": banded, "ratio": ratio}
        print(f"{row:24s} {dense if dense else float('nan'):9.1f} {banded:10.1f} "
              f"{ratio if ratio else float('nan'):6.3f}")
    exact, snf = medians["Exact Conv 9L step|banded"], medians["SNF Conv 9L step|banded"]
    print(f"Exact Conv 9L step ÷ SNF Conv 9L step: {exact / snf:.2f} "
          f"(dense log-det: {medians['Exact Conv 9L step|dense'] / snf:.2f})")
    os.makedirs(args.out, exist_ok=True)
    result = {"table": table, "exact_over_snf_step": exact / snf, "times_ms": times,
              "rounds": args.rounds, "onednn": snf_tf._environment.onednn_enabled()}
    with open(os.path.join(args.out, "exact_conv_logdet.json"), "w") as f:
        json.dump(result, f, indent=1)
    _plot(table, os.path.join(args.out, "exact_conv_logdet.png"))
    print(f"wrote {args.out}/exact_conv_logdet.json and .png")


def _plot(table, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in table if table[r]["dense_ms"]]
    fig, ax = plt.subplots(figsize=(8, 3.8))
    y = np.arange(len(rows))
    ax.barh(y - 0.2, [table[r]["dense_ms"] for r in rows], 0.4, label="dense slogdet")
    ax.barh(y + 0.2, [table[r]["banded_ms"] for r in rows], 0.4, label="banded LU")
    ax.set_yticks(y, rows)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.set_xlabel("ms (median, batch 100 for the step)")
    ax.legend()
    ax.set_title("Exact conv log-det: dense vs banded (2-core CPU)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
