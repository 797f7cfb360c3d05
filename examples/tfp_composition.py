"""Compose an SNF flow with TensorFlow Probability: train it with Keras, then use it as a TFP
bijector and distribution next to stock TFP pieces.

A 2-D "two moons" density: a flow of SNF dense layers and spline activations, trained with
``FlowModel.fit``. Then

* ``model.as_distribution()`` is a TFP distribution: exact ``log_prob``, ``sample`` through the
  learned inverses, usable wherever TFP wants one (here in a ``tfd.Mixture``);
* ``model.as_bijector()`` is a TFP bijector (forward = latent → data) that chains with stock
  bijectors: here ``tfb.Shift`` and ``tfb.Scale`` move the density, and its log-prob changes by
  exactly the log-det of the affine map.

    python examples/tfp_composition.py              # ≈ 30 s
    python examples/tfp_composition.py --figure runs/tfp.png   # and draw the densities
"""

import argparse
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import tensorflow_probability as tfp  # noqa: E402

from snf_tf import FlowModel, bijectors, layers  # noqa: E402

tfd, tfb = tfp.distributions, tfp.bijectors


def two_moons(n, rng):
    t = rng.uniform(0, np.pi, n)
    upper = rng.uniform(size=n) < 0.5
    x = np.where(upper, np.cos(t), 1 - np.cos(t))
    y = np.where(upper, np.sin(t), 0.5 - np.sin(t))
    return (np.stack([x, y], 1) + 0.05 * rng.standard_normal((n, 2))).astype(np.float32)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--figure", default=None,
                        help="write the three densities (flow, moved, mixture) to this PNG")
    args = parser.parse_args(argv)
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    train, test = two_moons(20_000, rng), two_moons(2_000, rng)

    # --8<-- [start:train]
    flow = [layers.SelfNormDense()]
    for _ in range(5):
        flow += [layers.SplineActivation(num_bins=8, tail_bound=4.0),
                 layers.SelfNormDense()]
    model = FlowModel(flow)
    model.compile(optimizer=keras.optimizers.Adam(3e-3))
    batches = tf.data.Dataset.from_tensor_slices(train).batch(200)
    model.fit(batches, epochs=args.epochs, verbose=0, shuffle=False)
    nll = -model.log_prob(test).numpy().mean()
    print(f"test NLL of the flow: {nll:.3f} nats")
    # --8<-- [end:train]

    # --8<-- [start:distribution]
    # 1. The flow as a TFP distribution: exact log-densities, samples via R
    moons = model.as_distribution(exact=True)
    np.testing.assert_allclose(moons.log_prob(test), model.log_prob(test),
                               rtol=1e-5)
    samples = moons.sample(1000, seed=1)
    print(f"as_distribution: batch_shape {moons.batch_shape}, "
          f"event_shape {moons.event_shape}")
    print(f"mean of 1000 samples {np.round(samples.numpy().mean(0), 3)}, "
          f"of the data {np.round(test.mean(0), 3)}")
    # --8<-- [end:distribution]

    # --8<-- [start:bijector]
    # 2. The flow's bijector after stock TFP bijectors: x' = 2·x + (3, −1).
    # exact=True: the true log|det W| of every SNF layer (the default is
    # the cheap training value)
    flow = model.as_bijector(exact=True)
    affine = bijectors.Chain([tfb.Shift([3.0, -1.0]), tfb.Scale(2.0), flow])
    base = tfd.Independent(tfd.Normal(tf.zeros(2), 1.0), 1)
    moved = bijectors.FlowDistribution(base, affine)
    gap = moved.log_prob(2.0 * test + [3.0, -1.0]) - moons.log_prob(test)
    print(f"moved: log p'(2x + b) − log p(x) = {gap.numpy().mean():.5f}, "
          f"exactly −2·log 2 = {-2 * np.log(2):.5f}")
    np.testing.assert_allclose(gap, -2 * np.log(2.0), atol=1e-4)
    # --8<-- [end:bijector]

    # --8<-- [start:mixture]
    # 3. A stock TFP mixture of the flow and a Gaussian blob.
    blob = tfd.MultivariateNormalDiag(loc=[0.5, 2.0], scale_diag=[0.2, 0.2])
    mixture = tfd.Mixture(tfd.Categorical(probs=[0.8, 0.2]), [moons, blob])
    at_blob = float(mixture.log_prob([[0.5, 2.0]])[0])
    at_moon = float(mixture.log_prob(test[:1])[0])
    print(f"mixture log_prob: {at_blob:.3f} at the blob's centre, "
          f"{at_moon:.3f} at a moon point")
    # --8<-- [end:mixture]
    if args.figure:
        _draw(args.figure, moons, moved, mixture, samples.numpy())
        print(f"figure: {args.figure}")


def _draw(path, moons, moved, mixture, samples):
    """exp(log_prob) of the three distributions on grids, the flow's samples on the first."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("the flow: as_distribution()", moons, (-1.5, 2.5), (-1.0, 1.5)),
              ("moved: 2·x + (3, −1) through tfb", moved, (0.0, 8.0), (-3.0, 2.0)),
              ("tfd.Mixture(flow 0.8, Gaussian 0.2)", mixture, (-1.5, 2.5), (-1.0, 2.8))]
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.6))
    for ax, (title, dist, (x0, x1), (y0, y1)) in zip(axes, panels):
        gx, gy = np.meshgrid(np.linspace(x0, x1, 200), np.linspace(y0, y1, 200))
        grid = np.stack([gx.ravel(), gy.ravel()], 1).astype(np.float32)
        density = np.exp(dist.log_prob(grid).numpy()).reshape(gx.shape)
        ax.imshow(density, origin="lower", extent=(x0, x1, y0, y1), cmap="magma",
                  aspect="auto")
        ax.set_title(title, fontsize=10)
    axes[0].scatter(samples[:300, 0], samples[:300, 1], s=2, c="cyan", alpha=0.6,
                    label="300 samples")
    axes[0].legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
