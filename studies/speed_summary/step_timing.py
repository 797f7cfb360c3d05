"""Conv models' training step through the train function (as fit), in whichever snf_tf is first
on sys.path: run it with an older checkout on PYTHONPATH and without, one after the other, to
compare versions with the same method.

    PYTHONPATH=/path/to/old/checkout python studies/speed_summary/step_timing.py OUT.json [ROUNDS]
    python studies/speed_summary/step_timing.py OUT.json [ROUNDS]

Prints the median ms per step of each model; writes ``OUT.json`` (the ``snf_tf`` that ran, the
medians and every timing). The models are timed round-robin, the order reversed every round.
"""

import argparse
import json
import os
import time

NAMES = ["exact_cnn_mnist", "emerging_cnn_mnist", "exponential_cnn_mnist", "selfnorm_cnn_mnist"]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", metavar="OUT.json", help="where to write the timings")
    parser.add_argument("rounds", metavar="ROUNDS", type=int, nargs="?", default=6,
                        help="timed rounds (default 6)")
    args = parser.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
    import keras
    import numpy as np
    import tensorflow as tf

    import snf_tf
    from snf_tf import callbacks, experiments  # the names an older checkout has too

    print("snf_tf from", snf_tf.__file__, "onednn var", os.environ.get("TF_ENABLE_ONEDNN_OPTS"))
    x = tf.constant(np.random.default_rng(0).integers(0, 256, (100, 28, 28, 1)).astype("uint8"))
    runs = {}
    for name in NAMES:
        cfg = experiments.config(name)
        model = experiments.build_model(cfg)
        model.build((None, 28, 28, 1))
        schedule = callbacks.LinearWarmup(cfg["learning_rate"], cfg["warmup_epochs"] * 500)
        model.compile(optimizer=keras.optimizers.Adam(schedule), jit_compile=cfg["jit_compile"])
        model.log_prob(x[:2])
        model.make_train_function()
        it = iter(tf.data.Dataset.from_tensors(x).repeat())

        def run(model=model, it=it):
            logs = model.train_function(it)
            logs = logs.get_value() if hasattr(logs, "get_value") else logs
            return float(logs["loss"])

        run()
        run()
        runs[name] = run
    times = {n: [] for n in NAMES}
    for r in range(args.rounds):
        for n in (NAMES if r % 2 else NAMES[::-1]):
            t = time.perf_counter()
            runs[n]()
            times[n].append(1e3 * (time.perf_counter() - t))
    med = {n: float(np.median(v)) for n, v in times.items()}
    for n, v in med.items():
        print(f"{n:24s} {v:8.1f} ms")
    with open(args.out, "w") as f:
        json.dump({"snf_tf": snf_tf.__file__, "median_ms": med, "times_ms": times}, f, indent=1)


if __name__ == "__main__":
    main()
