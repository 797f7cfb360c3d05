"""Table A.5 analogue: the small SNF Glow with GECO-adapted λ against the same model with a fixed λ.

Two ``snf-tf train geco_selfnorm_glow_mnist`` run folders (one with ``--set geco_rate=null``):

    snf-tf train geco_selfnorm_glow_mnist --epochs 20 --no-guard --out runs/geco
    snf-tf train geco_selfnorm_glow_mnist --epochs 20 --no-guard --set geco_rate=null \\
        --out runs/fixed
    python studies/geco/geco_table.py --arm geco=runs/geco --arm fixed=runs/fixed --out DIR

Prints per arm the validation NLL, the test NLL at the best validation epoch, the largest
‖RW − I‖_F and λ (median and max over the SNF layers) at chosen epochs; writes ``OUT/geco.json``
and ``OUT/geco.png`` (validation NLL, ‖RW − I‖_F and λ per epoch); then one line per arm
(:func:`summary`: the collapse epoch, the test NLL at the best validation epoch, ‖RW − I‖_F).
"""

import argparse
import json
import math
import os

from snf_tf.experiments.run_folder import RunFolder


def arm_rows(metrics, config):
    """Per epoch: val NLL, test NLL (at the best validation epoch so far), ‖RW − I‖, λ."""
    fixed = config["model_kwargs"].get("reconstruction_weight", 1.0)
    rows = []
    for entry in metrics["epochs"]:
        weights = entry.get("reconstruction_weight") or {"median": fixed, "max": fixed,
                                                         "min": fixed}
        rows.append({"epoch": entry["epoch"], "val_nll": entry.get("val_nll"),
                     "test_nll": entry.get("test_nll"), "best_epoch": entry.get("best_epoch"),
                     "inverse_error_max": entry.get("inverse_error_max"),
                     "lambda_median": weights["median"], "lambda_max": weights["max"],
                     "train_seconds": entry.get("train_seconds")})
    return rows


def summary(rows, best, jump=0.1):
    """One run in a line: the first epoch whose validation NLL rose more than ``jump`` over the
    epoch before (None: no collapse), the test NLL at the best validation epoch, the largest
    ‖RW − I‖_F (and its epoch) and the last, and the largest λ at the end."""
    val = [r["val_nll"] for r in rows]
    collapsed = next((i + 1 for i in range(1, len(val)) if not math.isfinite(val[i])
                      or val[i] > (1 + jump) * val[i - 1]), None)
    errors = [r["inverse_error_max"] for r in rows]
    worst = max(range(len(errors)), key=errors.__getitem__)
    best = best or {}
    return {"epochs": len(rows), "collapsed_epoch": collapsed,
            "test_nll_at_best": best.get("test_nll"), "best_epoch": best.get("epoch"),
            "inverse_error_max": errors[worst], "inverse_error_max_epoch": worst + 1,
            "inverse_error_last": errors[-1], "lambda_max_last": rows[-1]["lambda_max"]}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arm", action="append", required=True, metavar="NAME=RUN")
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    arms = {}
    for text in args.arm:
        name, _, folder = text.partition("=")
        run = RunFolder(folder)
        metrics, config = run.read_metrics(), run.read_config()["config"]
        rows = arm_rows(metrics, config)
        arms[name] = {"run": folder, "geco_rate": config["geco_rate"], "seed": config["seed"],
                      "epochs": rows, "best": metrics.get("best"),
                      "summary": summary(rows, metrics.get("best"))}
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "geco.json"), "w") as f:
        json.dump(arms, f, indent=1)
    print(f"{'arm':<8} {'epoch':>5} {'val NLL':>9} {'test NLL (best)':>16} {'max ‖RW−I‖':>11} "
          f"{'λ median':>9} {'λ max':>8}")
    for name, arm in arms.items():
        rows = arm["epochs"]
        shown = sorted({1, 5, 10, 15, len(rows)} & set(range(1, len(rows) + 1)))
        for epoch in shown:
            r = rows[epoch - 1]
            print(f"{name:<8} {epoch:>5} {r['val_nll']:>9.2f} {r['test_nll']:>16.2f} "
                  f"{r['inverse_error_max']:>11.4f} {r['lambda_median']:>9.3g} "
                  f"{r['lambda_max']:>8.3g}")
    print(f"\n{'arm':<8} {'epochs':>6} {'collapsed':>9} {'test NLL (epoch)':>17} "
          f"{'largest ‖RW−I‖ (epoch)':>23} {'last':>6} {'λ max':>6}")
    for name, arm in arms.items():
        row = arm["summary"]
        collapsed = row["collapsed_epoch"] or "no"
        print(f"{name:<8} {row['epochs']:>6} {collapsed:>9} "
              f"{row['test_nll_at_best']:>9.2f} ({row['best_epoch']:>2}) "
              f"{row['inverse_error_max']:>15.3g} ({row['inverse_error_max_epoch']:>2}) "
              f"{row['inverse_error_last']:>6.3g} {row['lambda_max_last']:>6.3g}")
    _plot(arms, os.path.join(args.out, "geco.png"))


def _plot(arms, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    labelled = set()
    for arm in arms.values():  # one colour per kind of arm, one line per seed
        rows = arm["epochs"]
        kind = "GECO" if arm["geco_rate"] else "fixed λ"
        color = "C0" if arm["geco_rate"] else "C3"
        label = None if kind in labelled else kind
        labelled.add(kind)
        epochs = [r["epoch"] for r in rows]
        axes[0].plot(epochs, [r["val_nll"] for r in rows], "o-", ms=3, color=color, alpha=0.7,
                     label=label)
        axes[1].plot(epochs, [r["inverse_error_max"] for r in rows], "o-", ms=3, color=color,
                     alpha=0.7, label=label)
        if arm["geco_rate"]:
            axes[2].plot(epochs, [r["lambda_median"] for r in rows], "o-", ms=3, color=color,
                         alpha=0.7, label=None if label is None else "GECO (median)")
            axes[2].plot(epochs, [r["lambda_max"] for r in rows], "--", lw=1, color="C1",
                         alpha=0.7, label=None if label is None else "GECO (max)")
    axes[0].set(xlabel="epoch", ylabel="exact validation NLL (nats)", yscale="log",
                title="validation NLL")
    axes[1].set(xlabel="epoch", ylabel="largest ‖RW − I‖_F", yscale="log",
                title="learned-inverse error")
    axes[2].set(xlabel="epoch", ylabel="λ", yscale="log", title="reconstruction weight λ")
    for axis in axes:
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    counts = {}
    for arm in arms.values():
        kind = f"GECO rate {arm['geco_rate']:g}" if arm["geco_rate"] else "fixed λ"
        counts[kind] = counts.get(kind, 0) + 1
    fig.suptitle("geco_selfnorm_glow_mnist, seeds " + ", ".join(
        sorted({str(arm["seed"]) for arm in arms.values()})) + ": " + " vs ".join(
        f"{kind} ({n} runs)" for kind, n in counts.items()))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
