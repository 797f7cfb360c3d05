"""Table 3 analogue: ms per training batch and ms per sample of the nine Table-1 models.

What is measured, per model (the reference configs of :mod:`snf_tf.experiments`, full size unless
``--set`` says otherwise; MNIST-shaped uint8 inputs, batch 100):

* **ms/batch** — on a batch of real MNIST images (noise images when tfds has no MNIST), one
  training step (forward, backward, reconstruction loss, Adam update) through the model's
  compiled train function on a dataset iterator, exactly as ``fit`` runs it (``--jit`` chooses
  XLA for the whole step; by default the experiment's ``jit_compile``, which Keras turns off on
  a CPU-only machine). Not ``train_on_batch``: it adds Keras data-adapter work to every call,
  which ``fit`` does not pay;
* **ms/sample** — one sample (n = 1) through the learned inverse (or the only inverse), in a
  ``tf.function``;
* **eval ÷ forward** (``--eval-images N``, default 1000) — an exact evaluation over N images
  (``model.evaluate``: refresh of the cached exact log-dets, then exact log-likelihoods) divided
  by a training-mode forward pass over the same images (cheap log-dets and reconstruction
  losses, no gradient), timed ``--eval-rounds`` times.

Every model is built, compiled and warmed up first (tracing and XLA compilation are not timed). The
models are then timed round-robin — one step of each per round, order rotated — so machine noise
hits them alike; medians and quartiles are reported. The paper's numbers (GTX 1080Ti, PyTorch;
docs/paper.md: results Table 3) are printed beside ours; compare ratios, not absolute times.

    snf-tf bench models                      # ≈ 10-20 min on a 2-core CPU
    snf-tf bench models --quick              # FC and conv models only, 3 rounds
    snf-tf bench models --set hidden_channels=64   # narrower Glow couplings
    snf-tf bench models --quick --jit true   # whole steps under XLA
"""

import argparse
import json
import os
import platform
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from snf_tf import callbacks, experiments  # noqa: E402

__all__ = ["MODELS", "PAPER_TABLE3", "main", "time_models", "train_step_runner"]

#: Table 3 rows: experiment name → (label, paper ms/batch, paper ms/sample)
PAPER_TABLE3 = {
    "exact_fc_mnist": ("Exact FC 2L", 44.9, 61.5),
    "relative_fc_mnist": ("RelGrad FC 2L", 7.0, 69.2),
    "selfnorm_fc_mnist": ("SNF FC 2L", 18.7, 38.6),
    "exact_cnn_mnist": ("Exact Conv 9L", 372.2, 241.6),
    "emerging_cnn_mnist": ("Emerging 9L", 305.0, 71.7),
    "exponential_cnn_mnist": ("ConvExp 9L", 304.4, 84.2),
    "selfnorm_cnn_mnist": ("SNF Conv 9L", 212.5, 29.9),
    "conv1x1_glow_mnist": ("Glow 32L", 583.4, 163.1),
    "selfnorm_glow_mnist": ("SNF Glow 32L", 476.4, 30.6),
}
MODELS = tuple(PAPER_TABLE3)


def _images(batch):
    """A batch of real MNIST training images when tfds has them, else uniform noise images."""
    from snf_tf import data

    try:
        return next(iter(data.load("mnist", "train", batch, limit=batch))).numpy()
    except FileNotFoundError:
        return np.random.default_rng(0).integers(0, 256, (batch, 28, 28, 1)).astype(np.uint8)


def train_step_runner(model, batch):
    """A function that runs one compiled training step of ``model`` (compiled, initialised) on
    ``batch`` through Keras's train function on a dataset iterator, as ``fit`` does, and returns
    the step's loss."""
    model.make_train_function()
    batches = iter(tf.data.Dataset.from_tensors(batch).repeat())

    def run():
        logs = model.train_function(batches)
        logs = logs.get_value() if hasattr(logs, "get_value") else logs  # Keras versions differ
        return float(logs["loss"])

    return run


def _prepare(name, overrides, x, jit=None, eval_images=None):
    cfg = experiments.config(name, **(overrides if experiments.get(name).model == "glow" else {}))
    model = experiments.build_model(cfg)
    model.build((None, 28, 28, 1))
    # the experiment's own warm-up (500 steps an epoch): the timed steps are its first steps
    schedule = callbacks.LinearWarmup(cfg["learning_rate"], cfg["warmup_epochs"] * 500)
    model.compile(optimizer=keras.optimizers.Adam(schedule),
                  jit_compile=cfg["jit_compile"] if jit is None else jit)
    model.log_prob(x[:2])  # data-dependent initialisation (ActNorm) and caches
    step = train_step_runner(model, x)

    def train():
        if not np.isfinite(step()):
            raise FloatingPointError(f"{name}: non-finite training loss")

    sample_fn = tf.function(lambda: model.sample(1, seed=0))

    def sample():
        sample_fn().numpy()

    runners = {"train": train, "sample": sample}
    if eval_images is not None:
        forward_fn = tf.function(lambda b: model.forward_with_reconstruction(b, training=True))

        def evaluate():
            model.evaluate(eval_images, verbose=0)

        def forward():
            for b in eval_images:
                tf.nest.map_structure(lambda t: t.numpy(), forward_fn(b))

        runners.update(evaluate=evaluate, forward=forward)
    return runners


def _eval_images(count, batch):
    """``count`` real MNIST test images (noise without tfds) as a dataset of batches."""
    from snf_tf import data

    try:
        images = np.concatenate([b.numpy() for b in data.load("mnist", "test", batch, limit=count)])
    except FileNotFoundError:
        images = np.random.default_rng(1).integers(0, 256, (count, 28, 28, 1)).astype(np.uint8)
    return tf.data.Dataset.from_tensor_slices(images).batch(batch).cache()


def time_models(names, rounds, warmup, overrides=None, batch=100, jit=None, eval_images=0,
                eval_rounds=3):
    """``({name: {"train": [ms...], "sample": [ms...], ...}}, {name: {kind: error}})``, timed
    round-robin; a step that fails (e.g. sampling through a numerically singular inverse) is
    recorded as a failure and not timed again. With ``eval_images`` > 0 also ``"evaluate"`` and
    ``"forward"`` over that many test images, in ``eval_rounds`` of the rounds."""
    keras.utils.set_random_seed(0)
    x = _images(batch)
    images = _eval_images(eval_images, batch) if eval_images else None
    fns = {name: _prepare(name, overrides or {}, x, jit, images) for name in names}
    kinds = ("train", "sample") + (("evaluate", "forward") if images is not None else ())
    failures = {}
    for name, runners in fns.items():
        for _ in range(warmup):
            for kind in kinds:
                try:
                    runners[kind]()
                except tf.errors.OpError as error:
                    failures.setdefault(name, {})[kind] = error.message.splitlines()[0]
    times = {name: {kind: [] for kind in kinds} for name in names}
    order = list(names)
    for r in range(rounds):
        shift = r % len(order)
        for name in order[shift:] + order[:shift]:
            for kind in kinds:
                if kind in failures.get(name, {}):
                    continue
                if kind in ("evaluate", "forward") and r >= eval_rounds:
                    continue
                start = time.perf_counter()
                try:
                    fns[name][kind]()
                except tf.errors.OpError as error:  # e.g. a numerically singular inverse
                    failures.setdefault(name, {})[kind] = error.message.splitlines()[0]
                    continue
                times[name][kind].append(1e3 * (time.perf_counter() - start))
    return times, failures


def _stats(ms):
    if not ms:
        return {"median_ms": float("nan"), "p25_ms": float("nan"), "p75_ms": float("nan"),
                "times_ms": []}
    p25, median, p75 = np.percentile(ms, [25, 50, 75])
    return {"median_ms": float(median), "p25_ms": float(p25), "p75_ms": float(p75),
            "times_ms": [float(t) for t in ms]}


def _plot(rows, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [row["label"] for row in rows]
    y = np.arange(len(rows))
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    for ax, kind, title in ((axes[0], "train", "ms per training batch (100)"),
                            (axes[1], "sample", "ms per sample")):
        ours = [row[kind]["median_ms"] for row in rows]
        paper = [row[f"paper_{kind}_ms"] for row in rows]
        ax.barh(y - 0.2, ours, 0.4, label="this CPU (median)")
        ax.barh(y + 0.2, paper, 0.4, label="paper (GTX 1080Ti)")
        ax.set_xscale("log")
        ax.set_title(title)
        ax.grid(alpha=0.3, axis="x")
    axes[0].set_yticks(y, labels)
    axes[0].invert_yaxis()
    axes[1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="snf-tf bench models",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--rounds", type=int, default=10, help="timed rounds (default 10)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed rounds (default 2)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="config override for the Glow models (e.g. hidden_channels=64)")
    parser.add_argument("--quick", action="store_true",
                        help="FC and conv models only, 3 rounds, 1 warm-up")
    parser.add_argument("--jit", choices=("auto", "true", "false"), default=None,
                        help="jit_compile for the whole step (default: the experiment's own)")
    parser.add_argument("--eval-images", type=int, default=1000,
                        help="test images for the eval ÷ forward ratio (0: skip; default 1000)")
    parser.add_argument("--eval-rounds", type=int, default=3,
                        help="rounds that also time evaluation and forward (default 3)")
    parser.add_argument("--dtype-policy", choices=("float32", "mixed_bfloat16", "mixed_float16"),
                        default="float32",
                        help="Keras dtype policy of every model (default float32). Mixed: the "
                             "flow stays float32, the coupling networks compute in half "
                             "precision (what GPUs and CPUs with AMX-BF16 speed up)")
    parser.add_argument("--out", default="results", help="output folder")
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.warmup < 0 or args.eval_images < 0 or args.eval_rounds < 1:
        parser.error("--rounds and --eval-rounds must be >= 1, --warmup and --eval-images >= 0")
    overrides = dict(experiments.parse_override(text) for text in args.set)
    names = args.models
    if args.quick:
        names = [n for n in names if "glow" not in n]
        args.rounds, args.warmup = 3, 1
    os.makedirs(args.out, exist_ok=True)
    jit = {"auto": "auto", "true": True, "false": False}.get(args.jit)
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(args.dtype_policy)
    try:
        times, failures = time_models(names, args.rounds, args.warmup, overrides, jit=jit,
                                      eval_images=args.eval_images, eval_rounds=args.eval_rounds)
    finally:
        keras.mixed_precision.set_global_policy(previous)
    rows = []
    print(f"{'model':15s} {'ms/batch':>9s} {'paper':>7s} {'ms/sample':>10s} {'paper':>7s}"
          + (f" {'eval÷fwd':>9s}" if args.eval_images else ""))
    for name in names:
        label, paper_train, paper_sample = PAPER_TABLE3[name]
        row = {"name": name, "label": label, "train": _stats(times[name]["train"]),
               "sample": _stats(times[name]["sample"]), "paper_train_ms": paper_train,
               "paper_sample_ms": paper_sample, "failures": failures.get(name, {})}
        if args.eval_images:
            row["evaluate"] = _stats(times[name]["evaluate"])
            row["forward"] = _stats(times[name]["forward"])
            row["eval_over_forward"] = row["evaluate"]["median_ms"] / row["forward"]["median_ms"]
            row["eval_images"] = args.eval_images
        rows.append(row)
        print(f"{label:15s} {row['train']['median_ms']:9.1f} {paper_train:7.1f} "
              f"{row['sample']['median_ms']:10.1f} {paper_sample:7.1f}"
              + (f" {row['eval_over_forward']:9.2f}" if args.eval_images else "")
              + "".join(f"  ({kind} failed: {msg})" for kind, msg in row["failures"].items()),
              flush=True)
    info = {"tensorflow": tf.__version__, "keras": keras.__version__,
            "python": platform.python_version(), "processor": platform.processor(),
            "cpu_count": os.cpu_count(), "gpus": len(tf.config.list_physical_devices("GPU")),
            "TF_ENABLE_ONEDNN_OPTS": os.environ.get("TF_ENABLE_ONEDNN_OPTS"),
            "args": vars(args), "date": time.strftime("%Y-%m-%d %H:%M:%S")}
    with open(os.path.join(args.out, "model_timing.json"), "w") as f:
        json.dump({"machine": info, "results": rows}, f, indent=1)
    _plot(rows, os.path.join(args.out, "model_timing.png"))
    print(f"wrote {os.path.join(args.out, 'model_timing.json')} and model_timing.png")
    return rows


if __name__ == "__main__":
    main()
