r"""Per-element monotone rational-quadratic spline with a hand-written gradient.

Durkan, Bekasov, Murray, Papamakarios, *Neural Spline Flows*, NeurIPS 2019 (Appendix A); the
parametrisation of ``tfp.bijectors.RationalQuadraticSpline``, which stays the independent
reference in the tests. Each element ``e`` of the input has its own spline on
``[x_0, x_K] = [range_min, range_min + Σ w]`` with K bins: knots ``x_k, y_k`` (cumulative widths
and heights) and knot slopes ``d_k`` (``d_0 = d_K = 1``). In bin k, with
``ξ = (x − x_k)/w_k``, ``s = h_k/w_k`` and ``A = d_k + d_{k+1} − 2s``:

.. math::
    z = y_k + \frac{h_k\,(s ξ^2 + d_k ξ(1 − ξ))}{s + A ξ(1 − ξ)},\qquad
    \log z′ = 2\log s + \log\bigl(d_{k+1}ξ^2 + 2sξ(1 − ξ) + d_k(1 − ξ)^2\bigr)
              − 2\log\bigl(s + Aξ(1 − ξ)\bigr),

and the identity (log-derivative 0) for ``x ≤ x_0`` or ``x ≥ x_K``.

Why not TFP's bijector in the training step: it broadcasts every knot table to the batch
(``[batch, E, K + 1]``), finds bins with ``searchsorted`` and picks six parameters with six batched
gathers, and autodiff then differentiates all of it. Here the six per-bin parameters live in one
table ``[E·K, 6]`` built once per step from the weights; the bin is a sum of K − 1 comparisons, the
parameters one row gather, and the gradient a closed form (the partial derivatives below) whose
parameter part is one segment sum back into the table. The table itself is built with ordinary
differentiable ops, so autodiff carries the gradient on to the unconstrained weights.
"""

import contextlib
import math

import tensorflow as tf

__all__ = ["rational_quadratic_spline", "rational_quadratic_spline_inverse", "spline_parameters",
           "spline_table", "unconstrained_spline_table", "xla_kernels"]


def _knots(bin_sizes, range_min, sequential=False):
    """``[range_min, range_min + cumsum(bin_sizes)]`` rounded as TFP rounds them, so that an input
    exactly on a knot falls in the same bin: TensorFlow's ``cumsum`` (what TFP calls), or inside
    an XLA kernel (``sequential``) the same left-to-right sum written out, because XLA's cumsum
    associates differently (Grappler may regroup written-out adds, XLA does not)."""
    if not sequential:
        inner = tf.cumsum(bin_sizes, axis=-1) + range_min
        start = tf.broadcast_to(range_min, tf.shape(inner[..., :1]))
        return tf.concat([start, inner], axis=-1)
    sizes = tf.unstack(bin_sizes, axis=-1)
    total, inner = sizes[0], [sizes[0] + range_min]
    for size in sizes[1:]:
        total = total + size
        inner.append(total + range_min)
    start = tf.broadcast_to(range_min, tf.shape(inner[0]))
    return tf.stack([start] + inner, axis=-1)


def spline_parameters(unnormalized_widths, unnormalized_heights, unnormalized_derivatives,
                      tail_bound, min_bin_width=1e-3, min_bin_height=1e-3, min_derivative=1e-3):
    """``(bin_widths, bin_heights, interior knot_slopes)`` in TFP's parametrisation from the
    unconstrained ``[..., K]``, ``[..., K]``, ``[..., K − 1]`` (Durkan et al.'s
    ``unconstrained_rational_quadratic_spline`` with linear tails: boundary slopes 1)."""
    num_bins = unnormalized_widths.shape[-1]
    scale = 2.0 * tail_bound

    def bins(unnormalized, minimum):
        return scale * (minimum + (1.0 - minimum * num_bins) * tf.math.softmax(unnormalized, -1))

    offset = math.log(math.expm1(1.0 - min_derivative))
    slopes = min_derivative + tf.math.softplus(unnormalized_derivatives + offset)
    return (bins(unnormalized_widths, min_bin_width),
            bins(unnormalized_heights, min_bin_height), slopes)


def unconstrained_spline_table(unnormalized_widths, unnormalized_heights,
                               unnormalized_derivatives, tail_bound, min_bin_width=1e-3,
                               min_bin_height=1e-3, min_derivative=1e-3):
    """:func:`spline_table` of :func:`spline_parameters` on ``[−tail_bound, tail_bound]``, with
    the unconstrained weights flattened to ``[E, ·]``.

    The softmax and softplus run as TensorFlow ops (XLA's ``exp`` rounds differently, which would
    move the knots by an ulp and put inputs that lie exactly on a knot into another bin than
    TFP's); the knot table, which only adds and subtracts, runs as one XLA kernel in traced
    functions (see :func:`xla_kernels`)."""
    flat = [tf.reshape(u, [-1, u.shape[-1]]) for u in
            (unnormalized_widths, unnormalized_heights, unnormalized_derivatives)]
    widths, heights, slopes = spline_parameters(*flat, float(tail_bound), float(min_bin_width),
                                                float(min_bin_height), float(min_derivative))
    table_fn = _compiled_or_plain(spline_table)
    return table_fn(widths, heights, slopes, -float(tail_bound), table_fn is not spline_table)


def spline_table(bin_widths, bin_heights, knot_slopes, range_min, _sequential=False):
    """``(knots_x, knots_y, table)`` of per-element splines.

    Args:
        bin_widths: ``[E, K]``, positive, each row summing to the same total.
        bin_heights: ``[E, K]``, positive, each row summing to the same total.
        knot_slopes: ``[E, K − 1]``, the positive interior slopes (boundary slopes are 1).
        range_min: scalar, the left end of every spline's range.

    Returns:
        ``knots_x``, ``knots_y``: ``[E, K + 1]``; ``table``: ``[E·K, 6]``, row ``e·K + k`` holding
        ``(x_k, w_k, y_k, h_k, d_k, d_{k+1})`` of bin k of element e, with ``w_k, h_k`` the
        differences of the knots (as TFP uses them).
    """
    range_min = tf.convert_to_tensor(range_min, dtype=bin_widths.dtype)
    kx = _knots(bin_widths, range_min, _sequential)
    ky = _knots(bin_heights, range_min, _sequential)
    ones = tf.ones_like(knot_slopes[..., :1])
    kd = tf.concat([ones, knot_slopes, ones], axis=-1)
    x_k, y_k = kx[..., :-1], ky[..., :-1]
    columns = (x_k, kx[..., 1:] - x_k, y_k, ky[..., 1:] - y_k, kd[..., :-1], kd[..., 1:])
    table = tf.reshape(tf.stack(columns, axis=-1), [-1, 6])
    return kx, ky, table


#: the table row that out-of-range values read: the identity map (x_k = y_k = 0, w = h = 1,
#: d = 1), so their (discarded) values stay finite and their parameter gradients land in a row
#: that is cut off instead of being masked
_IDENTITY_ROW = (0.0, 1.0, 0.0, 1.0, 1.0, 1.0)


def _bins(values, knots, num_bins):
    """``(outside, rows)`` for ``values`` ``[N, E]``: TFP's out-of-range test
    (``v ≤ knot_0`` or ``v ≥ knot_K``; NaN counts as inside, so it stays NaN), and the table row
    of bin k with ``knot_k ≤ v < knot_{k+1}``, found by K − 1 comparisons (no per-element search).
    Out-of-range values get the identity row past the end of the table."""
    outside = (values <= knots[:, 0]) | (values >= knots[:, -1])
    index = tf.cast(values >= knots[:, 1], tf.int32)
    for k in range(2, num_bins):
        index += tf.cast(values >= knots[:, k], tf.int32)
    elements = tf.shape(knots)[0]
    rows = index + num_bins * tf.range(elements, dtype=tf.int32)
    return outside, tf.where(outside, num_bins * elements, rows)


def _with_identity_row(table):
    return tf.concat([table, tf.constant([_IDENTITY_ROW], table.dtype)], axis=0)


def _flatten(x, table, num_bins):
    """``x`` as ``[N, E]``, E = the number of per-element splines of ``table``."""
    elements = table.shape[0] // num_bins if table.shape[0] is not None else -1
    if elements != -1 and x.shape.rank is not None and x.shape[1:].is_fully_defined():
        if x.shape[1:].num_elements() != elements:
            raise ValueError(f"rational_quadratic_spline: x has {x.shape[1:].num_elements()} "
                             f"values per example (shape {x.shape}) but the table holds "
                             f"{elements} splines.")
    return tf.reshape(x, [-1, tf.shape(table)[0] // num_bins])


def _forward_math(x, outside, x_k, w_k, y_k, h_k, d_k, d_kp1):
    """Elementwise part of the forward: ``(z, Σ_e log z′)``."""
    zero = tf.zeros([], x.dtype)
    x_in = tf.where(outside, zero, x)  # finite stand-in for the identity row
    s = h_k / w_k
    r = (x_in - x_k) / w_k
    one_minus_r = 1.0 - r
    q = r * one_minus_r
    a = d_kp1 + d_k - 2.0 * s
    den = s + a * q
    p = s * r * r + d_k * q
    z = tf.where(outside, x, y_k + (h_k * p) / den)
    n2 = d_kp1 * r * r + 2.0 * s * q + d_k * one_minus_r * one_minus_r
    log_slope = 2.0 * tf.math.log(s) + tf.math.log(n2) - 2.0 * tf.math.log(den)
    log_det = tf.reduce_sum(tf.where(outside, zero, log_slope), axis=-1)
    return z, log_det


def _backward_math(g_z, g_log_det, x, outside, x_k, w_k, y_k, h_k, d_k, d_kp1):
    """Elementwise part of the gradient: ``g_x`` and the six per-entry parameter gradients.

    z = y_k + h_k F(r, s, d_k, d_{k+1}) with F = p/den, r = (x − x_k)/w_k, s = h_k/w_k:
    ∂F/∂r = (p_r − F den_r)/den, ∂F/∂s = (r² − F(1 − 2q))/den, ∂F/∂d_k = q(1 − F)/den,
    ∂F/∂d_{k+1} = −qF/den; the log-derivative's partials likewise.
    """
    zero = tf.zeros([], x.dtype)
    x_in = tf.where(outside, zero, x)
    s = h_k / w_k
    inv_w = 1.0 / w_k
    r = (x_in - x_k) * inv_w
    one_minus_r = 1.0 - r
    q = r * one_minus_r
    a = d_kp1 + d_k - 2.0 * s
    inv_den = 1.0 / (s + a * q)
    p = s * r * r + d_k * q
    inv_n2 = 1.0 / (d_kp1 * r * r + 2.0 * s * q + d_k * one_minus_r * one_minus_r)
    g_log = g_log_det[:, None]
    f = p * inv_den
    dq = 1.0 - 2.0 * r
    one_minus_2q = 1.0 - 2.0 * q
    hz = g_z * h_k * inv_den
    g_r = (hz * (2.0 * s * r + (d_k - f * a) * dq)
           + g_log * (2.0 * (d_kp1 * r + s * dq - d_k * one_minus_r) * inv_n2
                      - 2.0 * a * dq * inv_den))
    g_s = (hz * (r * r - f * one_minus_2q)
           + g_log * (2.0 / s + 2.0 * q * inv_n2 - 2.0 * one_minus_2q * inv_den))
    two_q_den = 2.0 * q * inv_den
    g_dk = hz * q * (1.0 - f) + g_log * (one_minus_r * one_minus_r * inv_n2 - two_q_den)
    g_dkp1 = g_log * (r * r * inv_n2 - two_q_den) - hz * q * f
    g_xk = -g_r * inv_w
    g_x = tf.where(outside, g_z, -g_xk)
    return g_x, (g_xk, -(r * g_r + s * g_s) * inv_w, g_z, g_z * f + g_s * inv_w, g_dk, g_dkp1)


def _forward_kernel(x, table, knots, num_bins):
    outside, rows = _bins(x, knots, num_bins)
    params = tf.unstack(tf.gather(table, rows), axis=-1)
    z, log_det = _forward_math(x, outside, *params)
    return z, log_det, outside, rows


def _backward_kernel(g_z, g_log_det, x, table, outside, rows):
    params = tf.unstack(tf.gather(table, rows), axis=-1)
    g_x, columns = _backward_math(g_z, g_log_det, x, outside, *params)
    # Out-of-range entries read the identity row: their parameter gradients land in that last
    # row, which the concat that appended it drops on the way back (no masking needed).
    g_table = tf.math.unsorted_segment_sum(tf.reshape(tf.stack(columns, axis=-1), [-1, 6]),
                                           tf.reshape(rows, [-1]), tf.shape(table)[0])
    return g_x, g_table


_XLA = {"enabled": True}
_compiled = {}


def _compiled_or_plain(fn):
    """``fn`` itself eagerly (no compile per new shape) or when XLA kernels are off; else ``fn``
    compiled with XLA, which fuses the bin search, the gathers and the ≈ 60 elementwise ops into
    a few loops instead of running them op by op (RESULTS.md, "Whole-model speed: the spline
    activations")."""
    if not _XLA["enabled"] or tf.executing_eagerly():
        return fn
    if fn not in _compiled:
        _compiled[fn] = tf.function(fn, jit_compile=True, autograph=False)
    return _compiled[fn]


@contextlib.contextmanager
def xla_kernels(enabled):
    """Within the block, traced splines use XLA-compiled kernels (``True``, the default) or plain
    TensorFlow ops (``False``: e.g. for a SavedModel served where XLA is unavailable). Applies to
    functions traced inside the block."""
    previous = _XLA["enabled"]
    _XLA["enabled"] = bool(enabled)
    try:
        yield
    finally:
        _XLA["enabled"] = previous


def _spline(x, table, knots, num_bins):
    """``(z [N, E], Σ_e log z′ [N])``; ``table`` ends with the identity row."""
    forward_kernel = _compiled_or_plain(_forward_kernel)
    backward_kernel = _compiled_or_plain(_backward_kernel)

    @tf.custom_gradient
    def spline(x, table):
        z, log_det, outside, rows = forward_kernel(x, table, knots, num_bins)

        def grad(g_z, g_log_det):
            return backward_kernel(g_z, g_log_det, x, table, outside, rows)

        return (z, log_det), grad

    return spline(x, table)


def rational_quadratic_spline(x, knots_x, table, num_bins):
    """``(z, log_det)``: ``z`` shaped like ``x``, ``log_det = Σ log z′`` per example ``[batch]``.

    Args:
        x: ``[batch, *event]`` with ``prod(event) = E``, the number of per-element splines.
        knots_x: from :func:`spline_table` (``[E, K + 1]``).
        table: from :func:`spline_table` (``[E·K, 6]``).
        num_bins: K.
    """
    flat = _flatten(x, table, num_bins)
    z, log_det = _spline(flat, _with_identity_row(table), tf.stop_gradient(knots_x), num_bins)
    return tf.reshape(z, tf.shape(x)), log_det


def rational_quadratic_spline_inverse(z, knots_y, table, num_bins):
    """``x = s⁻¹(z)`` elementwise (the root of the per-bin quadratic, Durkan et al. A.3, in TFP's
    numerically stable form); differentiable by autodiff."""
    flat = _flatten(z, table, num_bins)
    outside, rows = _bins(flat, knots_y, num_bins)
    x_k, w_k, y_k, h_k, d_k, d_kp1 = tf.unstack(tf.gather(_with_identity_row(table), rows), axis=-1)
    s = h_k / w_k
    zero = tf.zeros([], z.dtype)
    rel = tf.where(outside, zero, flat - y_k)
    term2 = rel * (d_kp1 + d_k - 2.0 * s)
    a = h_k * (s - d_k) + term2
    b = h_k * d_k - term2
    c = -s * rel
    root = tf.where(tf.equal(rel, 0.0), zero, (2.0 * c) / (-b - tf.sqrt(b**2 - 4.0 * a * c)))
    x = tf.where(outside, flat, root * w_k + x_k)
    return tf.reshape(x, tf.shape(z))
