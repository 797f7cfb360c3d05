"""Table 1's FC rows at equal budgets on this machine: SNF vs exact vs relative gradient.

Runs ``examples/fc_mnist.py`` (real MNIST, reference config: Adam 1e-4, batch 100, 10-epoch
warm-up, λ = 1 for SNF, same seed) once per gradient, each in its own process. The runs go one
after another so their timings do not disturb each other. Then it combines their per-epoch curves
into ``reproduce_fc.json`` and ``reproduce_fc.png``: validation NLL per epoch and against
wall-clock time, and the test NLL at the best validation epoch. Every run rewrites its own
``metrics.json`` after each epoch, so an interrupted sweep keeps what it measured.

    python benchmarks/reproduce_mnist.py --epochs 30 --out benchmarks/measured/reproduce_fc
"""

import argparse
import json
import os
import subprocess
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAPER = {"self_normalized": 947.1, "exact": 947.6, "relative": 1096.5}  # Table 1, nats


def combine(out, gradients):
    runs = {}
    for gradient in gradients:
        path = os.path.join(out, gradient, "metrics.json")
        if os.path.exists(path):
            with open(path) as f:
                runs[gradient] = json.load(f)["history"]
    summary = {}
    for gradient, h in runs.items():
        seconds = h.get("epoch_seconds", [])
        summary[gradient] = {
            "epochs": len(h.get("val_nll", [])),
            "val_nll": h.get("val_nll", []),
            "test_nll_at_best_val": h.get("test_nll", [None])[-1],
            "test_bpd_at_best_val": h.get("test_bpd", [None])[-1],
            "best_epoch": h.get("best_epoch", [None])[-1],
            "median_epoch_seconds": sorted(seconds)[len(seconds) // 2] if seconds else None,
            "cumulative_seconds": [sum(seconds[:i + 1]) for i in range(len(seconds))],
            "paper_test_nll": PAPER.get(gradient),
        }
    with open(os.path.join(out, "reproduce_fc.json"), "w") as f:
        json.dump(summary, f, indent=1)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for gradient, s in summary.items():
        epochs = range(1, len(s["val_nll"]) + 1)
        axes[0].plot(epochs, s["val_nll"], label=gradient)
        axes[1].plot(s["cumulative_seconds"][:len(s["val_nll"])], s["val_nll"], label=gradient)
    axes[0].set_xlabel("epoch")
    axes[1].set_xlabel("wall-clock [s] (2-core CPU)")
    for ax in axes:
        ax.set_ylabel("validation NLL [nats]")
        ax.set_yscale("log")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle("FC 2-layer flow on MNIST, reference config")
    fig.tight_layout()
    fig.savefig(os.path.join(out, "reproduce_fc.png"), dpi=120)
    print(f"{'gradient':16s} {'epochs':>6s} {'test NLL':>9s} {'bpd':>6s} {'s/epoch':>8s} {'paper':>7s}")
    for gradient, s in summary.items():
        print(f"{gradient:16s} {s['epochs']:6d} {s['test_nll_at_best_val'] or float('nan'):9.1f} "
              f"{s['test_bpd_at_best_val'] or float('nan'):6.3f} "
              f"{s['median_epoch_seconds'] or float('nan'):8.1f} {s['paper_test_nll']:7.1f}")
    return summary


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--gradients", nargs="+", default=["self_normalized", "exact", "relative"],
                        choices=["self_normalized", "exact", "relative"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="benchmarks/measured/reproduce_fc")
    parser.add_argument("--combine-only", action="store_true",
                        help="only re-read the runs' metrics.json files and redraw")
    args = parser.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    if not args.combine_only:
        for gradient in args.gradients:
            subprocess.run([sys.executable, os.path.join(ROOT, "examples", "fc_mnist.py"),
                            "--gradient", gradient, "--epochs", str(args.epochs),
                            "--seed", str(args.seed), "--out", os.path.join(args.out, gradient)],
                           check=True)
    combine(args.out, args.gradients)


if __name__ == "__main__":
    main()
