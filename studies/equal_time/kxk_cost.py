"""What the exact gradient costs a Glow with k×k mixing convolutions: training-step time of the
small Glow (2 blocks × 4 steps, width 64) with SNF and exact-gradient convolutions, 1×1 and
k×k, on MNIST-sized and larger images.

    python studies/equal_time/kxk_cost.py --out DIR            # 28×28×1 and 32×32×3
    python studies/equal_time/kxk_cost.py --shapes 64x64x3 --batch 16 --out DIR

Each model is built with ``snf_tf.architectures.glow`` (``conv="selfnorm"`` or ``"exact"``,
``kernel_size`` 1 or k; the exact 1×1 is Glow's own ``Conv1x1``, the exact k×k a
``SelfNormConv2D(k, gradient="exact")`` whose log-det and its gradient go through a banded LU
of the conv's matrix every step), compiled as the experiments compile it (Adam, no XLA for the
exact models) and timed through Keras' train function on one batch of uniform random pixels,
the models of one image shape interleaved round by round. Prints median ms per step and the
ratio of each to the SNF k×k model; writes ``DIR/kxk_cost.json`` and ``kxk_cost.png``.
"""

import argparse
import json
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from snf_tf import architectures  # noqa: E402
from snf_tf.experiments.bench.scaling import summarize, time_interleaved  # noqa: E402
from snf_tf.experiments.bench.timing import train_step_runner  # noqa: E402

VARIANTS = (("SNF 1×1", "selfnorm", 1), ("exact 1×1", "exact", 1), ("SNF k×k", "selfnorm", None),
            ("exact k×k", "exact", None))


def _step(conv, kernel_size, x, jit):
    keras.utils.set_random_seed(0)
    model = architectures.glow(conv, num_blocks=2, steps_per_block=4, hidden_channels=64,
                               kernel_size=kernel_size, reconstruction_weight=100.0, seed=0)
    model.compile(optimizer=keras.optimizers.Adam(1e-4), jit_compile=jit and conv == "selfnorm")
    model.log_prob(x[:2])  # ActNorm's data-dependent init, the log-det caches
    run = train_step_runner(model, x)
    return lambda: tf.constant(run())  # time_interleaved reads .numpy()


def measure(shape, kernel_size, batch, rounds, warmup, jit):
    x = np.random.default_rng(0).integers(0, 256, (batch,) + shape).astype(np.uint8)
    steps = {name.replace("k×k", f"{kernel_size}×{kernel_size}"):
             _step(conv, k or kernel_size, x, jit) for name, conv, k in VARIANTS}
    times = time_interleaved(steps, {name: rounds for name in steps}, warmup)
    return {name: summarize(ms) for name, ms in times.items()}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", nargs="+", default=["28x28x1", "32x32x3"])
    parser.add_argument("--kernel-size", type=int, default=3)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--jit", action="store_true", help="XLA for the SNF models")
    parser.add_argument("--out", default="runs/kxk_cost")
    args = parser.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    results = {}
    for text in args.shapes:
        shape = tuple(int(v) for v in text.split("x"))
        result = measure(shape, args.kernel_size, args.batch, args.rounds, args.warmup, args.jit)
        results[text] = result
        reference = result[f"SNF {args.kernel_size}×{args.kernel_size}"]["median_ms"]
        print(f"\n{text}, batch {args.batch}: median ms per training step")
        for name, stats in result.items():
            print(f"  {name:<10} {stats['median_ms']:8.1f}  ({stats['median_ms'] / reference:.2f}× "
                  f"the SNF {args.kernel_size}×{args.kernel_size})")
    with open(os.path.join(args.out, "kxk_cost.json"), "w") as f:
        json.dump({"args": vars(args), "results": results}, f, indent=1)
    _plot(results, os.path.join(args.out, "kxk_cost.png"))
    print(f"\nwrote {args.out}/kxk_cost.json and kxk_cost.png")


def _plot(results, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(4.5 * len(results), 3.4), squeeze=False)
    for ax, (shape, result) in zip(axes[0], results.items()):
        names = list(result)
        medians = [result[n]["median_ms"] for n in names]
        errors = [[m - result[n]["p25_ms"] for n, m in zip(names, medians)],
                  [result[n]["p75_ms"] - m for n, m in zip(names, medians)]]
        ax.bar(names, medians, yerr=errors, color=["C0", "C1", "C2", "C3"])
        ax.set_title(f"small Glow, {shape} images", fontsize=10)
        ax.set_ylabel("ms per training step (median)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
