"""SNF training stability over seeds: which runs collapsed, when, and what moved first.

Each arm is a list of run folders of ``benchmarks/batch_trace.py`` (``metrics.json`` and
``trace.json``), one per seed. A run has *collapsed* in an epoch when its validation NLL rose by
more than ``--jump`` (default 10 %, the default of ``snf-tf train``'s guard) over the previous
epoch. For a collapsed run the trace gives the trigger, in the collapsing epoch: the first batch
at which the per-batch training loss left its running band; the first traced batch at which the
largest ‖RW − I‖_F exceeded 3× its value at the epoch's start, and at which the gradient norm on
the fixed images exceeded 3× its running median; and, from the per-layer rows (``--layers``),
the layer whose mean log-det moved most and the one with the largest ‖RW − I‖_F by then.

    python benchmarks/stability_study.py --arm "reference=runs/ref_seed*" \\
        --arm "clip=runs/clip_seed*" --out benchmarks/measured/stability_glow

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


def _load(folder):
    with open(os.path.join(folder, "metrics.json")) as f:
        metrics = json.load(f)
    trace_path = os.path.join(folder, "trace.json")
    trace = json.load(open(trace_path)) if os.path.exists(trace_path) else []
    with open(os.path.join(folder, "config.json")) as f:
        config = json.load(f)["config"]
    return metrics, trace, config


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


def trigger(trace, epoch, window=50, factor=4.0):
    """Where a collapse in ``epoch`` (1-based) started, from the trace: the first batch whose loss
    is more than ``factor`` median absolute deviations above the median of the ``window``
    batches before it, and the first batch at which the largest ‖RW − I‖_F passed 3× its value at
    the epoch's start."""
    losses = [r for r in per_batch_losses(trace) if r["epoch"] == epoch]
    loss_batch = None
    for i in range(window, len(losses)):
        recent = [r["loss"] for r in losses[i - window:i]]
        median = statistics.median(recent)
        spread = statistics.median(abs(v - median) for v in recent) or 1.0
        if losses[i]["loss"] > median + factor * spread:
            loss_batch = losses[i]["batch"]
            break
    errors = [(r["batch"], r["inverse_error_max"]) for r in trace
              if r["epoch"] == epoch and r.get("inverse_error_max") is not None]
    error_batch = None
    if errors:
        start = errors[0][1]
        error_batch = next((b for b, e in errors if e > 3 * start), None)
    norms = [(r["batch"], r["grad_norm"]) for r in trace
             if r["epoch"] == epoch and r.get("grad_norm") is not None]
    norm_batch = next((b for i, (b, g) in enumerate(norms) if i >= 3
                       and g > 3 * statistics.median(n for _, n in norms[:i])), None)
    found = {"loss_batch": loss_batch, "inverse_error_batch": error_batch,
             "grad_norm_batch": norm_batch}
    return dict(found, **_moved_layers(trace, epoch, [b for b in found.values() if b is not None]))


def _moved_layers(trace, epoch, batches):
    """From the per-layer rows of ``epoch``: the layer whose mean log-det changed most from the
    epoch's first row to the first row at or after the earliest trigger, and the layer with the
    largest ‖RW − I‖_F in that row."""
    rows = [r for r in trace if r["epoch"] == epoch and "layers" in r]
    if len(rows) < 2:
        return {}
    at = min(batches) if batches else rows[-1]["batch"]
    end = next((r for r in rows if r["batch"] >= at), rows[-1])
    first = rows[0]["layers"]
    moved = max(end["layers"], key=lambda n: abs(end["layers"][n][0] - first[n][0]))
    errors = {n: v[1] for n, v in end["layers"].items() if v[1] is not None}
    return {"layer_rows": [rows[0]["batch"], end["batch"]], "log_det_moved_most": moved,
            "log_det_change": end["layers"][moved][0] - first[moved][0],
            "worst_inverse": max(errors, key=errors.get) if errors else None}


def analyse(folder, jump):
    metrics, trace, config = _load(folder)
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
                        help="an arm and the glob of its run folders (repeatable)")
    parser.add_argument("--jump", type=float, default=0.1)
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    arms, traces = {}, {}
    for text in args.arm:
        name, _, pattern = text.partition("=")
        folders = sorted(f for f in glob.glob(pattern)
                         if os.path.exists(os.path.join(f, "metrics.json")))
        if not folders:
            parser.error(f"--arm {name}: no run folders match {pattern!r}")
        results = [analyse(f, args.jump) for f in folders]
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
