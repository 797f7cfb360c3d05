"""Where a run's exact NLL comes from: the base term and each layer's log-det, for the
best-validation checkpoint and the last backed-up epoch of a ``snf-tf train`` run folder.

    python studies/diagnostics/nll_by_layer.py RUN_DIR [--split validation] [--examples 500]

Prints the totals per layer kind and, for layers with a learned inverse, ‖RW − I‖_F; writes
``RUN_DIR/nll_by_layer.json``. One dequantization sample per image (as the reported NLL).
"""

import argparse
import json
import os

import tensorflow as tf

from snf_tf import data, experiments, export
from snf_tf.experiments.run_folder import AtomicBackupAndRestore, RunFolder


def decompose(model, x):
    """``(base term, [(layer name, mean log-det, ‖RW − I‖_F or None)])`` on the batch ``x``."""
    h, rows = tf.cast(x, model.compute_dtype), []
    for layer in model.flow_layers:
        h, log_det = layer.forward(h, exact=True)
        error = float(layer.inverse_error()) if getattr(layer, "learns_inverse", False) else None
        rows.append((layer.name, float(tf.reduce_mean(log_det)), error))
    return float(tf.reduce_mean(model.base_log_prob(h))), rows


def _kind(name):
    return name.rstrip("0123456789_")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run")
    parser.add_argument("--split", default="validation")
    parser.add_argument("--examples", type=int, default=500)
    args = parser.parse_args(argv)
    run = RunFolder(args.run)
    cfg = run.read_config()["config"]
    x = next(iter(data.load(cfg["dataset"], args.split, args.examples)))
    last = experiments.build_model(cfg)
    last.log_prob(x[:2])
    last.load_weights(os.path.join(run.backup, AtomicBackupAndRestore.WEIGHTS))
    states = {"best": export.load_checkpoint(run.checkpoint), "last": last}
    report = {}
    for label, model in states.items():
        base, rows = decompose(model, x)
        kinds = {}
        for name, log_det, _ in rows:
            kinds[_kind(name)] = kinds.get(_kind(name), 0.0) + log_det
        errors = [e for _, _, e in rows if e is not None]
        report[label] = {"nll": -(base + sum(r[1] for r in rows)), "base": base,
                         "log_det_by_kind": kinds, "layers": rows,
                         "inverse_error_max": max(errors) if errors else None}
        print(f"{label}: NLL {report[label]['nll']:.1f} = -(base {base:.1f} + log-dets "
              + ", ".join(f"{k} {v:.1f}" for k, v in kinds.items()) + ")"
              + (f"; largest ‖RW − I‖_F {max(errors):.4f}" if errors else ""))
    with open(run.file("nll_by_layer.json"), "w") as f:
        json.dump({"split": args.split, "examples": args.examples, **report}, f, indent=1)


if __name__ == "__main__":
    main()
