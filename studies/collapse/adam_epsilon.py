"""Does Adam's ε matter? Keras's ε = 1e-7 against the reference's PyTorch ε = 1e-8, measured on the
optimizer state of trained checkpoints.

Keras adds ε to √v before the bias correction, PyTorch adds it to √v̂ = √v / √(1 − β₂ᵗ). In terms
of the stored √v, Keras's step is ∝ 1 / (√v + ε_K) and PyTorch's ∝ 1 / (√v + ε_P·√(1 − β₂ᵗ)).
For every weight of every ``.keras`` file given, this prints how much the two steps differ
(median, 99.9 % quantile, share of weights whose step differs by more than 1 %) and writes
``OUT/adam_epsilon.json``.

    python studies/collapse/adam_epsilon.py runs/study/*/best.keras --out DIR
"""

import argparse
import json
import os

import numpy as np


def step_difference(velocities, steps, beta_2=0.999, keras_epsilon=1e-7, torch_epsilon=1e-8):
    """Relative difference |s_K − s_P| / s_P of the per-weight step sizes, from Adam's ``v``."""
    root = np.sqrt(np.concatenate([np.ravel(v) for v in velocities]))
    torch_on_root_v = torch_epsilon * np.sqrt(1 - beta_2 ** steps)
    keras_step, torch_step = 1 / (root + keras_epsilon), 1 / (root + torch_on_root_v)
    return np.abs(keras_step - torch_step) / torch_step, root


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoints", nargs="+")
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    import keras

    import snf_tf  # noqa: F401  (registers the classes of the checkpoints)

    rows = []
    print(f"{'checkpoint':<48} {'steps':>6} {'weights':>8} {'median':>9} {'99.9 %':>9} "
          f"{'> 1 %':>8}")
    for path in args.checkpoints:
        optimizer = keras.models.load_model(path).optimizer
        steps = int(optimizer.iterations.numpy())
        velocities = [v.numpy() for v in optimizer.variables if "velocity" in v.path]
        rel, root = step_difference(velocities, steps, float(optimizer.beta_2),
                                    float(optimizer.epsilon))
        row = {"checkpoint": path, "steps": steps, "weights": int(rel.size),
               "keras_epsilon": float(optimizer.epsilon), "torch_epsilon": 1e-8,
               "median": float(np.median(rel)), "q999": float(np.quantile(rel, 0.999)),
               "share_above_1_percent": float(np.mean(rel > 0.01)),
               "sqrt_v_quantiles_0_0.1_1_50": np.quantile(root, [0, 1e-3, 1e-2, 0.5]).tolist()}
        rows.append(row)
        print(f"{os.path.relpath(path)[-48:]:<48} {steps:>6} {rel.size:>8} {row['median']:>9.2g} "
              f"{row['q999']:>9.2g} {row['share_above_1_percent']:>8.2%}")
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "adam_epsilon.json"), "w") as f:
        json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
