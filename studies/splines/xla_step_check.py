"""Whole-step XLA on CPU: SNF Conv 9L with and without its splines, and preprocessing + one
spline with and without XLA; prints the first 4 step times (the first includes compilation).

    python studies/splines/xla_step_check.py

The whole-step XLA variants take seconds per step on a CPU.
"""

import argparse
import os
import time


def main(argv=None):
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import keras
    import numpy as np
    import tensorflow as tf

    import snf_tf
    from snf_tf import architectures
    from snf_tf import layers as L
    from snf_tf.experiments.bench.timing import train_step_runner

    x = tf.constant(np.random.default_rng(0).integers(0, 256, (100, 28, 28, 1)).astype("uint8"))

    def mk(model, jit):
        model.compile(optimizer=keras.optimizers.Adam(1e-4), jit_compile=jit)
        model.build((None, 28, 28, 1))
        model.log_prob(x[:2])
        return train_step_runner(model, x)

    variants = {
        "snf conv jit": lambda: mk(architectures.conv_flow("selfnorm"), True),
        "snf conv no splines jit": lambda: mk(snf_tf.FlowModel(
            [layer for layer in architectures.conv_flow("selfnorm").flow_layers
             if not isinstance(layer, L.SplineActivation)]), True),
        "preproc+1 spline jit": lambda: mk(
            snf_tf.FlowModel(architectures.preprocessing() + [L.SplineActivation()]), True),
        "preproc+1 spline nojit": lambda: mk(
            snf_tf.FlowModel(architectures.preprocessing() + [L.SplineActivation()]), False),
    }
    for name, make in variants.items():
        run = make()
        ts = []
        for _i in range(4):
            t = time.perf_counter()
            run()
            ts.append(1e3 * (time.perf_counter() - t))
        print(f"{name:28s}", " ".join(f"{t:9.1f}" for t in ts), "ms", flush=True)


if __name__ == "__main__":
    main()
