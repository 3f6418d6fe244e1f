"""Rotary scaling types by hand: what each does to the frequencies and to cos/sin. (Agreement
with transformers: tests/test_decoders.py and the tiny_phi3 / tiny_qwen2 fixtures.)"""

from __future__ import annotations

import math

import numpy as np
import pytest

from attn_cli.errors import InputError
from attn_cli.models.rope import Rotary, inverse_frequencies, rope_parameters

HEAD_DIM = 8  # four frequencies: 1/θ^(0/8), 1/θ^(2/8), 1/θ^(4/8), 1/θ^(6/8)


def default(theta: float = 1e4) -> np.ndarray:
    return np.array([theta ** (-j / 8) for j in (0, 2, 4, 6)])


def freqs(n: int | None = None, **params) -> tuple[np.ndarray, float]:
    params = {"rope_theta": 1e4, "max_position_embeddings": 16, **params}
    return inverse_frequencies(params, HEAD_DIM, n)


def test_dynamic_keeps_theta_up_to_the_maximum_then_grows_it():
    same, scale = freqs(16, rope_type="dynamic", factor=2.0)
    np.testing.assert_allclose(same, default(), rtol=1e-6)
    assert scale == 1.0
    grown, _ = freqs(32, rope_type="dynamic", factor=2.0)
    theta = 1e4 * (2.0 * 32 / 16 - 1) ** (8 / 6)  # 1e4 · 3^(4/3)
    np.testing.assert_allclose(grown, default(theta), rtol=1e-6)


def test_yarn_with_factor_one_is_the_default():
    inv, scale = freqs(rope_type="yarn", factor=1.0, original_max_position_embeddings=16)
    np.testing.assert_allclose(inv, default(), rtol=1e-6)
    assert scale == 1.0


def test_yarn_keeps_fast_frequencies_and_interpolates_slow_ones():
    # original length 1000: the ramp runs from index ⌊0.70⌋ = 0 to ⌈2.20⌉ = 3, so the fastest
    # frequency is kept and the slowest divided by the factor
    inv, scale = freqs(rope_type="yarn", factor=4.0, original_max_position_embeddings=1000)
    assert inv[0] == pytest.approx(default()[0], rel=1e-6)
    assert inv[-1] == pytest.approx(default()[-1] / 4.0, rel=1e-6)
    assert scale == pytest.approx(0.1 * math.log(4.0) + 1.0)


def test_yarn_attention_factor_from_mscale_or_as_given():
    _, scale = freqs(
        rope_type="yarn",
        factor=4.0,
        original_max_position_embeddings=16,
        mscale=1.0,
        mscale_all_dim=0.5,
    )
    assert scale == pytest.approx((0.1 * math.log(4) + 1) / (0.05 * math.log(4) + 1))
    _, given = freqs(
        rope_type="yarn", factor=4.0, original_max_position_embeddings=16, attention_factor=0.7
    )
    assert given == 0.7


def test_longrope_picks_its_factors_by_length():
    short, long = [1.0, 2.0, 3.0, 4.0], [1.0, 5.0, 10.0, 20.0]
    p = dict(
        rope_type="longrope",
        short_factor=short,
        long_factor=long,
        original_max_position_embeddings=4,
    )
    within, scale = freqs(4, **p)
    beyond, scale_beyond = freqs(5, **p)
    np.testing.assert_allclose(within, default() / short, rtol=1e-6)
    np.testing.assert_allclose(beyond, default() / long, rtol=1e-6)
    # factor max/original = 16/4: √(1 + ln 4 / ln 4) = √2, whatever the length
    assert scale == scale_beyond == pytest.approx(2**0.5)


def test_cos_and_sin_carry_the_attention_factor():
    params = rope_parameters(
        {
            "rope_scaling": {
                "type": "yarn",
                "factor": 4.0,
                "original_max_position_embeddings": 8,
            },
            "max_position_embeddings": 32,
        }
    )
    cos, sin = Rotary(params, HEAD_DIM).cos_sin(3)
    factor = 0.1 * math.log(4.0) + 1.0
    np.testing.assert_allclose(cos[0], factor, rtol=1e-6)  # position 0: cos 0 = 1, scaled
    np.testing.assert_allclose(sin[0], 0.0)
    np.testing.assert_allclose(cos**2 + sin**2, factor**2, rtol=1e-5)


def test_a_top_level_original_length_wins_as_in_phi3():
    params = rope_parameters(
        {
            "rope_scaling": {"type": "longrope", "short_factor": [1] * 4, "long_factor": [2] * 4},
            "original_max_position_embeddings": 4096,
            "max_position_embeddings": 131072,
        }
    )
    assert params["rope_type"] == "longrope"
    assert params["original_max_position_embeddings"] == 4096


@pytest.mark.parametrize(
    "params, message",
    [
        (dict(rope_type="dynamic"), "'dynamic' needs 'factor'"),
        (
            dict(
                rope_type="longrope",
                short_factor=[1.0] * 4,
                long_factor=[1.0] * 3,
                original_max_position_embeddings=4,
            ),
            "long_factor must be 4 positive numbers",
        ),
        (
            dict(
                rope_type="longrope",
                short_factor=[1.0, 0, 1, 1],
                long_factor=[1.0] * 4,
                original_max_position_embeddings=4,
            ),
            "short_factor must be 4 positive numbers",
        ),
        (dict(rope_type="yarn", factor=2.0), "needs original_max_position_embeddings"),
        (dict(rope_type="mrope"), "rope type 'mrope' is not supported"),
    ],
)
def test_incomplete_or_unknown_settings_are_refused_in_one_line(params, message):
    with pytest.raises(InputError, match=message):
        inverse_frequencies({"rope_theta": 1e4, "max_position_embeddings": 16, **params}, HEAD_DIM)
