"""tf.data pipelines for the paper's datasets, from tensorflow-datasets (docs/paper.md: datasets).

Images stay ``uint8`` NHWC in the pipeline; dequantization, /256 and logit are flow layers inside
the model so that their log-dets count in the likelihood.

| name | train | validation | test |
|---|---|---|---|
| ``mnist``, ``fashion_mnist`` | first 50 000 of train | last 10 000 of train | official 10 000 |
| ``cifar10`` | first 40 000 of train | last 10 000 of train | official 10 000 |
| ``downsampled_imagenet/32x32`` | train minus its first 20 000 | first 20 000 of train | official 50 000 validation |

The reference drew ImageNet32's 20 000 validation images at random without a seed; a fixed slice
is used here so runs are reproducible.
"""  # noqa: E501 - a Markdown table row cannot be wrapped

import os
import re

import tensorflow as tf
import tensorflow_datasets as tfds
from absl import logging as absl_logging

from snf_tf.checks import check_positive_int

__all__ = ["DATASETS", "IMAGE_SHAPES", "SPLITS", "default_data_dir", "load", "num_examples"]

SPLITS = {
    "mnist": {"train": "train[:50000]", "validation": "train[50000:]", "test": "test"},
    "fashion_mnist": {"train": "train[:50000]", "validation": "train[50000:]", "test": "test"},
    "cifar10": {"train": "train[:40000]", "validation": "train[40000:]", "test": "test"},
    "downsampled_imagenet/32x32": {
        "train": "train[20000:]", "validation": "train[:20000]", "test": "validation"},
}
DATASETS = tuple(SPLITS)
IMAGE_SHAPES = {"mnist": (28, 28, 1), "fashion_mnist": (28, 28, 1), "cifar10": (32, 32, 3),
                "downsampled_imagenet/32x32": (32, 32, 3)}
# The reference shuffles CIFAR-10 and ImageNet32 training data, but not MNIST.
_SHUFFLE_TRAIN = {"mnist": False, "fashion_mnist": False, "cifar10": True,
                  "downsampled_imagenet/32x32": True}


def default_data_dir(path=None):
    """The folder tfds reads from: ``path``, else ``$TFDS_DATA_DIR``, else tfds' default."""
    return path or os.environ.get("TFDS_DATA_DIR") or os.path.expanduser("~/tensorflow_datasets")


def _first(split, n):
    """The first ``n`` examples of a tfds split string ``base`` or ``base[a:b]``."""
    n = check_positive_int(n, "limit", "data.load")
    match = re.fullmatch(r"(\w+)(?:\[(\d*):(\d*)\])?", split)
    if match is None:
        raise ValueError(f"cannot take the first {n} examples of split {split!r}.")
    base, start, stop = match.group(1), int(match.group(2) or 0), match.group(3)
    end = start + n if not stop else min(start + n, int(stop))
    return f"{base}[{start}:{end}]"


def _shift(image, pad, mode):
    """Random integer shift by up to ``pad`` pixels: pad, then crop back at a random offset."""
    shape = tf.shape(image)
    padded = tf.pad(image, [[pad, pad], [pad, pad], [0, 0]], mode=mode)
    return tf.image.random_crop(padded, shape)


def _augment(name):
    if name in ("mnist", "fashion_mnist"):
        # reference: Pad(1, reflect) + RandomCrop(28), i.e. ±1-pixel shifts
        return lambda image: _shift(image, 1, "REFLECT")
    if name == "cifar10":
        # reference: horizontal flip, integer shifts in {-1, 0, 1} with edge padding
        return lambda image: tf.image.random_flip_left_right(_shift(image, 1, "SYMMETRIC"))
    raise ValueError(f"no augmentation is defined for {name!r} (the reference uses none).")


def _source(name, split, limit, data_dir):
    """``(tfds split string, data folder)`` of one of the paper's splits (the first ``limit``
    examples when given); ``ValueError`` for an unknown dataset."""
    if name not in SPLITS:
        raise ValueError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}.")
    tfds_split = SPLITS[name].get(split, split)
    if limit is not None:
        tfds_split = _first(tfds_split, limit)
    return tfds_split, data_dir if data_dir is not None else os.environ.get("TFDS_DATA_DIR")


def num_examples(name, split, data_dir=None, limit=None):
    """How many examples :func:`load` yields per epoch for ``name``, ``split`` and ``limit``,
    from the tfds metadata (no data is read); ``FileNotFoundError`` as :func:`load`."""
    tfds_split, folder = _source(name, split, limit, data_dir)
    try:
        return int(tfds.builder(name, data_dir=folder).info.splits[tfds_split].num_examples)
    except AssertionError as error:  # tfds' DatasetNotFoundError
        raise FileNotFoundError(f"dataset {name!r} was not found in "
                                f"{default_data_dir(folder)!r}.") from error


def load(name, split, batch_size, augment=False, data_dir=None, download=False, shuffle=None,
         cache=True, seed=None, drop_remainder=False, limit=None, labels=False):
    """A batched ``tf.data.Dataset`` of uint8 NHWC images for one of the paper's splits
    (``(image, label)`` pairs with ``labels=True``, for class-conditional models).

    Args:
        name: one of :data:`DATASETS`.
        split: ``"train"``, ``"validation"`` or ``"test"`` (the paper's splits, see module doc), or
            any tfds split string such as ``"train[:1000]"``.
        batch_size: examples per batch (> 0).
        augment: random ±1-pixel shifts (MNIST) / flips and shifts (CIFAR-10), as in the reference.
        data_dir: tfds data folder (default ``$TFDS_DATA_DIR``).
        download: let tfds download when the data is missing (off by default: offline machines).
        shuffle: shuffle examples each epoch; default as in the reference (train split of
            CIFAR-10 and ImageNet32 only).
        cache: cache decoded images in memory before augmentation.
        limit: use only the first ``limit`` examples of the split (quick runs).
        labels: yield ``(image, label)`` pairs (int64 labels) instead of images.
    """
    tfds_split, folder = _source(name, split, limit, data_dir)
    batch_size = check_positive_int(batch_size, "batch_size", "data.load")
    verbosity = absl_logging.get_verbosity()
    # tfds logs a warning per folder it looks into before it says the data is missing; the
    # error below says it in one line
    absl_logging.set_verbosity(absl_logging.ERROR)
    try:
        ds = tfds.load(name, split=tfds_split, data_dir=folder, download=download,
                       shuffle_files=False)
    except AssertionError as error:  # tfds' DatasetNotFoundError
        raise FileNotFoundError(
            f"dataset {name!r} (split {tfds_split!r}) was not found in "
            f"{default_data_dir(folder)!r} and download is off. Point TFDS_DATA_DIR (snf-tf: "
            "--data-dir; Python: data_dir=) at a folder prepared by tensorflow_datasets, or "
            f"prepare one where there is network: `tfds build {name} --data_dir FOLDER` "
            "(or download=True)."
        ) from error
    except ValueError as error:  # e.g. a malformed split string
        raise ValueError(f"dataset {name!r}: bad split {split!r}: {error}") from error
    finally:
        absl_logging.set_verbosity(verbosity)
    # tfds declares ImageNet32's images without a size; a static shape lets the model build.
    shape = IMAGE_SHAPES[name]
    if labels:
        if "label" not in ds.element_spec:
            raise ValueError(f"dataset {name!r} has no labels for a class-conditional model.")
        ds = ds.map(lambda example: (tf.ensure_shape(example["image"], shape), example["label"]),
                    num_parallel_calls=tf.data.AUTOTUNE)
    else:
        ds = ds.map(lambda example: tf.ensure_shape(example["image"], shape),
                    num_parallel_calls=tf.data.AUTOTUNE)
    if cache:
        ds = ds.cache()
    if shuffle is None:
        shuffle = split == "train" and _SHUFFLE_TRAIN[name]
    if shuffle:
        ds = ds.shuffle(10_000, seed=seed, reshuffle_each_iteration=True)
    if augment:
        shift = _augment(name)
        ds = ds.map((lambda image, label: (shift(image), label)) if labels else shift,
                    num_parallel_calls=tf.data.AUTOTUNE)
    return ds.batch(batch_size, drop_remainder=drop_remainder).prefetch(tf.data.AUTOTUNE)
