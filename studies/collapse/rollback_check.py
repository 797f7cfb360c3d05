"""Does the rollback guard's remedy recover a collapsing run? Restore a run's last good state,
lower the learning rate as the guard does, train on and watch.

Loads ``RUN/best.keras`` (weights and optimizer state of the best validation epoch — the state the
guard restores when the next epoch collapses), multiplies the warm-up schedule's ``scale`` by
``--lr-factor`` (the guard's ``guard_lr_factor``) and every SNF layer's λ by
``--lambda-factor``, trains ``--epochs`` more epochs on the run's own data pipeline
(``RUN/config.json``) and prints per epoch the exact validation NLL and the largest
‖RW − I‖_F; writes ``OUT/rollback_check.json`` after every epoch.

    python studies/collapse/rollback_check.py runs/a5_fixed_seed1 --epochs 2 --out DIR \\
        [--lambda-factor 10]
"""

import argparse
import json
import os


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--lr-factor", type=float, default=0.5)
    parser.add_argument("--lambda-factor", type=float, default=1.0)
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    import keras

    from snf_tf import callbacks, experiments
    from snf_tf.experiments.run_folder import RunFolder

    run = RunFolder(args.run)
    cfg, metrics = run.read_config()["config"], run.read_metrics()
    start = metrics["best"]["epoch"]
    model = keras.models.load_model(run.checkpoint)
    schedule = model.optimizer._learning_rate
    if not isinstance(schedule, callbacks.LinearWarmup):
        raise SystemExit(f"{args.run}: expected a LinearWarmup schedule, got {schedule!r}")
    schedule.scale.assign(schedule.scale * args.lr_factor)
    for layer in model.flow_layers:
        if getattr(layer, "uses_reconstruction", False):
            layer.reconstruction_weight.assign(layer.reconstruction_weight * args.lambda_factor)
    splits = experiments.datasets(cfg)
    keras.utils.set_random_seed(cfg["seed"] + start)
    rows = [{"epoch": start, "val_nll": metrics["best"]["val_nll"],
             "inverse_error_max": metrics["epochs"][start - 1].get("inverse_error_max")}]
    for epoch in range(start + 1, start + args.epochs + 1):
        history = model.fit(splits["train"], epochs=1, verbose=0, shuffle=False)
        val = float(model.evaluate(splits["validation"], verbose=0, return_dict=True)["nll"])
        errors = model.inverse_errors()
        rows.append({"epoch": epoch, "loss": float(history.history["loss"][-1]),
                     "val_nll": val, "inverse_error_max": max(errors.values()) if errors else None,
                     "learning_rate": float(model.optimizer.learning_rate)})
        print(f"epoch {epoch}: loss {rows[-1]['loss']:.1f}, val NLL {val:.1f}, "
              f"largest ‖RW − I‖_F {rows[-1]['inverse_error_max']:.3g}, "
              f"lr {rows[-1]['learning_rate']:.3g}", flush=True)
        collapsed = metrics["epochs"][start:start + args.epochs]
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "rollback_check.json"), "w") as f:
            json.dump({"run": args.run, "restored_epoch": start, "lr_factor": args.lr_factor,
                       "lambda_factor": args.lambda_factor, "after_rollback": rows,
                       "without_rollback": [{k: e.get(k) for k in ("epoch", "val_nll",
                                                                   "inverse_error_max")}
                                            for e in collapsed]}, f, indent=1)


if __name__ == "__main__":
    main()
