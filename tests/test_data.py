"""snf_tf.data: real MNIST from ../shared, mocked CIFAR-10 / ImageNet32, augmentation (bad
arguments: test_bad_input.py)."""

import os

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from snf_tf import data

needs_mnist = pytest.mark.skipif(
    not os.path.isdir(os.path.join(os.environ.get("TFDS_DATA_DIR", "/nonexistent"), "mnist")),
    reason="real MNIST (../shared/tensorflow_datasets) not available")


@needs_mnist
def test_mnist_paper_splits_are_uint8_and_deterministic():
    sizes = {split: sum(int(b.shape[0]) for b in data.load("mnist", split, 1000))
             for split in ("validation", "test")}
    assert sizes == {"validation": 10_000, "test": 10_000}
    train = data.load("mnist", "train", 100)
    first = next(iter(train))
    assert first.dtype == tf.uint8 and first.shape == (100, 28, 28, 1)
    np.testing.assert_array_equal(next(iter(data.load("mnist", "train", 100))), first)
    assert int(train.cardinality()) == 500


@needs_mnist
def test_mnist_augmentation_is_a_one_pixel_shift():
    plain = next(iter(data.load("mnist", "test[:64]", 64))).numpy().astype(int)
    augmented = data.load("mnist", "test[:64]", 64, augment=True, seed=0)
    shifted = next(iter(augmented)).numpy().astype(int)
    for a, b in zip(plain, shifted):
        candidates = []
        padded = np.pad(a[..., 0], 1, mode="reflect")
        for di in range(3):
            for dj in range(3):
                candidates.append(np.array_equal(padded[di:di + 28, dj:dj + 28], b[..., 0]))
        assert any(candidates)
    assert not np.array_equal(plain, shifted)


@pytest.mark.parametrize("name,shape", [
    ("cifar10", (32, 32, 3)), ("downsampled_imagenet/32x32", (32, 32, 3))])
def test_mocked_pipelines(name, shape):
    def as_dataset(self, split, **kwargs):  # mock images of the real resolution
        images = np.random.default_rng(0).integers(0, 256, (30,) + shape, dtype=np.uint8)
        labels = np.zeros(30, np.int64)
        return tf.data.Dataset.from_tensor_slices({"image": images, "label": labels})

    with tfds.testing.mock_data(num_examples=30, as_dataset_fn=as_dataset):
        batch = next(iter(data.load(name, "train", 8, augment=name == "cifar10")))
        assert batch.dtype == tf.uint8 and batch.shape == (8,) + shape
        test = data.load(name, "test", 8)
        assert sum(int(b.shape[0]) for b in test) > 0
