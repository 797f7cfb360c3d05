"""Conv models' training step through the train function (as fit), in whichever snf_tf is first
on sys.path: run it with an older checkout on PYTHONPATH and without, one after the other, to
compare versions with the same method.

    PYTHONPATH=/path/to/old/checkout python benchmarks/step_timing.py OUT.json [ROUNDS]
    python benchmarks/step_timing.py OUT.json [ROUNDS]
"""
import json
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
import keras
import numpy as np
import tensorflow as tf

import snf_tf
from snf_tf import callbacks, experiments

print("snf_tf from", snf_tf.__file__, "onednn var", os.environ.get("TF_ENABLE_ONEDNN_OPTS"))
names = ["exact_cnn_mnist", "emerging_cnn_mnist", "exponential_cnn_mnist", "selfnorm_cnn_mnist"]
x = tf.constant(np.random.default_rng(0).integers(0, 256, (100, 28, 28, 1)).astype("uint8"))
runs = {}
for name in names:
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
times = {n: [] for n in names}
for r in range(int(sys.argv[2]) if len(sys.argv) > 2 else 6):
    for n in (names if r % 2 else names[::-1]):
        t = time.perf_counter()
        runs[n]()
        times[n].append(1e3 * (time.perf_counter() - t))
med = {n: float(np.median(v)) for n, v in times.items()}
for n, v in med.items():
    print(f"{n:24s} {v:8.1f} ms")
json.dump({"snf_tf": snf_tf.__file__, "median_ms": med, "times_ms": times}, open(sys.argv[1], "w"),
          indent=1)
