"""Train the paper's 2-layer SNF FC flow on real MNIST and report the exact test likelihood.

Reference config (docs/paper.md: image pipeline, experiments, ``selfnorm_fc_mnist``): Adam 1e-4,
batch 100, per-batch linear warm-up over 10 epochs, λ = 1; test NLL (nats on the 0..256 scale, and
bits/dim) at the best validation epoch. Writes ``metrics.json``, ``samples.png`` and the best
checkpoint to ``--out``.

    python examples/fc_mnist.py --epochs 5            # ≈ 1-2 min per epoch on a 2-core CPU
    python examples/fc_mnist.py --epochs 1 --train-examples 5000   # quick look
"""

import argparse
import json
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")  # faster SNF steps on AVX2 CPUs (README)

import keras  # noqa: E402

from snf_tf import architectures, callbacks, data  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gradient", default="self_normalized",
                        choices=["self_normalized", "exact", "relative"])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--learning-rate", type=float, default=1e-4)
    parser.add_argument("--warmup-epochs", type=int, default=10)
    parser.add_argument("--train-examples", type=int, default=None,
                        help="use only the first N training images (quick runs)")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--out", default="runs/fc_mnist")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    keras.utils.set_random_seed(args.seed)
    os.makedirs(args.out, exist_ok=True)

    # --8<-- [start:data]
    folder = args.data_dir  # None: $TFDS_DATA_DIR
    train = data.load("mnist", "train", args.batch_size, data_dir=folder,
                      limit=args.train_examples)
    val = data.load("mnist", "validation", 500, data_dir=folder)
    test = data.load("mnist", "test", 500, data_dir=folder)
    # --8<-- [end:data]

    # --8<-- [start:model]
    model = architectures.fc_flow(args.gradient, seed=args.seed)
    steps = int(train.cardinality())  # batches per epoch
    schedule = callbacks.LinearWarmup(args.learning_rate,
                                      args.warmup_epochs * steps)
    model.compile(optimizer=keras.optimizers.Adam(schedule))
    # --8<-- [end:model]

    # --8<-- [start:fit]
    best = callbacks.BestValidationTest(
        test, os.path.join(args.out, "best.keras"))
    timer = _EpochTimer()
    log = _MetricsFile(os.path.join(args.out, "metrics.json"), vars(args),
                       timer)
    model.fit(
        train, validation_data=val, epochs=args.epochs, verbose=2,
        shuffle=False,
        callbacks=[timer, best, log, keras.callbacks.TerminateOnNaN(),
                   callbacks.ImageGrid(args.out, every=args.epochs, n=64)],
    )
    # --8<-- [end:fit]
    # --8<-- [start:report]
    print(f"best validation epoch {best.best_epoch + 1}: "
          f"test NLL {best.test['nll']:.1f} nats "
          f"= {best.test['bpd']:.4f} bits/dim")
    print(f"samples: {os.path.join(args.out, 'samples.png')}")
    errors = model.inverse_errors()  # SNF layers only: the others have no R
    if errors:
        print(f"largest ‖RW − I‖ of the {len(errors)} SNF layers: "
              f"{max(errors.values()):.4f}")
    # --8<-- [end:report]


class _MetricsFile(keras.callbacks.Callback):
    """Rewrites metrics.json after every epoch, so an interrupted run keeps its curve."""

    def __init__(self, path, args, timer):
        super().__init__()
        self.path, self.args, self.timer, self.history = path, args, timer, {}

    def on_epoch_end(self, epoch, logs=None):
        for key, value in (logs or {}).items():
            self.history.setdefault(key, []).append(float(value))
        self.history["epoch_seconds"] = list(self.timer.seconds)
        tmp = self.path + ".tmp"
        with open(tmp, "w") as f:
            json.dump({"args": self.args, "history": self.history}, f, indent=1)
        os.replace(tmp, self.path)


class _EpochTimer(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.seconds = []

    def on_epoch_begin(self, epoch, logs=None):
        self.start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.seconds.append(time.perf_counter() - self.start)


if __name__ == "__main__":
    main()
