"""Table 1's rows at equal budgets on this machine: each model trained by ``snf-tf train``.

Suites (reference configs unless ``--set`` says otherwise; same seed for every model):

* ``fc``   — selfnorm/exact/relative_fc_mnist (2-layer FC);
* ``conv`` — selfnorm/exact/emerging/exponential_cnn_mnist (9-layer conv);
* ``glow`` — selfnorm/conv1x1_glow_mnist (32-step Glow; ``--set hidden_channels=64`` to fit a CPU).

The runs go one after another (their timings do not disturb each other) into ``OUT/NAME``; a run
that was interrupted is continued with ``--resume``. Then the per-epoch curves are combined into
``OUT/reproduce_SUITE.json`` and ``.png``: validation NLL per epoch and against wall-clock time,
test NLL at the best validation epoch, and the paper's number beside it.

    python studies/table1/reproduce_mnist.py fc --epochs 30 --out DIR
    python studies/table1/reproduce_mnist.py conv --epochs 5 --out DIR
    python studies/table1/reproduce_mnist.py glow --epochs 2 --set hidden_channels=64 --out DIR

Without ``--out`` the runs go to ``studies/table1/results/reproduce_SUITE/`` (not committed).
"""

import argparse
import json
import os
import subprocess
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from snf_tf.experiments.run_folder import RunFolder  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
SUITES = {
    "fc": ["selfnorm_fc_mnist", "exact_fc_mnist", "relative_fc_mnist"],
    "conv": ["selfnorm_cnn_mnist", "exact_cnn_mnist", "emerging_cnn_mnist",
             "exponential_cnn_mnist"],
    "glow": ["selfnorm_glow_mnist", "conv1x1_glow_mnist"],
}


def _median(values):
    values = sorted(v for v in values if v is not None)
    return values[len(values) // 2] if values else None


def combine(out, suite, names):
    summary = {}
    for name in names:
        run = RunFolder(os.path.join(out, name))
        if not run.has_run():
            continue
        metrics = run.read_metrics()
        epochs = metrics["epochs"]
        seconds = [e["epoch_seconds"] for e in epochs]
        best = metrics["best"] or {}
        summary[name] = {
            "status": metrics["status"], "epochs": len(epochs),
            "val_nll": [e.get("val_nll") for e in epochs],
            "test_nll_at_best_val": best.get("test_nll"),
            "test_bpd_at_best_val": best.get("test_bpd"), "best_epoch": best.get("epoch"),
            "median_epoch_seconds": _median(seconds),
            "median_train_seconds": _median([e["train_seconds"] for e in epochs]),
            "cumulative_seconds": [sum(seconds[:i + 1]) for i in range(len(seconds))],
            "paper": metrics["paper"],
        }
    with open(os.path.join(out, f"reproduce_{suite}.json"), "w") as f:
        json.dump(summary, f, indent=1)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for name, s in summary.items():
        axes[0].plot(range(1, s["epochs"] + 1), s["val_nll"], "o-", ms=3, label=name)
        axes[1].plot(s["cumulative_seconds"], s["val_nll"], "o-", ms=3, label=name)
    axes[0].set_xlabel("epoch")
    axes[1].set_xlabel("wall-clock [s] (2-core CPU)")
    for ax in axes:
        ax.set_yscale("log")  # first epochs of badly initialised baselines are 10-20× higher
        ax.set_ylabel("validation NLL [nats]")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"MNIST, {suite} suite, reference configs, equal epochs")
    fig.tight_layout()
    fig.savefig(os.path.join(out, f"reproduce_{suite}.png"), dpi=120)
    print(f"{'experiment':24s} {'epochs':>6s} {'test NLL':>9s} {'bpd':>6s} {'s/epoch':>8s} paper")
    for name, s in summary.items():
        nll, bpd = s["test_nll_at_best_val"], s["test_bpd_at_best_val"]
        print(f"{name:24s} {s['epochs']:6d} {nll or float('nan'):9.1f} {bpd or float('nan'):6.3f} "
              f"{s['median_epoch_seconds'] or float('nan'):8.1f} {s['paper']['text']}")
    return summary


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("suite", choices=sorted(SUITES))
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--only", nargs="+", default=None, help="a subset of the suite")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="passed to every 'snf-tf train' (e.g. hidden_channels=64)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None)
    parser.add_argument("--combine-only", action="store_true",
                        help="only re-read the runs' metrics.json files and redraw")
    args = parser.parse_args(argv)
    out = args.out or os.path.join(HERE, "results", f"reproduce_{args.suite}")
    names = args.only or SUITES[args.suite]
    os.makedirs(out, exist_ok=True)
    if not args.combine_only:
        for name in names:
            run_dir = os.path.join(out, name)
            command = [sys.executable, "-m", "snf_tf", "train", name, "--epochs",
                       str(args.epochs), "--seed", str(args.seed), "--out", run_dir, "--quiet"]
            for setting in args.set:
                command += ["--set", setting]
            status = RunFolder(run_dir).status()
            if status == "finished":
                continue
            if status is not None:
                command.append("--resume")
            subprocess.run(command, check=False)
    combine(out, args.suite, names)


if __name__ == "__main__":
    main()
