"""Table A.5 analogue: the small SNF Glow with GECO-adapted λ against the same model with a fixed λ.

Two ``snf-tf train geco_selfnorm_glow_mnist`` run folders (one with ``--set geco_rate=null``):

    snf-tf train geco_selfnorm_glow_mnist --epochs 20 --no-guard --out runs/geco
    snf-tf train geco_selfnorm_glow_mnist --epochs 20 --no-guard --set geco_rate=null \\
        --out runs/fixed
    python benchmarks/geco_table.py --arm geco=runs/geco --arm fixed=runs/fixed \\
        --out benchmarks/measured/geco

Prints per arm the validation NLL, the test NLL at the best validation epoch, the largest
‖RW − I‖_F and λ (median and max over the SNF layers) at chosen epochs; writes ``OUT/geco.json``
and ``OUT/geco.png`` (validation NLL, ‖RW − I‖_F and λ per epoch).
"""

import argparse
import json
import os


def _load(folder):
    with open(os.path.join(folder, "metrics.json")) as f:
        metrics = json.load(f)
    with open(os.path.join(folder, "config.json")) as f:
        config = json.load(f)["config"]
    return metrics, config


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


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arm", action="append", required=True, metavar="NAME=RUN")
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    arms = {}
    for text in args.arm:
        name, _, folder = text.partition("=")
        metrics, config = _load(folder)
        arms[name] = {"run": folder, "geco_rate": config["geco_rate"], "seed": config["seed"],
                      "epochs": arm_rows(metrics, config), "best": metrics.get("best")}
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
