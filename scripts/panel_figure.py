"""PNG image grids side by side, each under its title (the tutorials' figures).

    python scripts/panel_figure.py docs/figures/tutorial_fc_mnist.png \
        "after the first-look run=runs/fc_mnist/samples.png" \
        "after 10 minutes=runs/selfnorm_fc_mnist/samples.png"
"""

import argparse

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("output")
    parser.add_argument("panels", nargs="+", metavar="TITLE=PNG")
    args = parser.parse_args(argv)
    panels = [(title, plt.imread(path)) for title, path in
              (panel.rsplit("=", 1) for panel in args.panels)]
    aspect = max(image.shape[0] / image.shape[1] for _, image in panels)
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 4.2 * aspect + 0.5),
                             squeeze=False)
    for ax, (title, image) in zip(axes[0], panels):
        ax.imshow(image, cmap="gray", interpolation="nearest")
        ax.set_title(title, fontsize=10)
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(args.output, dpi=100)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
