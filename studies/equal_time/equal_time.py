"""The paper's claim at equal wall-clock: exact NLL against training seconds, SNF and exact runs.

Each run is a ``snf-tf train NAME --time-budget T --eval-every-steps N`` run folder (its
``metrics.json`` has ``eval_points``: step, examples, training seconds and exact validation and
test NLL). A group compares SNF runs with one exact run:

    snf-tf train selfnorm_fc_mnist --time-budget 10m --eval-every-steps 1000 --out runs/snf_fc
    snf-tf train exact_fc_mnist --time-budget 10m --eval-every-steps 1000 --out runs/exact_fc
    python studies/equal_time/equal_time.py \\
        --group "FC=runs/exact_fc,runs/snf_fc" --out DIR

The first run of a group is the reference (the exact model). Prints per run the exact
validation NLL at ¼, ½ and all of the budget (the last evaluation at or before that time), the
test NLL of the best validation evaluation up to then, and the training time each run needs to
reach the reference's final validation NLL (linear between evaluations; None if it never does)
with its ratio to the reference's; writes ``DIR/equal_time.json`` and ``equal_time.png``
(validation NLL against training seconds and against epochs).
"""

import argparse
import json
import math
import os

from snf_tf.experiments.run_folder import RunFolder


def points(metrics):
    """Every exact evaluation of a run, in order: ``eval_points`` of all epochs, then the
    evaluation that ended the run (at the first batch past the budget) when it came later."""
    evaluations = [p for entry in metrics["epochs"] for p in entry.get("eval_points", [])]
    last = metrics["epochs"][-1] if metrics["epochs"] else {}
    step = last.get("steps_total")
    if step and math.isfinite(last.get("val_nll", math.nan)) and (
            not evaluations or step > evaluations[-1]["step"]):
        evaluations.append({"step": step, "examples": last["examples_total"],
                            "train_seconds": last["train_seconds_total"],
                            **{key: last.get(key, math.nan)
                               for key in ("val_nll", "val_bpd", "test_nll", "test_bpd")}})
    return evaluations


def at_time(evaluations, seconds):
    """The last evaluation at or before ``seconds`` of training (None before the first)."""
    before = [p for p in evaluations if p["train_seconds"] <= seconds + 1e-9]
    return before[-1] if before else None


def best_before(evaluations, seconds):
    """The evaluation with the best validation NLL up to ``seconds`` (its test NLL is the one
    to report at that time: model selection on validation only)."""
    before = [p for p in evaluations if p["train_seconds"] <= seconds + 1e-9
              and math.isfinite(p["val_nll"])]
    return min(before, key=lambda p: p["val_nll"]) if before else None


def time_to(evaluations, target, key="val_nll"):
    """Training seconds at which ``key`` first reaches ``target`` or below, linear between the
    two evaluations around it; None if it never does."""
    previous = None
    for p in evaluations:
        if p[key] <= target:
            if previous is None:
                return p["train_seconds"]
            a, b = previous[key], p[key]
            share = (a - target) / (a - b) if a != b else 1.0
            return previous["train_seconds"] + share * (p["train_seconds"]
                                                        - previous["train_seconds"])
        previous = p
    return None


def step_ms(evaluations, last):
    """Milliseconds per training step: over the whole run, and the median over the intervals
    between evaluations (robust to a stretch in which something else used the CPU)."""
    steps, seconds = last.get("steps_total"), last.get("train_seconds_total")
    whole = 1000 * seconds / steps if steps else None
    rates, previous = [], {"step": 0, "train_seconds": 0.0}
    for p in evaluations:
        if p["step"] > previous["step"]:
            rates.append(1000 * (p["train_seconds"] - previous["train_seconds"])
                         / (p["step"] - previous["step"]))
        previous = p
    rates = sorted(rates[1:]) or sorted(rates)  # the first interval holds the graph tracing
    median = rates[len(rates) // 2] if rates else None
    return {"ms_per_step": whole, "median_ms_per_step": median}


def summarise(name, metrics, config, reference_final=None, reference_time=None):
    evaluations = points(metrics)
    budget = config["time_budget"]
    row = {"run": name, "experiment": config["experiment"], "budget_seconds": budget,
           "steps": evaluations[-1]["step"] if evaluations else None,
           "evaluations": len(evaluations)}
    for label, share in (("quarter", 0.25), ("half", 0.5), ("full", 1.0)):
        # all of the budget: the run's end, at the first batch past it
        seconds = share * budget if share < 1 else math.inf
        p = at_time(evaluations, seconds)
        row[f"val_nll_{label}"] = p and p["val_nll"]
        best = best_before(evaluations, seconds)
        row[f"test_nll_{label}"] = best and best["test_nll"]
    last = metrics["epochs"][-1]
    row.update(final_val_nll=last.get("val_nll"), final_test_nll=last.get("test_nll"),
               train_seconds=last.get("train_seconds_total"), steps_total=last.get("steps_total"))
    row.update(step_ms(evaluations, last))
    target = reference_final if reference_final is not None else row["final_val_nll"]
    row["seconds_to_reference_nll"] = time_to(evaluations, target)
    if reference_time and row["seconds_to_reference_nll"] is not None:
        row["time_ratio_to_reference"] = row["seconds_to_reference_nll"] / reference_time
    return row, evaluations


def _plot(groups, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(groups), 2, figsize=(11, 3.8 * len(groups)), squeeze=False)
    for row_axes, (group, runs) in zip(axes, groups.items()):
        for run in runs:
            seconds = [p["train_seconds"] for p in run["evaluations"]]
            epochs = [p["examples"] / run["epoch_examples"] for p in run["evaluations"]]
            values = [p["val_nll"] for p in run["evaluations"]]
            row_axes[0].plot(seconds, values, label=run["run"])
            row_axes[1].plot(epochs, values, label=run["run"])
        for ax, xlabel in zip(row_axes, ("training seconds", "epochs")):
            ax.set_xlabel(xlabel)
            ax.set_ylabel("exact validation NLL (nats)")
            ax.set_title(group, fontsize=9)
            ax.grid(alpha=0.3)
            finals = [r["evaluations"][-1]["val_nll"] for r in runs if r["evaluations"]]
            if finals:
                ax.set_ylim(min(finals) - 0.05 * abs(min(finals)),
                            max(finals) + 0.25 * abs(max(finals)))
        row_axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--group", action="append", required=True,
                        metavar="NAME=REFERENCE_RUN,RUN,...")
    parser.add_argument("--out", required=True)
    parser.add_argument("--markdown", action="store_true",
                        help="also print each group as a Markdown table (RESULTS.md's form)")
    args = parser.parse_args(argv)
    report, plotted = {}, {}
    for text in args.group:
        group, _, paths = text.partition("=")
        rows, runs = [], []
        reference_final = reference_time = None
        for i, path in enumerate(paths.split(",")):
            folder = RunFolder(path)
            config, metrics = folder.read_config()["config"], folder.read_metrics()
            name = os.path.basename(os.path.normpath(path))
            row, evaluations = summarise(name, metrics, config, reference_final, reference_time)
            if i == 0:
                reference_final = row["final_val_nll"]
                reference_time = row["seconds_to_reference_nll"]
            rows.append(row)
            runs.append({"run": name, "evaluations": evaluations,
                         "epoch_examples": _epoch_examples(metrics),
                         "config": config, "metrics": metrics})
        report[group], plotted[group] = rows, runs
        print(f"{group}: reference {rows[0]['run']} (final validation NLL "
              f"{reference_final:.2f} after {rows[0]['train_seconds']:.0f} s)")
        print(f"  {'run':28s} {'val ¼':>8s} {'val ½':>8s} {'val 1':>8s} {'test 1':>8s} "
              f"{'s to ref':>8s} {'ratio':>6s} {'ms/step':>8s} {'median':>7s}")
        for r in rows:
            ratio = r.get("time_ratio_to_reference")
            reach = r["seconds_to_reference_nll"]
            print(f"  {r['run']:28s} {_f(r['val_nll_quarter'])} {_f(r['val_nll_half'])} "
                  f"{_f(r['val_nll_full'])} {_f(r['test_nll_full'])} "
                  f"{'never' if reach is None else f'{reach:.0f}':>8s} "
                  f"{'' if ratio is None else f'{ratio:.2f}':>6s} {_f(r['ms_per_step'])} "
                  f"{_f(r['median_ms_per_step'])[1:]}")
        if args.markdown:
            print(markdown_table(rows))
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "equal_time.json"), "w") as f:
        json.dump({"groups": report, "runs": {g: [{k: v for k, v in r.items()
                                                    if k != "evaluations"} for r in runs]
                                               for g, runs in plotted.items()}}, f, indent=1)
    _plot(plotted, os.path.join(args.out, "equal_time.png"))
    print(f"wrote {args.out}/equal_time.json and equal_time.png")
    return report


def markdown_table(rows):
    """One group as RESULTS.md's table: the reference (first row) and the others."""
    budget = rows[0]["budget_seconds"]
    target = rows[0]["final_val_nll"]
    head = (f"| model | steps in {budget:.0f} s | ms/step (median) | val NLL at {budget / 4:.0f} s "
            f"| at {budget / 2:.0f} s | at {budget:.0f} s | test NLL at {budget:.0f} s "
            f"| time to the reference's final val NLL ({target:.1f}) |")
    lines = [head, "|---" * 8 + "|"]
    for r in rows:
        reach = r["seconds_to_reference_nll"]
        ratio = r.get("time_ratio_to_reference")
        reach_text = "never" if reach is None else f"{reach:.0f} s" + (
            f" ({ratio:.2f}×)" if ratio is not None and r is not rows[0] else "")
        lines.append(
            f"| {r['experiment']} | {r['steps_total']:,} | {_f(r['median_ms_per_step']).strip()} | "
            f"{_f(r['val_nll_quarter']).strip()} | {_f(r['val_nll_half']).strip()} | "
            f"{_f(r['val_nll_full']).strip()} | {_f(r['test_nll_full']).strip()} | "
            f"{reach_text} |".replace(",", " "))
    return "\n".join(lines)


def _epoch_examples(metrics):
    """Examples per epoch: the first epoch's ``examples_total`` (a run of one partial epoch:
    its examples, so it spans one epoch on the plot)."""
    return metrics["epochs"][0]["examples_total"]


def _f(value):
    return f"{value:8.2f}" if value is not None and math.isfinite(value) else f"{'—':>8s}"


if __name__ == "__main__":
    main()
