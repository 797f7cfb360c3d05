"""Train a small float64 flow with SGD and print its trainable weights as JSON (run by
tests/test_distribute.py in fresh processes).

``python multi_worker.py``: one worker of a 2-worker MultiWorkerMirroredStrategy run on 127.0.0.1
(TF_CONFIG set by the test); each global batch of 16 is split between the two workers, 8 each.
``python multi_worker.py single``: the same training in one process with the default
strategy on the same global batches, the reference both workers must equal.
"""

import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
import tensorflow as tf  # noqa: E402

single = sys.argv[1:] == ["single"]
strategy = tf.distribute.get_strategy() if single else tf.distribute.MultiWorkerMirroredStrategy()

import keras  # noqa: E402
import numpy as np  # noqa: E402

import snf_tf  # noqa: E402
from snf_tf import FlowModel, SelfNormDense  # noqa: E402


def trainable(model):
    return {w.path: w.numpy().tolist() for w in model.trainable_weights}


keras.utils.set_random_seed(0)
x = (np.random.default_rng(0).normal(size=(64, 5)) * 2).astype("float32")
with strategy.scope():
    # float64 so that 1 process and 2 workers agree to round-off; SGD, whose update is not
    # invariant to the gradient's scale (Adam would hide a wrong 1/replicas factor).
    model = FlowModel([SelfNormDense(dtype="float64"),
                       SelfNormDense(gradient="exact", dtype="float64")], dtype="float64")
    model.compile(optimizer=keras.optimizers.SGD(5e-2), jit_compile=False)
    model.build((None, 5))
initial = trainable(model)
options = tf.data.Options()
options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
ds = tf.data.Dataset.from_tensor_slices(x).batch(16).with_options(options)
losses = []
log = keras.callbacks.LambdaCallback(on_train_batch_end=lambda b, logs: losses.append(
    float(np.ravel(logs["loss"])[0])))
model.fit(ds, epochs=1, verbose=0, callbacks=[log], shuffle=False)
print(json.dumps({"snf_tf": snf_tf.__file__, "losses": losses,
                  "replicas": strategy.num_replicas_in_sync,
                  "initial": initial, "trainable": trainable(model)}))
