"""SNF Conv 9L training step with and without its 8 spline activations (the same convs, same
preprocessing; batch 100 of MNIST-shaped images; Keras train function on an iterator, as fit).

    python studies/splines/spline_share.py [--rounds 20] [--out DIR]
"""

import argparse
import json
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import snf_tf  # noqa: E402  (oneDNN switch before TensorFlow loads)
from snf_tf import architectures  # noqa: E402
from snf_tf import layers as L  # noqa: E402
from snf_tf.experiments.bench.timing import train_step_runner  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))


def _step(model, x):
    model.compile(optimizer=keras.optimizers.Adam(1e-4), jit_compile=False)
    model.build((None, 28, 28, 1))
    model.log_prob(x[:2])
    return train_step_runner(model, x)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--out", default=os.path.join(HERE, "results"),
                        help="output folder (default: results/ beside this script)")
    args = parser.parse_args(argv)
    keras.utils.set_random_seed(0)
    x = tf.constant(np.random.default_rng(0).integers(0, 256, (100, 28, 28, 1)).astype("uint8"))
    full = architectures.conv_flow("selfnorm")
    bare = snf_tf.FlowModel([layer for layer in architectures.conv_flow("selfnorm").flow_layers
                             if not isinstance(layer, L.SplineActivation)])
    steps = {"with splines": _step(full, x), "without splines": _step(bare, x)}
    for run in steps.values():
        run(), run()
    times = {name: [] for name in steps}
    for r in range(args.rounds):
        for name in (list(steps) if r % 2 else list(steps)[::-1]):
            start = time.perf_counter()
            steps[name]()
            times[name].append(1e3 * (time.perf_counter() - start))
    medians = {name: float(np.median(ms)) for name, ms in times.items()}
    ratio = medians["with splines"] / medians["without splines"]
    for name, ms in medians.items():
        print(f"SNF Conv 9L {name:16s} {ms:7.1f} ms/step")
    print(f"ratio {ratio:.2f}")
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "spline_share.json"), "w") as f:
        json.dump({"median_ms": medians, "ratio": ratio, "times_ms": times,
                   "onednn": snf_tf._environment.onednn_enabled()}, f, indent=1)
    print(f"wrote {args.out}/spline_share.json")


if __name__ == "__main__":
    main()
