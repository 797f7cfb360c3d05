"""``snf-tf train`` with a per-batch trace: the running loss and reconstruction loss after every
batch, and every ``--every`` batches the largest ‖RW − I‖_F, the learning rate and the global
norm of the training gradient on 100 fixed validation images (``grad_norm``), written to
``OUT/trace.json`` as it goes (to find where a run went wrong inside an epoch). With
``--layers N``, every N batches also each layer's mean exact log-det on 100 fixed validation
images and its ‖RW − I‖_F (``"layers": {name: [log_det, error or null]}``, ``"base"``).

    python studies/diagnostics/batch_trace.py selfnorm_glow_mnist --epochs 2 --out DIR \\
        --set hidden_channels=64 [--layers 25]

``--resume`` continues the run in DIR to ``--epochs`` (as ``snf-tf train --resume``; give the
same ``--set`` options) and appends to its trace.
"""

import argparse
import json
import os
import sys

import keras

from snf_tf import experiments
from snf_tf.experiments import training

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from nll_by_layer import decompose  # noqa: E402


class BatchTrace(keras.callbacks.Callback):
    def __init__(self, path, every=25, layers_every=0, images=None):
        super().__init__()
        self.path, self.every, self.rows, self.epoch = path, every, [], 0
        self.layers_every, self.images = layers_every, images
        self._gradient_norm = None

    def gradient_norm(self):
        """‖∇ training loss‖₂ over every trainable weight, on the fixed images (the scale a
        global clipnorm acts on)."""
        if self._gradient_norm is None:
            import tensorflow as tf

            model = self.model

            @tf.function
            def norm(x):
                with tf.GradientTape() as tape:
                    base, log_det, recon = model._forward_and_base(x, exact=False, training=False)
                    loss = -tf.reduce_mean(base + log_det) + recon
                return tf.linalg.global_norm(tape.gradient(loss, model.trainable_weights))

            self._gradient_norm = norm
        return float(self._gradient_norm(self.images))

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch + 1

    def on_train_batch_end(self, batch, logs=None):
        row = {"epoch": self.epoch, "batch": batch, "loss": float(logs["loss"]),
               "recon": float(logs["recon"])}
        if batch % self.every == 0:
            errors = self.model.inverse_errors()
            row["inverse_error_max"] = max(errors.values()) if errors else None
            row["learning_rate"] = float(self.model.optimizer.learning_rate)
            if self.images is not None and not self.model.conditional:
                row["grad_norm"] = self.gradient_norm()
            self.write()
        if self.layers_every and batch % self.layers_every == 0:
            base, layers = decompose(self.model, self.images)
            row["base"] = base
            row["layers"] = {name: [log_det, error] for name, log_det, error in layers}
        self.rows.append(row)

    def write(self):
        with open(self.path, "w") as f:
            json.dump(self.rows, f)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("experiment")
    parser.add_argument("--epochs", type=int, required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--every", type=int, default=25)
    parser.add_argument("--layers", type=int, default=0, metavar="N",
                        help="every N batches: per-layer log-dets and ‖RW − I‖_F")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--resume", action="store_true")
    args = parser.parse_args(argv)
    overrides = dict(experiments.parse_override(text) for text in args.set)
    overrides["epochs"] = args.epochs
    run = training.prepare(args.experiment, args.out, resume=args.resume, **overrides)
    images = next(iter(run.splits["validation"].unbatch().take(100).batch(100)))
    trace = BatchTrace(os.path.join(args.out, "trace.json"), args.every, args.layers, images)
    if args.resume and os.path.exists(trace.path):
        with open(trace.path) as f:  # the rows of the epochs the run resumes after
            trace.rows = [r for r in json.load(f) if r["epoch"] <= len(run.history)]
    try:
        run.train(verbose=0, extra_callbacks=[trace])
    finally:
        trace.write()


if __name__ == "__main__":
    main()
