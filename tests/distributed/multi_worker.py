"""One worker of a 2-worker MultiWorkerMirroredStrategy run on 127.0.0.1 (TF_CONFIG set by the
test); trains a small flow for a few steps and prints its losses as JSON."""

import json
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
import tensorflow as tf  # noqa: E402

strategy = tf.distribute.MultiWorkerMirroredStrategy()

import keras  # noqa: E402
import numpy as np  # noqa: E402

from snf_tf import FlowModel, SelfNormDense  # noqa: E402

keras.utils.set_random_seed(0)
x = (np.random.default_rng(0).normal(size=(64, 5)) * 2).astype("float32")
with strategy.scope():
    model = FlowModel([SelfNormDense(), SelfNormDense()])
    model.compile(optimizer=keras.optimizers.Adam(1e-2), jit_compile=False)
options = tf.data.Options()
options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
ds = tf.data.Dataset.from_tensor_slices(x).batch(16).with_options(options)
losses = []
log = keras.callbacks.LambdaCallback(on_train_batch_end=lambda b, logs: losses.append(
    float(logs["loss"])))
model.fit(ds, epochs=1, verbose=0, callbacks=[log])
print(json.dumps({"losses": losses, "replicas": strategy.num_replicas_in_sync,
                  "weights_sum": float(sum(np.sum(w) for w in model.get_weights()))}))
