"""Step profile of one experiment: where a training step and an exact evaluation batch spend time.

    snf-tf bench profile selfnorm_cnn_mnist                 # by layer family
    snf-tf bench profile selfnorm_cnn_mnist --by-layer      # and by layer
    snf-tf bench profile selfnorm_glow_mnist --set hidden_channels=64

What is timed (batch 100 of real MNIST when tfds has it, else noise images; medians over
``--rounds``, everything timed round-robin so machine noise hits all parts alike):

* **train step** — the model's compiled Keras train function (forward, backward, reconstruction
  losses, Adam update), as ``fit`` runs it;
* **eval batch** — the compiled test function (exact log-dets from the caches), as ``evaluate``;
  and **refresh** — recomputing the exact log-det caches (once per evaluation, not per batch);
* **each layer alone** — a ``tf.function`` of that layer's forward on the input it sees in the
  model (training: cheap path + reconstruction, with the backward pass to its input and weights;
  evaluation: the exact forward). Summed per layer family (class); ``other`` is the step minus
  the sum of its layers (loss, optimizer update, the glue between layers). The cost of calling
  a ``tf.function`` at all (measured with a trivial one) is subtracted from each layer's time.

The **roofline** column: FLOPs of the convs, matmuls and dense linear algebra (slogdet, solves)
counted analytically from the shapes in the traced forward graph (training: 3× the forward's, the
usual forward + two backward products; ``tf.cond`` branches are not counted), divided by the conv
and matmul throughput measured in the same run; ``× floor`` is measured time ÷ that compute floor
(1 = compute-bound at the machine's peak; large = time goes to memory traffic and per-op overhead).
"""

import argparse
import json
import os
import platform
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

__all__ = ["count_flops", "machine_throughput", "main", "profile"]


# -- FLOPs ---------------------------------------------------------------------------------------
def _shape(tensor):
    return [int(d) if d is not None else 1 for d in tensor.shape]


def _op_flops(op):
    """``(kind, flops)`` of one graph op, or None for ops that are not counted."""
    import numpy as np

    kind = op.type
    try:
        if kind == "Conv2D":
            kh, kw, cin, _ = _shape(op.inputs[1])
            return "conv", 2.0 * np.prod(_shape(op.outputs[0])) * kh * kw * cin
        if kind in ("MatMul", "BatchMatMulV2", "BatchMatMulV3", "BatchMatMul"):
            a, out = _shape(op.inputs[0]), _shape(op.outputs[0])
            transpose = op.get_attr("transpose_a" if kind == "MatMul" else "adj_x")
            inner = a[-2] if transpose else a[-1]
            return "matmul", 2.0 * np.prod(out) * inner
        if kind in ("LogMatrixDeterminant", "MatrixDeterminant", "Qr", "MatrixInverse",
                    "MatrixSolve", "Lu"):
            a = _shape(op.inputs[0])
            n, batch = a[-1], np.prod(a[:-2]) if len(a) > 2 else 1
            factor = {"MatrixInverse": 2.0, "Qr": 4.0 / 3.0}.get(kind, 2.0 / 3.0)
            flops = factor * n ** 3
            if kind == "MatrixSolve":
                flops += 2.0 * n * n * _shape(op.inputs[1])[-1]
            return "matmul", batch * flops
    except (ValueError, TypeError, IndexError):  # unknown shapes: not counted
        return None
    return None


def _walk(graph, seen=None):
    """Every op of ``graph`` and of the functions it calls (nested tf.functions, XLA kernels),
    but not the branches of a ``tf.cond``: they may not run (the exact-log-det fallback of a
    stale cache is one), so the count is a floor."""
    seen = set() if seen is None else seen
    for op in graph.get_operations():
        yield op
        for attr in ("f", "body"):
            try:
                function = op.get_attr(attr)
            except (ValueError, TypeError):
                continue
            name = getattr(function, "name", None)
            if not name or name in seen:
                continue
            seen.add(name)
            sub = graph._get_function(name)  # no public API to reach a called function's graph
            if sub is not None and hasattr(sub, "graph"):
                yield from _walk(sub.graph, seen)


def count_flops(fn, *specs):
    """``{"conv": flops, "matmul": flops}`` of the traced graph of ``fn`` on ``specs``."""
    import tensorflow as tf

    graph = tf.function(fn).get_concrete_function(*specs).graph
    totals = {"conv": 0.0, "matmul": 0.0}
    for op in _walk(graph):
        counted = _op_flops(op)
        if counted:
            totals[counted[0]] += float(counted[1])
    return totals


def machine_throughput(rounds=5):
    """``{"conv": GFLOP/s, "matmul": GFLOP/s}`` of this machine in TensorFlow: a 2048² float32
    matmul and a 3×3, 128-channel conv on a 16×64×64 batch (medians)."""
    import numpy as np
    import tensorflow as tf

    a = tf.random.normal([2048, 2048])
    x, k = tf.random.normal([16, 64, 64, 128]), tf.random.normal([3, 3, 128, 128])
    matmul = tf.function(lambda a: tf.matmul(a, a))
    conv = tf.function(lambda x, k: tf.nn.conv2d(x, k, 1, "SAME"))
    work = {"matmul": (lambda: matmul(a), 2.0 * 2048 ** 3),
            "conv": (lambda: conv(x, k), 2.0 * 16 * 64 * 64 * 9 * 128 * 128)}
    result = {}
    for name, (run, flops) in work.items():
        run().numpy()
        times = []
        for _ in range(rounds):
            start = time.perf_counter()
            run().numpy()
            times.append(time.perf_counter() - start)
        result[name] = flops / float(np.median(times)) / 1e9
    return result


# -- timing ----------------------------------------------------------------------------------------
def _images(batch):
    from snf_tf.experiments.bench.timing import _images

    return _images(batch)


def _layer_runners(model, x, jit):
    """``[(layer, train_fn, eval_fn)]``: each layer alone on the input it sees in the model."""
    import tensorflow as tf

    runners = []
    h_train = h_eval = tf.convert_to_tensor(model._check_data(x))
    for layer in model.flow_layers:
        x_train, x_eval = h_train, h_eval

        def train(inputs, layer=layer):
            with tf.GradientTape() as tape:
                tape.watch(inputs)
                z, log_det, recon = layer.forward_with_reconstruction(inputs, training=True)
                loss = tf.reduce_sum(z) + tf.reduce_sum(log_det)
                if recon is not None:
                    loss = loss + recon
            return tape.gradient(loss, [inputs] + layer.trainable_weights)

        def evaluate(inputs, layer=layer):
            return layer.forward(inputs, exact=True)

        train_fn = tf.function(train, jit_compile=jit and layer.supports_xla)
        eval_fn = tf.function(evaluate, jit_compile=jit and layer.supports_xla)
        runners.append((layer, (lambda f=train_fn, v=x_train: f(v)),
                        (lambda f=eval_fn, v=x_eval: f(v)), x_train))
        h_train = layer.forward(h_train, training=True)[0]
        h_eval = layer.forward(h_eval, exact=True)[0]
    return runners


def _resolve_jit(setting):
    import tensorflow as tf

    if setting == "auto":  # Keras: XLA only where a GPU is visible
        return bool(tf.config.list_physical_devices("GPU"))
    return bool(setting)


def _block(result):
    import tensorflow as tf

    for value in tf.nest.flatten(result):
        if hasattr(value, "numpy"):
            value.numpy()


def profile(name, overrides=None, batch=100, rounds=10, warmup=2):
    """Profile experiment ``name``; returns the result dict (see the module docstring)."""
    import keras
    import numpy as np
    import tensorflow as tf

    from snf_tf import callbacks, experiments

    keras.utils.set_random_seed(0)
    cfg = experiments.config(name, **(overrides or {}))
    model = experiments.build_model(cfg)
    x = _images(batch)
    model.build((None,) + x.shape[1:])
    jit = _resolve_jit(cfg["jit_compile"])
    schedule = callbacks.LinearWarmup(cfg["learning_rate"], max(1, cfg["warmup_epochs"]) * 500)
    model.compile(optimizer=keras.optimizers.Adam(schedule), jit_compile=cfg["jit_compile"])
    model.log_prob(x[:2])  # data-dependent initialisation (ActNorm)
    model.refresh_log_dets()
    model.make_train_function()
    model.make_test_function()
    x_tensor = tf.constant(x)
    # the compiled step functions on an iterator, as fit/evaluate call them (train_on_batch
    # would add building a data adapter to every step)
    batches = iter(tf.data.Dataset.from_tensors(x_tensor).repeat())

    def train_step():
        logs = model.train_function(batches)
        logs = logs.get_value() if hasattr(logs, "get_value") else logs
        if not np.isfinite(float(logs["loss"])):
            raise FloatingPointError(f"{name}: non-finite training loss")

    def eval_batch():
        logs = model.test_function(batches)
        _block(logs.get_value() if hasattr(logs, "get_value") else logs)

    # what calling a tf.function costs by itself: subtracted from each layer timed alone
    dispatch_fn = tf.function(lambda v: v[:1])

    runners = _layer_runners(model, x_tensor, jit)
    # Two phases: training steps move the weights and so make the exact-log-det caches stale,
    # which would make every evaluation batch recompute them; evaluation is timed after a refresh.
    dispatch = ("dispatch", lambda: dispatch_fn(x_tensor))
    phases = [
        dict([("train step", train_step), dispatch]
             + [(("train", i), r[1]) for i, r in enumerate(runners)]),
        dict([("eval batch", eval_batch), ("refresh", model.refresh_log_dets), dispatch]
             + [(("eval", i), r[2]) for i, r in enumerate(runners)]),
    ]
    times = {}
    for phase, parts in enumerate(phases):
        model.refresh_log_dets()
        for _ in range(warmup):
            for run in parts.values():
                _block(run())
        keys = list(parts)
        for r in range(rounds):
            shift = (r * 7) % len(keys)
            for key in keys[shift:] + keys[:shift]:
                start = time.perf_counter()
                _block(parts[key]())
                times.setdefault((phase, key), []).append(1e3 * (time.perf_counter() - start))
    dispatches = [float(np.median(ms)) for (phase, key), ms in times.items() if key == "dispatch"]
    times = {key: ms for (phase, key), ms in times.items() if key != "dispatch"}
    median = {key: float(np.median(ms)) for key, ms in times.items()}
    dispatch = float(np.mean(dispatches))
    for key in median:
        if isinstance(key, tuple):
            median[key] = max(median[key] - dispatch, 0.0)

    # FLOPs: training = 3 × the training-mode forward's, evaluation = the exact forward's
    spec = tf.TensorSpec(x_tensor.shape, x_tensor.dtype)
    flops_train = count_flops(lambda v: model.forward_with_reconstruction(v, training=True), spec)
    flops_train = {k: 3.0 * v for k, v in flops_train.items()}
    flops_eval = count_flops(lambda v: model.forward(v, exact=True), spec)
    peak = machine_throughput()

    def floor_ms(flops):
        return 1e3 * (flops["conv"] / (peak["conv"] * 1e9)
                      + flops["matmul"] / (peak["matmul"] * 1e9))

    layers = []
    for i, (layer, _, _, layer_input) in enumerate(runners):
        layer_spec = tf.TensorSpec(layer_input.shape, layer_input.dtype)
        train_flops = count_flops(
            lambda v, layer=layer: layer.forward_with_reconstruction(v, training=True), layer_spec)
        layers.append({"name": layer.name, "family": type(layer).__name__,
                       "train_ms": median[("train", i)], "eval_ms": median[("eval", i)],
                       "train_gflop": 3.0 * sum(train_flops.values()) / 1e9})
    families = {}
    for row in layers:
        family = families.setdefault(row["family"], {"family": row["family"], "count": 0,
                                                     "train_ms": 0.0, "eval_ms": 0.0,
                                                     "train_gflop": 0.0})
        family["count"] += 1
        for key in ("train_ms", "eval_ms", "train_gflop"):
            family[key] += row[key]
    step, evaluation = median["train step"], median["eval batch"]
    result = {
        "experiment": name, "overrides": overrides or {}, "batch": batch, "rounds": rounds,
        "jit_compile": cfg["jit_compile"], "xla_step": jit,
        "train_step_ms": step, "eval_batch_ms": evaluation, "refresh_ms": median["refresh"],
        "dispatch_ms": dispatch,
        "train_other_ms": step - sum(r["train_ms"] for r in layers),
        "eval_other_ms": evaluation - sum(r["eval_ms"] for r in layers),
        "train_gflop": sum(flops_train.values()) / 1e9,
        "eval_gflop": sum(flops_eval.values()) / 1e9,
        "throughput_gflops": peak,
        "train_floor_ms": floor_ms(flops_train), "eval_floor_ms": floor_ms(flops_eval),
        "families": sorted(families.values(), key=lambda f: -f["train_ms"]),
        "layers": layers,
    }
    result["train_x_floor"] = step / max(result["train_floor_ms"], 1e-9)
    result["eval_x_floor"] = evaluation / max(result["eval_floor_ms"], 1e-9)
    return result


# -- report ----------------------------------------------------------------------------------------
def _print(result, by_layer):
    step, evaluation = result["train_step_ms"], result["eval_batch_ms"]
    print(f"{result['experiment']}  batch {result['batch']}  XLA step: {result['xla_step']}")
    print(f"{'family':22s} {'n':>3s} {'train ms':>9s} {'%':>5s} {'eval ms':>8s} {'%':>5s} "
          f"{'GFLOP':>7s}")
    rows = [(f["family"], f["count"], f["train_ms"], f["eval_ms"], f["train_gflop"])
            for f in result["families"]]
    rows.append(("other (loss, update, glue)", "", result["train_other_ms"],
                 result["eval_other_ms"], float("nan")))
    for family, count, train_ms, eval_ms, gflop in rows:
        print(f"{family:22s} {count!s:>3s} {train_ms:9.1f} {100 * train_ms / step:5.1f} "
              f"{eval_ms:8.1f} {100 * eval_ms / evaluation:5.1f} {gflop:7.3f}")
    print(f"{'whole':22s} {'':>3s} {step:9.1f} {'':>5s} {evaluation:8.1f} {'':>5s} "
          f"{result['train_gflop']:7.3f}")
    peak = result["throughput_gflops"]
    print(f"roofline: conv {peak['conv']:.0f} GFLOP/s, matmul {peak['matmul']:.0f} GFLOP/s → "
          f"train floor {result['train_floor_ms']:.2f} ms ({result['train_x_floor']:.1f}× floor), "
          f"eval floor {result['eval_floor_ms']:.2f} ms ({result['eval_x_floor']:.1f}× floor); "
          f"refresh of exact log-dets {result['refresh_ms']:.1f} ms per evaluation")
    if by_layer:
        print(f"\n{'layer':28s} {'family':20s} {'train ms':>9s} {'eval ms':>8s}")
        for row in result["layers"]:
            print(f"{row['name']:28s} {row['family']:20s} {row['train_ms']:9.2f} "
                  f"{row['eval_ms']:8.2f}")


def _plot(results, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    families = []
    for result in results:
        for f in result["families"]:
            if f["family"] not in families:
                families.append(f["family"])
    families.append("other")
    colours = plt.get_cmap("tab20")(np.linspace(0, 1, max(len(families), 2)))
    fig, axes = plt.subplots(1, 2, figsize=(12, 1.2 + 0.6 * len(results) + 1.5), squeeze=False)
    labels = [result["experiment"] for result in results]
    for ax, kind, title in ((axes[0, 0], "train", "training step (ms)"),
                            (axes[0, 1], "eval", "exact evaluation batch (ms)")):
        left = np.zeros(len(results))
        for family, colour in zip(families, colours):
            values = []
            for result in results:
                if family == "other":
                    values.append(max(result[f"{kind}_other_ms"], 0.0))
                else:
                    match = [f for f in result["families"] if f["family"] == family]
                    values.append(match[0][f"{kind}_ms"] if match else 0.0)
            ax.barh(labels, values, left=left, color=colour, label=family)
            left += np.asarray(values)
        floors = [result[f"{kind}_floor_ms"] for result in results]
        ax.scatter(floors, labels, marker="|", s=300, color="black", label="compute floor")
        ax.set_title(title)
        ax.grid(alpha=0.3, axis="x")
    axes[0, 0].invert_yaxis()
    axes[0, 1].invert_yaxis()
    axes[0, 1].legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None):
    from snf_tf import experiments

    parser = argparse.ArgumentParser(prog="snf-tf bench profile",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="+", metavar="NAME", help="experiment name(s)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="config override (e.g. hidden_channels=64, jit_compile=true)")
    parser.add_argument("--by-layer", action="store_true", help="also print every layer")
    parser.add_argument("--rounds", type=int, default=10, help="timed rounds (default 10)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed rounds (default 2)")
    parser.add_argument("--batch", type=int, default=100, help="batch size (default 100)")
    parser.add_argument("--out", default="results", help="output folder")
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.warmup < 0 or args.batch < 1:
        parser.error("--rounds and --batch must be >= 1, --warmup >= 0")
    for name in args.names:
        try:
            experiments.get(name)
        except ValueError as error:
            parser.error(str(error))
    overrides = dict(experiments.parse_override(text) for text in args.set)
    import keras
    import tensorflow as tf

    results = []
    for name in args.names:
        result = profile(name, overrides, args.batch, args.rounds, args.warmup)
        _print(result, args.by_layer)
        print()
        results.append(result)
    os.makedirs(args.out, exist_ok=True)
    stem = "profile" if len(results) > 1 else f"profile_{results[0]['experiment']}"
    info = {"tensorflow": tf.__version__, "keras": keras.__version__,
            "python": platform.python_version(), "processor": platform.processor(),
            "cpu_count": os.cpu_count(), "gpus": len(tf.config.list_physical_devices("GPU")),
            "onednn": _onednn_on(), "args": vars(args), "date": time.strftime("%Y-%m-%d %H:%M:%S")}
    with open(os.path.join(args.out, f"{stem}.json"), "w") as f:
        json.dump({"machine": info, "results": results}, f, indent=1)
    _plot(results, os.path.join(args.out, f"{stem}.png"))
    print(f"wrote {os.path.join(args.out, stem)}.json and .png")
    return results


def _onednn_on():
    from snf_tf import _environment

    return _environment.onednn_enabled()


if __name__ == "__main__":
    main()
