"""Train one small flow with the default strategy and with MirroredStrategy on 2 logical CPUs;
print both per-batch loss curves as JSON (run by tests/test_distribute.py in a fresh process)."""

import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
import tensorflow as tf  # noqa: E402

cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

import keras  # noqa: E402
import numpy as np  # noqa: E402

import snf_tf  # noqa: E402
from snf_tf import FlowModel, SelfNormConv2D, SelfNormDense  # noqa: E402


def run(strategy, kind):
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    if kind == "dense":
        x = (rng.normal(size=(128, 6)) * 2).astype("float32")
        make = lambda: [SelfNormDense(dtype="float64"),  # noqa: E731
                        SelfNormDense(gradient="exact", dtype="float64")]
    else:
        x = (rng.normal(size=(64, 4, 4, 2)) * 2).astype("float32")
        make = lambda: [SelfNormConv2D(3, dtype="float64"),  # noqa: E731
                        SelfNormConv2D(1, dtype="float64")]
    with strategy.scope():
        model = FlowModel(make(), dtype="float64")  # float64: compare curves to 1e-6
        # SGD: no scale invariance
        model.compile(optimizer=keras.optimizers.SGD(1e-2), jit_compile=False)
    losses = []
    log = keras.callbacks.LambdaCallback(on_train_batch_end=lambda b, logs: losses.append(
        float(logs["loss"])))
    ds = tf.data.Dataset.from_tensor_slices(x).batch(16)
    model.fit(ds, epochs=2, verbose=0, callbacks=[log], shuffle=False)
    exact = model.evaluate(ds, verbose=0, return_dict=True)["nll"]
    return {"losses": losses, "exact_nll": exact, "replicas": strategy.num_replicas_in_sync}


kind = sys.argv[1]
one = run(tf.distribute.get_strategy(), kind)
two = run(tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]), kind)
print(json.dumps({"snf_tf": snf_tf.__file__, "one": one, "two": two}))
