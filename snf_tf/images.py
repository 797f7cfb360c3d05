"""Image grids as PNG files: samples and real images side by side (callbacks, run folders, CLI)."""

import math

import numpy as np

from snf_tf._files import atomic_path

__all__ = ["image_grid", "save_png"]


def image_grid(images, columns=None):
    """``[n, H, W, C]`` images on the 0..256 scale → one uint8 ``[rows·H, cols·W, C]`` grid
    (non-finite values become 0 or 255)."""
    images = np.nan_to_num(np.asarray(images, dtype=np.float64), nan=0.0, posinf=255.0,
                           neginf=0.0)  # a diverged model's samples still make a picture
    images = np.clip(np.floor(images), 0, 255).astype(np.uint8)
    n, h, w, c = images.shape
    columns = columns or int(math.ceil(math.sqrt(n)))
    rows = int(math.ceil(n / columns))
    grid = np.zeros((rows * h, columns * w, c), np.uint8)
    for i, image in enumerate(images):
        r, q = divmod(i, columns)
        grid[r * h:(r + 1) * h, q * w:(q + 1) * w] = image
    return grid


def save_png(path, grid):
    """Write a uint8 ``[H, W, C]`` grid (C = 1 gray, 3 RGB) as a PNG, atomically: a failed write
    (full disk, kill) leaves the earlier file at ``path``."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    with atomic_path(path) as tmp:
        plt.imsave(tmp, grid[..., 0] if grid.shape[-1] == 1 else grid, cmap="gray", vmin=0,
                   vmax=255, format="png")  # whatever the file name ends with
