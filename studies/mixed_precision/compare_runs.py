"""float32 against mixed_bfloat16: the same experiment, the same seed, trained both ways.

    snf-tf train conditional_glow_mnist --out runs/qs_f32
    snf-tf train conditional_glow_mnist --set dtype=mixed_bfloat16 --out runs/qs_bf16
    snf-tf train selfnorm_cnn_mnist --epochs 3 --train-examples 10000 --eval-examples 2000 \\
        --out runs/conv_f32            # and again with --set dtype=mixed_bfloat16
    python studies/mixed_precision/compare_runs.py \\
        --pair quickstart=runs/qs_f32,runs/qs_bf16 --pair snf_conv=runs/conv_f32,runs/conv_bf16 \\
        --out DIR

Prints per pair and epoch the exact validation and test NLL of both runs and their relative
difference, and the training seconds; writes ``DIR/mixed_precision.json`` (with each run's
config and metrics) and ``mixed_precision.png`` (test NLL per epoch).
"""

import argparse
import json
import os

from snf_tf.experiments.run_folder import RunFolder


def pair_rows(reference, mixed):
    """Per epoch: val/test NLL of both runs, the relative difference, training seconds."""
    rows = []
    for a, b in zip(reference["epochs"], mixed["epochs"]):
        rows.append({"epoch": a["epoch"], "val_nll_float32": a["val_nll"],
                     "val_nll_mixed": b["val_nll"], "test_nll_float32": a["test_nll"],
                     "test_nll_mixed": b["test_nll"],
                     "test_relative_difference": (b["test_nll"] - a["test_nll"]) / a["test_nll"],
                     "train_seconds_float32": a.get("train_seconds"),
                     "train_seconds_mixed": b.get("train_seconds")})
    return rows


def _plot(pairs, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(pairs), figsize=(5 * len(pairs), 3.8), squeeze=False)
    for ax, (name, pair) in zip(axes[0], pairs.items()):
        epochs = [r["epoch"] for r in pair["rows"]]
        ax.plot(epochs, [r["test_nll_float32"] for r in pair["rows"]], "o-", label="float32")
        ax.plot(epochs, [r["test_nll_mixed"] for r in pair["rows"]], "s--",
                label=pair["mixed_policy"])
        ax.set_title(f"{name} ({pair['experiment']})", fontsize=9)
        ax.set_xlabel("epoch")
        ax.set_ylabel("exact test NLL (nats)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pair", action="append", required=True,
                        metavar="NAME=FLOAT32_RUN,MIXED_RUN")
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    pairs = {}
    for text in args.pair:
        name, _, paths = text.partition("=")
        runs = [RunFolder(path) for path in paths.split(",")]
        configs = [run.read_config()["config"] for run in runs]
        metrics = [run.read_metrics() for run in runs]
        pairs[name] = {"experiment": configs[0]["experiment"],
                       "mixed_policy": configs[1]["model_kwargs"].get("dtype"),
                       "rows": pair_rows(*metrics), "configs": configs, "metrics": metrics}
    print(f"{'pair':11s} {'epoch':>5s} {'test f32':>9s} {'test mixed':>10s} {'rel.':>7s} "
          f"{'s f32':>6s} {'s mixed':>7s}")
    for name, pair in pairs.items():
        for r in pair["rows"]:
            print(f"{name:11s} {r['epoch']:5d} {r['test_nll_float32']:9.2f} "
                  f"{r['test_nll_mixed']:10.2f} {100 * r['test_relative_difference']:+6.2f}% "
                  f"{r['train_seconds_float32']:6.0f} {r['train_seconds_mixed']:7.0f}")
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "mixed_precision.json"), "w") as f:
        json.dump(pairs, f, indent=1)
    _plot(pairs, os.path.join(args.out, "mixed_precision.png"))
    print(f"wrote {args.out}/mixed_precision.json and mixed_precision.png")
    return pairs


if __name__ == "__main__":
    main()
