"""The numpy core against hand-computed numbers and mathematical properties."""

from __future__ import annotations

import math

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from attn_cli import attention as att

E = math.e


def test_row_softmax_hand_example():
    w = np.array([[1.0, 0.0, 1.0], [1.0, 1.0, 2.0]])
    # e/(2e+1), 1/(2e+1), e/(2e+1) and 1/(2+e), 1/(2+e), e/(2+e)
    expected = np.array(
        [
            [E / (2 * E + 1), 1 / (2 * E + 1), E / (2 * E + 1)],
            [1 / (2 + E), 1 / (2 + E), E / (2 + E)],
        ]
    )
    np.testing.assert_allclose(att.row_softmax(w), expected, atol=1e-12)


def test_row_softmax_is_stable_for_huge_logits():
    w = np.array([[1e30, -1e30, 0.0], [-1e30, -1e30, -1e30], [1e30, 1e30, 1e30]])
    p = att.row_softmax(w)
    assert np.all(np.isfinite(p))
    np.testing.assert_array_equal(p[0], [1.0, 0.0, 0.0])
    np.testing.assert_allclose(p[1], [1 / 3] * 3)
    np.testing.assert_allclose(p[2], [1 / 3] * 3)


def test_row_softmax_float32_stays_float32():
    w = np.array([[3e38, 0.0]], dtype=np.float32)
    p = att.row_softmax(w)
    assert p.dtype == np.float32
    np.testing.assert_array_equal(p, [[1.0, 0.0]])


def test_row_softmax_fully_masked_row_is_zero_not_nan():
    w = np.array([[0.5, -np.inf], [-np.inf, -np.inf]])
    p = att.row_softmax(w)
    np.testing.assert_array_equal(p, [[1.0, 0.0], [0.0, 0.0]])


def test_toy_pipeline_hand_example():
    x = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    s = att.toy_self_attention(x)
    np.testing.assert_allclose(s.W_raw, [[1, 0, 1], [0, 1, 1], [1, 1, 2]], atol=1e-12)
    a, b = E / (2 * E + 1), 1 / (2 * E + 1)  # 0.4223188, 0.1553624
    c, d = 1 / (2 + E), E / (2 + E)  # 0.2119416, 0.5761169
    np.testing.assert_allclose(s.W, [[a, b, a], [b, a, a], [c, c, d]], atol=1e-12)
    np.testing.assert_allclose(s.Y, [[2 * a, a + b], [a + b, 2 * a], [c + d, c + d]], atol=1e-12)
    np.testing.assert_allclose(s.Y[0], [0.8446376, 0.5776812], atol=1e-6)


finite = st.floats(-10, 10, allow_nan=False, allow_infinity=False, width=64)
matrices = st.integers(1, 7).flatmap(
    lambda n: st.integers(1, 6).flatmap(lambda d: arrays(np.float64, (n, d), elements=finite))
)


@settings(max_examples=150, deadline=None)
@given(matrices, st.booleans())
def test_toy_properties(x, scale):
    s = att.toy_self_attention(x, scale=scale)
    np.testing.assert_allclose(s.W.sum(axis=1), 1.0, atol=1e-12)
    assert np.all(s.W >= 0)
    np.testing.assert_array_equal(s.W_raw, s.W_raw.T)
    # Independently: dot products, a softmax and the weighted sums, one cell at a time.
    n, d = x.shape
    c = 1 / math.sqrt(d) if scale else 1.0
    for i in range(n):
        logits = [c * sum(x[i, k] * x[j, k] for k in range(d)) for j in range(n)]
        top = max(logits)
        e = [math.exp(z - top) for z in logits]
        w = [v / sum(e) for v in e]
        np.testing.assert_allclose(s.W[i], w, atol=1e-9)
        y = [sum(w[j] * x[j, k] for j in range(n)) for k in range(d)]
        np.testing.assert_allclose(s.Y[i], y, atol=1e-8)
    if scale:
        np.testing.assert_allclose(s.W_scaled, s.W_raw / np.sqrt(x.shape[1]), atol=1e-12)


@settings(max_examples=100, deadline=None)
@given(matrices, st.randoms(use_true_random=False))
def test_permuting_tokens_permutes_every_matrix(x, rnd):
    perm = np.array(rnd.sample(range(x.shape[0]), x.shape[0]))
    s, sp = att.toy_self_attention(x, scale=True), att.toy_self_attention(x[perm], scale=True)
    np.testing.assert_allclose(sp.W_raw, s.W_raw[np.ix_(perm, perm)], atol=1e-9)
    np.testing.assert_allclose(sp.W, s.W[np.ix_(perm, perm)], atol=1e-9)
    np.testing.assert_allclose(sp.Y, s.Y[perm], atol=1e-9)


def test_entropy_of_uniform_and_one_hot():
    p = np.array([[0.25] * 4, [1.0, 0, 0, 0]])
    np.testing.assert_allclose(att.entropy(p), [math.log(4), 0.0], atol=1e-12)


def test_attend_in_place_is_attend_bit_for_bit():
    """The maps-only path (one buffer, every score step in place) gives attend's W and Y
    exactly, with each optional step: bias, cap, mask (a fully masked row too), temperature,
    grouped key/value heads."""
    rng = np.random.default_rng(0)
    q = rng.standard_normal((4, 5, 8), dtype=np.float32) * 3
    k = rng.standard_normal((2, 6, 8), dtype=np.float32) * 3
    v = rng.standard_normal((2, 6, 3), dtype=np.float32)
    bias = rng.standard_normal((4, 5, 6), dtype=np.float32)
    mask = np.tri(5, 6, dtype=bool)
    mask[0] = False
    for kwargs in (
        {},
        {"scale": 0.3},
        {"bias": bias},
        {"cap": 2.5},
        {"mask": mask},
        {"temperature": 0.7},
        {"mask": mask, "bias": bias, "cap": 2.5, "temperature": 1.3},
    ):
        a = att.attend(q, k, v, **kwargs)
        w, y = att.attend_in_place(q, k, v, **kwargs)
        assert w.dtype == np.float32 and np.array_equal(w, a.W), kwargs
        assert np.array_equal(y, a.Y), kwargs
