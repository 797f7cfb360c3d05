"""SNF training stability over seeds: which runs collapsed, when, and what moved first.

Each arm is a list of run folders of ``studies/diagnostics/batch_trace.py`` (``metrics.json`` and
``trace.json``), one per seed. A run has *collapsed* in an epoch when its validation NLL rose by
more than ``--jump`` (default 10 %, the default of ``snf-tf train``'s guard) over the previous
epoch. For a collapsed run the trace gives the order in which things moved before it
(:func:`trigger`): the training loss, ‖RW − I‖_F overall and per layer, the gradient norm, the
layers' log-dets.

    python studies/diagnostics/stability_study.py --arm "reference=runs/ref_seed*" \\
        --arm "clip=runs/clip_seed*" --out DIR

Prints one table row per arm (collapses / runs, final validation NLL median and range) and one
per run; writes ``OUT/study.json`` and ``OUT/study.png`` (validation NLL by epoch per arm, and the
largest ‖RW − I‖_F and the gradient norm along training).
"""

import argparse
import glob
import json
import math
import os
import statistics

from snf_tf.experiments.run_folder import RunFolder


def _load(folder):
    """``(metrics, trace, config)`` of a run folder; ``trace`` is ``[]`` if it was not traced."""
    run = RunFolder(folder)
    trace_path = run.file("trace.json")
    trace = []
    if os.path.exists(trace_path):
        with open(trace_path) as f:
            trace = json.load(f)
    return run.read_metrics(), trace, run.read_config()["config"]


def per_batch_losses(trace):
    """The training loss of every batch from Keras' running means ``m_k`` (k = batch + 1)."""
    out, previous = [], None
    for row in trace:
        k, mean = row["batch"] + 1, row["loss"]
        if row["batch"] == 0 or previous is None:
            value = mean
        else:
            value = k * mean - (k - 1) * previous
        out.append({"epoch": row["epoch"], "batch": row["batch"], "loss": value})
        previous = mean
    return out


def trigger(trace, epoch, window=50, factor=4.0, growth=3.0):
    """What moved, and when, before a collapse in ``epoch`` (1-based). Positions are
    ``[epoch, batch]``; the baseline of the slow signals is the end of epoch 1 (after the learned
    inverses caught up with the warm-up's first steps).

    - ``loss``: the first batch of ``epoch`` whose training loss is more than ``factor`` median
      absolute deviations from the median of the ``window`` batches before it (either way: the
      cheap SNF loss *falls* when R drifts from W⁻¹), and the direction;
    - ``inverse_error``: the first traced batch after epoch 1 at which the largest ‖RW − I‖_F
      exceeded ``growth`` × its baseline, and the layer that crossed its own such bound first;
    - ``grad_norm``: the first traced batch after epoch 1 whose gradient norm on the fixed images
      exceeded ``growth`` × the median of those before it;
    - ``log_det_moved_most``: the layer whose mean log-det changed most from the baseline to the
      end of ``epoch``.
    """
    found = {}
    losses = [r for r in per_batch_losses(trace) if r["epoch"] == epoch]
    for i in range(window, len(losses)):
        recent = [r["loss"] for r in losses[i - window:i]]
        median = statistics.median(recent)
        spread = statistics.median(abs(v - median) for v in recent) or 1.0
        if abs(losses[i]["loss"] - median) > factor * spread:
            found["loss"] = [epoch, losses[i]["batch"]]
            found["loss_direction"] = "up" if losses[i]["loss"] > median else "down"
            break
    before = [r for r in trace if r["epoch"] <= epoch]
    first = [r for r in before if r["epoch"] == 1]
    later = [r for r in before if r["epoch"] > 1]
    base = next((r for r in reversed(first) if r.get("inverse_error_max") is not None), None)
    if base is not None:
        hit = next((r for r in later if (r.get("inverse_error_max") or 0)
                    > growth * base["inverse_error_max"]), None)
        if hit is not None:
            found["inverse_error"] = [hit["epoch"], hit["batch"]]
    norms = [r for r in later if r.get("grad_norm") is not None]
    for i in range(3, len(norms)):
        if norms[i]["grad_norm"] > growth * statistics.median(r["grad_norm"] for r in norms[:i]):
            found["grad_norm"] = [norms[i]["epoch"], norms[i]["batch"]]
            break
    layered = [r for r in before if "layers" in r]
    base_layers = next((r for r in reversed(layered) if r["epoch"] == 1), None)
    if base_layers is not None and layered[-1]["epoch"] == epoch:
        start, end = base_layers["layers"], layered[-1]["layers"]
        moved = max(end, key=lambda n: abs(end[n][0] - start[n][0]))
        found["log_det_moved_most"] = moved
        found["log_det_change"] = end[moved][0] - start[moved][0]
        for row in (r for r in layered if r["epoch"] > 1):
            over = [n for n, (_, e) in row["layers"].items()
                    if e is not None and start[n][1] and e > growth * start[n][1]]
            if over:
                found["first_layer_off"] = max(over, key=lambda n: row["layers"][n][1])
                found["first_layer_off_at"] = [row["epoch"], row["batch"]]
                break
    return found


def analyse(folder, jump, epochs=None):
    """One run's row of the study; ``epochs``: as if it had stopped after that many."""
    metrics, trace, config = _load(folder)
    if epochs is not None:
        metrics["epochs"] = metrics["epochs"][:epochs]
        trace = [r for r in trace if r["epoch"] <= epochs]
        last = metrics["epochs"][-1]  # test NLL at the best validation epoch so far
        metrics["best"] = {"test_nll": last.get("test_nll")}
    val = [e.get("val_nll") for e in metrics["epochs"]]
    collapsed = [i + 1 for i in range(1, len(val))
                 if val[i] is not None and val[i - 1] is not None
                 and (not math.isfinite(val[i]) or val[i] > (1 + jump) * val[i - 1])]
    errors = [e.get("inverse_error_max") for e in metrics["epochs"]]
    traced = [r["inverse_error_max"] for r in trace if r.get("inverse_error_max") is not None]
    norms = [r["grad_norm"] for r in trace if r.get("grad_norm") is not None]
    run = {"folder": folder, "seed": config["seed"], "val_nll": val,
           "grad_norm_median": statistics.median(norms) if norms else None,
           "grad_norm_max": max(norms) if norms else None,
           "test_nll_at_best": (metrics.get("best") or {}).get("test_nll"),
           "inverse_error_max_by_epoch": errors,
           "inverse_error_max_traced": max(traced) if traced else None,
           "collapsed_epochs": collapsed, "status": metrics.get("status"),
           "rollbacks": [ev for e in metrics["epochs"] for ev in e.get("rollbacks", [])]}
    if collapsed:
        run["trigger"] = trigger(trace, collapsed[0])
    return run, trace


def _spread(values):
    if not values:
        return "–"
    return f"{statistics.median(values):.1f} ({min(values):.1f}–{max(values):.1f})"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arm", action="append", required=True, metavar="NAME=GLOB",
                        help="an arm and the glob of its run folders (repeatable); GLOB@N: "
                        "the runs' first N epochs only")
    parser.add_argument("--jump", type=float, default=0.1)
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    arms, traces = {}, {}
    for text in args.arm:
        name, _, pattern = text.partition("=")
        pattern, _, epochs = pattern.partition("@")
        epochs = int(epochs) if epochs else None
        folders = sorted(f for f in glob.glob(pattern) if RunFolder(f).has_run())
        if not folders:
            parser.error(f"--arm {name}: no run folders match {pattern!r}")
        results = [analyse(f, args.jump, epochs) for f in folders]
        arms[name] = [r for r, _ in results]
        traces[name] = [t for _, t in results]

    print(f"{'arm':<16} {'runs':>4} {'collapsed':>9} {'final val NLL (median, range)':>30} "
          f"{'test NLL at best val':>26}")
    summary = {}
    for name, runs in arms.items():
        final = [r["val_nll"][-1] for r in runs if r["val_nll"] and r["val_nll"][-1] is not None]
        test = [r["test_nll_at_best"] for r in runs if r["test_nll_at_best"] is not None]
        bad = sum(bool(r["collapsed_epochs"]) for r in runs)
        summary[name] = {"runs": len(runs), "collapsed": bad,
                         "final_val_nll_median": statistics.median(final) if final else None,
                         "final_val_nll_range": [min(final), max(final)] if final else None,
                         "test_nll_median": statistics.median(test) if test else None,
                         "test_nll_range": [min(test), max(test)] if test else None}
        print(f"{name:<16} {len(runs):>4} {bad:>9} {_spread(final):>30} {_spread(test):>26}")
    for name, runs in arms.items():
        for r in runs:
            vals = " → ".join(f"{v:.1f}" for v in r["val_nll"] if v is not None)
            extra = f"  collapsed in epoch {r['collapsed_epochs']} {r.get('trigger')}" \
                if r["collapsed_epochs"] else ""
            traced = r["inverse_error_max_traced"]
            traced = "–" if traced is None else f"{traced:.3g}"
            norm = r["grad_norm_median"]
            norm = "" if norm is None else (f"; gradient norm median {norm:.0f}, max "
                                            f"{r['grad_norm_max']:.0f}")
            print(f"  {name} seed {r['seed']}: val {vals}; max ‖RW − I‖_F traced "
                  f"{traced}{norm}{extra}")
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "study.json"), "w") as f:
        json.dump({"jump": args.jump, "summary": summary, "arms": arms}, f, indent=1)
    _plot(arms, traces, os.path.join(args.out, "study.png"))


def _plot(arms, traces, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right, norms) = plt.subplots(1, 3, figsize=(16, 4))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (name, runs) in enumerate(arms.items()):
        color = colors[i % len(colors)]
        for j, (run, trace) in enumerate(zip(runs, traces[name])):
            label = name if j == 0 else None
            val = [v for v in run["val_nll"] if v is not None]
            left.plot(range(1, len(val) + 1), val, "o-", color=color, label=label, alpha=0.8)
            points = [(k, r["inverse_error_max"]) for k, r in enumerate(trace)
                      if r.get("inverse_error_max") is not None]
            if points:
                right.plot(*zip(*points), color=color, label=label, alpha=0.7, lw=1)
            points = [(k, r["grad_norm"]) for k, r in enumerate(trace)
                      if r.get("grad_norm") is not None]
            if points:
                norms.plot(*zip(*points), color=color, label=label, alpha=0.7, lw=1)
    left.set(xlabel="epoch", ylabel="exact validation NLL (nats)", yscale="log",
             title="validation NLL per seed")
    left.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    right.set(xlabel="training step", ylabel="largest ‖RW − I‖_F", yscale="log",
              title="learned-inverse error along training")
    norms.set(xlabel="training step", ylabel="‖∇ loss‖₂ on 100 fixed images", yscale="log",
              title="gradient norm along training")
    for axis in (left, right, norms):
        axis.grid(alpha=0.3)
        if axis.get_legend_handles_labels()[0]:
            axis.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
