"""Export a trained flow as a SavedModel and serve it from a process that has only TensorFlow.

Trains a small SNF FC flow on MNIST for one quick epoch (or loads ``--checkpoint``), writes the
SavedModel with :func:`snf_tf.export.export_saved_model`, then starts a fresh Python process that
imports TensorFlow but *not* snf_tf and calls the five endpoints: ``log_prob(x)``,
``dequantized_log_prob(x, seed)`` (for integer images: the reference's estimate at ``x + u``),
``forward(x)``, ``inverse(z)`` and ``sample(n, seed)``. The served log-likelihoods equal the
model's to 1e-4, the served samples ``model.sample(16, seed=0)``; they are drawn to
``OUT/served_samples.png``.

    python examples/export_and_serve.py                          # ≈ 1 min
    python examples/export_and_serve.py --checkpoint runs/selfnorm_fc_mnist/best.keras
"""

import argparse
import json
import os
import subprocess
import sys
import textwrap

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from snf_tf import architectures, data, export, images  # noqa: E402

SERVE = textwrap.dedent("""
    import json, sys
    import numpy as np
    import tensorflow as tf
    assert "snf_tf" not in sys.modules
    flow = tf.saved_model.load(sys.argv[1])
    x = tf.constant(np.load(sys.argv[2]), tf.float32)
    out = flow.forward(x)
    samples = flow.sample(n=tf.constant(16), seed=tf.constant(0))
    np.save(sys.argv[3], samples.numpy())
    back = flow.inverse(out["z"])
    pixels = tf.floor(x)  # the integer images
    print(json.dumps({"log_prob": flow.log_prob(x).numpy().tolist(),
                      "dequantized": flow.dequantized_log_prob(x=pixels, seed=0).numpy().tolist(),
                      "sample_shape": samples.shape.as_list(),
                      "max_reconstruction_error": float(tf.reduce_max(tf.abs(back - x)))}))
""")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default=None, help="a .keras FlowModel to export")
    parser.add_argument("--out", default="runs/export_and_serve")
    parser.add_argument("--data-dir", default=None)
    args = parser.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    test = next(iter(data.load("mnist", "test", 8, data_dir=args.data_dir, limit=8)))
    x = test.numpy().astype(np.float32) + 0.5  # a point of the continuous [0, 256) scale

    if args.checkpoint:
        model = export.load_checkpoint(args.checkpoint)
    else:
        keras.utils.set_random_seed(0)
        model = architectures.fc_flow(seed=0)
        model.compile(optimizer=keras.optimizers.Adam(1e-4))
        model.fit(data.load("mnist", "train", 100, data_dir=args.data_dir, limit=2000),
                  epochs=1, verbose=2, shuffle=False)
    # --8<-- [start:export]
    saved = export.export_saved_model(
        model, os.path.join(args.out, "saved_model"))
    # what the endpoints must give: the exported, noise-free computations
    expected = export.log_prob(model, x).numpy()
    dequantized = export.dequantized_log_prob(model, np.floor(x), 0).numpy()
    # --8<-- [end:export]

    # --8<-- [start:serve]
    np.save(os.path.join(args.out, "x.npy"), x)
    sampled = os.path.join(args.out, "served_samples.npy")
    served = subprocess.run([sys.executable, "-I", "-c", SERVE, saved,
                             os.path.join(args.out, "x.npy"), sampled],
                            capture_output=True, text=True, check=True,
                            env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
    result = json.loads(served.stdout.strip().splitlines()[-1])
    np.testing.assert_allclose(result["log_prob"], expected, rtol=1e-4)
    np.testing.assert_allclose(result["dequantized"], dequantized, rtol=1e-4)
    np.testing.assert_allclose(np.load(sampled), model.sample(16, seed=0),
                               atol=1e-2)
    # --8<-- [end:serve]
    # --8<-- [start:report]
    grid = os.path.join(args.out, "served_samples.png")
    images.save_png(grid, images.image_grid(np.load(sampled), columns=8))
    errors = model.inverse_errors()
    print(f"served from {saved} by a process without snf_tf:")
    log_p, deq = result["log_prob"][:3], result["dequantized"][:3]
    print(f"  log_prob(x)  {np.round(log_p, 1)} …  (the model's)")
    print(f"  dequantized_log_prob(⌊x⌋, seed=0)  {np.round(deq, 1)} …")
    print(f"  sample(n=16) → shape {result['sample_shape']}")
    print(f"  the 16 samples drawn: {grid}")
    error = result["max_reconstruction_error"]
    print(f"  max |inverse(forward(x)) − x| = {error:.2e} "
          f"through the learned R")
    if errors:  # a model with learned inverses (SNF layers)
        print(f"  (largest ‖RW − I‖ {max(errors.values()):.3f}; "
              f"log_prob does not use R)")
    # --8<-- [end:report]


if __name__ == "__main__":
    main()
