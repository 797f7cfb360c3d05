"""snf_tf.context: encoding, checks and broadcasting of the context of a conditional flow, eagerly
and in graphs (where the value checks are assertions with the same words)."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import snf_tf
from snf_tf import context as C
from snf_tf import layers as L
from snf_tf import model as snf_model


def test_labels_are_one_hot_and_vectors_pass_through():
    np.testing.assert_array_equal(C.encode([2, 0], num_classes=3, batch=2), np.eye(3)[[2, 0]])
    np.testing.assert_array_equal(C.encode(np.array([[1]]), num_classes=3, batch=1), [[0, 1, 0]])
    vectors = np.array([[0.5, -1.0]], "float32")
    encoded = C.encode(vectors, context_dim=2, batch=1, dtype="float64")
    assert encoded.dtype == tf.float64
    np.testing.assert_array_equal(encoded, vectors)
    assert C.encode(None) is None


@pytest.mark.parametrize("labels, batch, message", [
    ([0, 3], 2, C.LABEL_RANGE),
    ([0, 1, 2], 2, C.CONTEXT_BATCH.split("'")[-1]),  # TF escapes the quote in its message
])
def test_value_checks_are_graph_assertions_with_the_same_words(labels, batch, message):
    @tf.function(input_signature=[tf.TensorSpec([None], tf.int32), tf.TensorSpec([], tf.int32)])
    def encoded(y, rows):
        return C.encode(y, num_classes=3, batch=rows)

    with pytest.raises(tf.errors.InvalidArgumentError, match=message):
        encoded(tf.constant(labels), tf.constant(batch))
    with pytest.raises(ValueError, match=message):  # eagerly: a ValueError saying more
        C.encode(labels, num_classes=3, batch=batch, static_batch=batch)


def test_broadcast_repeats_one_label_or_one_row():
    np.testing.assert_array_equal(C.broadcast(4, 3), [4, 4, 4])
    np.testing.assert_array_equal(C.broadcast([[1.0, 2.0]], 2), [[1, 2], [1, 2]])
    np.testing.assert_array_equal(C.broadcast([1, 2], 3), [1, 2])  # encode tells the rows apart
    assert C.broadcast(None, 3) is None
    assert C.broadcast(2.5, 3).shape == ()  # not a label: encode names the dtype

    @tf.function(input_signature=[tf.TensorSpec([None], tf.int32), tf.TensorSpec([], tf.int32)])
    def rows(y, n):
        return C.broadcast(y, n)

    np.testing.assert_array_equal(rows(tf.constant([7]), tf.constant(3)), [7, 7, 7])
    np.testing.assert_array_equal(rows(tf.constant([7, 8]), tf.constant(3)), [7, 8])


def test_repeat_rows_tiles_for_k_samples_per_row():
    context = tf.constant([[1.0], [2.0]])
    np.testing.assert_array_equal(C.repeat_rows(context, 4, "view")[:, 0], [1, 2, 1, 2])
    with pytest.raises(ValueError, match="view: 3 examples for a context of 2 rows"):
        C.repeat_rows(context, 3, "view")


def test_split_batch():
    x, y = np.zeros((2, 3)), np.array([0, 1])
    assert C.split_batch((x, y), conditional=True)[1] is y
    assert C.split_batch((x, y), conditional=False)[1] is None
    assert C.split_batch(x, conditional=False)[0] is x
    for data in (x, (x,), (x, None)):
        with pytest.raises(ValueError, match=r"train and evaluate it on \(x, y\) pairs"):
            C.split_batch(data, conditional=True)


def test_layer_contexts_are_checked_by_the_same_function():
    coupling = L.AffineCoupling(4, context_dim=3)
    coupling.build((None, 2, 2, 2))
    x = tf.zeros((2, 2, 2, 2))
    c = C.check_layer_context(coupling, np.zeros((2, 3), "float64"), x)
    assert c.dtype == tf.float32 and coupling._check_context(c, x).shape == (2, 3)
    with pytest.raises(ValueError, match="rows for a batch of 2"):
        C.check_layer_context(coupling, np.zeros((3, 3), "float32"), x)
    C.check_layer_context(coupling, np.zeros((3, 3), "float32"))  # no batch to match: a view
    with pytest.raises(ValueError, match="takes no context"):
        C.check_layer_context(L.ActNorm(), np.zeros((2, 3), "float32"))


def test_one_row_for_every_sample_of_a_model():
    model = snf_tf.FlowModel([L.Flatten(), L.RealNVPCoupling((8,), context_dim=2)],
                             context_dim=2)
    model.build((None, 2, 2))
    row = np.array([[0.3, -0.2]], "float32")
    np.testing.assert_allclose(model.sample(3, seed=1, context=row),
                               model.sample(3, seed=1, context=np.repeat(row, 3, axis=0)))


def test_conditional_normal_keeps_its_names():
    assert snf_tf.ConditionalNormal is snf_model.ConditionalNormal is C.ConditionalNormal
    registered = keras.saving.get_registered_object("snf_tf>ConditionalNormal")
    assert registered is C.ConditionalNormal
    assert keras.saving.get_registered_name(C.ConditionalNormal) == "snf_tf>ConditionalNormal"
