"""Class-conditional SNF Glow against the unconditional model of the same size: test
log p(x | y) vs log p(x), the model as a generative classifier, and the class-by-class samples.

Each pair is two ``snf-tf train`` run folders of the same size and epochs, e.g.

    snf-tf train conditional_glow_mnist --out runs/cond_mnist
    snf-tf train small_selfnorm_glow_mnist --out runs/uncond_mnist
    python studies/conditional/conditional_study.py \\
        --pair mnist=runs/cond_mnist,runs/uncond_mnist --out DIR

For every pair: the test NLL at the best validation epoch of both runs (nats and bits/dim;
conditional: −log p(x | y)), the conditional model's marginal −log p(x) = −log Σ_y p(y) p(x | y)
(uniform p(y); an unconditional likelihood, comparable with the unconditional run's), and the
accuracy of ``argmax_y log p(x | y)`` on the test split (one dequantization sample shared by the
ten classes). Prints a table;
writes ``OUT/conditional.json`` and ``OUT/conditional_NAME.png`` (samples at temperature 1 and
0.7, one row per class, beside real test images of each class).
"""

import argparse
import json
import math
import os
import time

import numpy as np

from snf_tf.experiments.run_folder import RunFolder


def classify(model, dataset, seed=0):
    """``(accuracy, confusion matrix, mean −log p(x))`` of ``argmax_y log p(x | y)`` over
    ``(image, label)`` batches; p(x) is the uniform mixture over the classes."""
    import tensorflow as tf

    k = model.num_classes
    confusion = np.zeros((k, k), np.int64)
    model.refresh_log_dets()
    scores_fn = tf.function(lambda x: model.class_log_probs(x, seed=seed))
    marginal = []
    for images, labels in dataset:
        scores = scores_fn(images).numpy().astype(np.float64)
        np.add.at(confusion, (labels.numpy(), np.argmax(scores, axis=1)), 1)
        top = scores.max(axis=1)
        marginal.append(top + np.log(np.mean(np.exp(scores - top[:, None]), axis=1)))
    return (float(np.trace(confusion) / confusion.sum()), confusion,
            float(-np.mean(np.concatenate(marginal))))


def _figure(model, real, path, title, seed=0):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from snf_tf.images import image_grid

    labels = np.repeat(np.arange(model.num_classes), 8).astype("int32")
    panels = []
    for temperature in (1.0, 0.7):
        samples = model.sample(len(labels), temperature=temperature, seed=seed,
                               context=labels).numpy()
        panels.append((f"samples, temperature {temperature:g}",
                       image_grid(np.nan_to_num(samples), 8)))
    panels.append(("real test images", image_grid(real, 8)))
    fig, axes = plt.subplots(1, 3, figsize=(12, 5.6))
    for axis, (name, grid) in zip(axes, panels):
        axis.imshow(grid[..., 0], cmap="gray", vmin=0, vmax=255)
        axis.set_title(name)
        axis.set_xticks([])
        axis.set_yticks(np.arange(model.num_classes) * 28 + 14)
        axis.set_yticklabels([str(k) for k in range(model.num_classes)])
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pair", action="append", required=True,
                        metavar="NAME=CONDITIONAL_RUN,UNCONDITIONAL_RUN")
    parser.add_argument("--out", required=True)
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--examples", type=int, default=None,
                        help="classify the first N test images only")
    args = parser.parse_args(argv)

    from snf_tf import data, export
    from snf_tf.experiments.training import _real_images

    os.makedirs(args.out, exist_ok=True)
    report = {}
    for text in args.pair:
        name, _, folders = text.partition("=")
        conditional_dir, unconditional_dir = folders.split(",")
        rows = {}
        for label, folder in (("conditional", conditional_dir),
                              ("unconditional", unconditional_dir)):
            run = RunFolder(folder)
            metrics, config = run.read_metrics(), run.read_config()["config"]
            best = metrics["best"]
            rows[label] = {"run": folder, "experiment": config["experiment"],
                           "epochs": len(metrics["epochs"]), "best_epoch": best["epoch"],
                           "test_nll": best["test_nll"], "test_bpd": best["test_bpd"],
                           "train_seconds": sum(e["train_seconds"] for e in metrics["epochs"])}
        conditional_run = RunFolder(conditional_dir)
        model = export.load_checkpoint(conditional_run.checkpoint)
        dataset_name = conditional_run.read_config()["config"]["dataset"]
        test = data.load(dataset_name, "test", 500, data_dir=args.data_dir, labels=True,
                         limit=args.examples)
        start = time.perf_counter()
        accuracy, confusion, marginal_nll = classify(model, test)
        rows["classifier"] = {"accuracy": accuracy, "confusion": confusion.tolist(),
                              "examples": int(confusion.sum()),
                              "seconds": time.perf_counter() - start}
        dims = int(np.prod(model.data_shape))
        rows["conditional"]["marginal_test_nll"] = marginal_nll
        rows["conditional"]["marginal_test_bpd"] = marginal_nll / (dims * math.log(2))
        gain = rows["unconditional"]["test_nll"] - rows["conditional"]["test_nll"]
        rows["nats_gained_by_the_label"] = gain
        rows["log_10"] = math.log(10)
        labels = np.repeat(np.arange(model.num_classes), 8).astype("int32")
        figure = os.path.join(args.out, f"conditional_{name}.png")
        _figure(model, _real_images(test, labels), figure,
                f"class-conditional SNF Glow on {dataset_name}, {rows['conditional']['epochs']} "
                f"epochs ({rows['conditional']['train_seconds']:.0f} s of training, "
                f"{os.cpu_count()} CPU cores): test −log p(x | y) = "
                f"{rows['conditional']['test_nll']:.2f} nats = "
                f"{rows['conditional']['test_bpd']:.3f} bits/dim")
        rows["figure"] = figure
        report[name] = rows
    with open(os.path.join(args.out, "conditional.json"), "w") as f:
        json.dump(report, f, indent=1)
    print(f"{'pair':<14} {'−log p(x|y)':>12} {'cond. −log p(x)':>16} {'uncond. −log p(x)':>18} "
          f"{'classifier accuracy':>20}")
    for name, rows in report.items():
        print(f"{name:<14} {rows['conditional']['test_nll']:>12.2f} "
              f"{rows['conditional']['marginal_test_nll']:>16.2f} "
              f"{rows['unconditional']['test_nll']:>18.2f} "
              f"{rows['classifier']['accuracy']:>19.2%}")


if __name__ == "__main__":
    main()
