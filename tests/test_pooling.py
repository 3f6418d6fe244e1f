"""Heatmap pooling and the geometry view's maths, on matrices checked by hand."""

from __future__ import annotations

import numpy as np

from attn_cli.render.pooling import block_edges, mean_pairwise_distance, pca_2d, pool


def test_block_edges():
    assert block_edges(10, 3).tolist() == [0, 3, 6]
    assert block_edges(4, 10).tolist() == [0, 1, 2, 3]


def test_max_and_mean_pooling_on_a_known_matrix():
    m = np.arange(16, dtype=float).reshape(4, 4)
    #  0  1 |  2  3
    #  4  5 |  6  7
    #  8  9 | 10 11
    # 12 13 | 14 15
    mx, r, c = pool(m, 2, 2, "max")
    np.testing.assert_array_equal(mx, [[5, 7], [13, 15]])
    mean, _, _ = pool(m, 2, 2, "mean")
    np.testing.assert_array_equal(mean, [[2.5, 4.5], [10.5, 12.5]])
    assert r.tolist() == [0, 2] and c.tolist() == [0, 2]


def test_uneven_blocks_and_masked_cells():
    m = np.array([[1.0, -np.inf, -np.inf], [2.0, 3.0, -np.inf], [4.0, 5.0, 6.0]])
    mean, r, c = pool(m, 2, 2, "mean")  # rows {0}, {1,2}; cols {0}, {1,2}
    assert r.tolist() == [0, 1] and c.tolist() == [0, 1]
    np.testing.assert_array_equal(mean, [[1.0, -np.inf], [3.0, (3 + 5 + 6) / 3]])
    mx, _, _ = pool(m, 2, 2, "max")
    np.testing.assert_array_equal(mx, [[1.0, -np.inf], [4.0, 6.0]])


def test_signed_max_pooling_keeps_the_largest_magnitude_with_its_sign():
    """A mixing map's (or a score map's) strongest entry may be negative: plain max pooling
    would hide it behind a small positive neighbour."""
    m = np.array(
        [
            [0.1, -0.9, 0.3, 0.2],
            [0.0, 0.2, -0.1, 0.4],
            [-np.inf, -np.inf, -0.5, -0.2],
            [-np.inf, -np.inf, -0.3, -0.1],
        ]
    )
    plain, _, _ = pool(m, 2, 2, "max")
    np.testing.assert_array_equal(plain, [[0.2, 0.4], [-np.inf, -0.1]])
    strongest, _, _ = pool(m, 2, 2, "max", signed=True)
    np.testing.assert_array_equal(strongest, [[-0.9, 0.4], [-np.inf, -0.5]])


def test_pool_keeps_float32_and_fits():
    m = np.random.default_rng(0).random((1000, 1000), dtype=np.float32)
    out, _, _ = pool(m, 70, 70, "mean")
    assert out.shape == (70, 70) and out.dtype == np.float32
    np.testing.assert_allclose(out.mean(), m.mean(), atol=1e-3)


def test_mean_pairwise_distance_by_hand():
    pts = np.array([[0.0, 0.0], [3.0, 4.0], [0.0, 4.0]])  # distances 5, 4, 3
    assert mean_pairwise_distance(pts) == 4.0
    assert mean_pairwise_distance(pts[:1]) == 0.0


def test_pca_recovers_a_line_and_preserves_distances_in_its_plane():
    pts = np.array([[1.0, 1.0, 0.0], [2.0, 2.0, 0.0], [3.0, 3.0, 0.0]])
    p = pca_2d(pts)
    assert p.shape == (3, 2)
    np.testing.assert_allclose(np.abs(p[:, 0]), [np.sqrt(2), 0, np.sqrt(2)], atol=1e-12)
    np.testing.assert_allclose(p[:, 1], 0, atol=1e-12)
    plane = np.array([[0.0, 0, 0], [1, 0, 0], [0, 2, 0], [1, 2, 0]])
    assert np.isclose(mean_pairwise_distance(pca_2d(plane)), mean_pairwise_distance(plane))
