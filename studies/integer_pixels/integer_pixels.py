"""The noise-free density of a trained flow at integer pixels and just beside them: mean NLL of
``snf_tf.export.log_prob`` (what the SavedModel's ``log_prob`` serves) at x, x + 10⁻³, x + 0.5
and at x + u, u ~ U[0, 1) (``export.dequantized_log_prob``, the paper's estimate).

    python studies/integer_pixels/integer_pixels.py RUN/best.keras [RUN2/best.keras ...] \\
        [--dataset mnist] [--split validation] [--examples 500] [--out DIR]

Prints one row per checkpoint (nats per image); with ``--out`` also writes
``OUT/integer_pixels.json``.
"""

import argparse
import json
import os

OFFSETS = {"x": 0.0, "x + 1e-3": 1e-3, "x + 0.5": 0.5}


def nll_table(model, dataset, seed=0):
    """Mean NLL (nats) at each offset of :data:`OFFSETS` and at ``x + u``."""
    import numpy as np
    import tensorflow as tf

    from snf_tf import export

    model.refresh_log_dets()  # the exact log-dets of the SNF layers, as evaluation does
    sums, count = dict.fromkeys([*OFFSETS, "x + u"], 0.0), 0
    for batch in dataset:
        x, context = batch if model.conditional else (batch, None)
        x = tf.cast(x, model.compute_dtype)
        for name, offset in OFFSETS.items():
            sums[name] -= float(np.sum(export.log_prob(model, x + offset, context)))
        sums["x + u"] -= float(np.sum(export.dequantized_log_prob(model, x, seed, context)))
        count += int(x.shape[0])
    return {name: total / count for name, total in sums.items()}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoints", nargs="+", metavar="CHECKPOINT")
    parser.add_argument("--dataset", default="mnist")
    parser.add_argument("--split", default="validation")
    parser.add_argument("--examples", type=int, default=500)
    parser.add_argument("--seed", type=int, default=0, help="seed of the x + u column")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)

    from snf_tf import data, export

    rows = {}
    print(f"{'checkpoint':<48} " + " ".join(f"{name:>12}" for name in [*OFFSETS, "x + u"]))
    for path in args.checkpoints:
        model = export.load_checkpoint(path)
        dataset = data.load(args.dataset, args.split, 100, data_dir=args.data_dir,
                            limit=args.examples, labels=model.conditional)
        rows[path] = nll_table(model, dataset, args.seed)
        print(f"{os.path.relpath(path)[-48:]:<48} "
              + " ".join(f"{value:>12.4g}" for value in rows[path].values()))
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "integer_pixels.json"), "w") as f:
            json.dump({"dataset": args.dataset, "split": args.split, "examples": args.examples,
                       "seed": args.seed, "nll": rows}, f, indent=1)


if __name__ == "__main__":
    main()
