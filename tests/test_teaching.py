"""The default Q/K/V demo teaches something: on the README's Q/K/V examples every head's rows of
W visibly differ from uniform (mean row maximum at least 1.5 × 1/n), because X is normalised
(X_norm) and the seeded projections keep its variance."""

from __future__ import annotations

import shlex

import numpy as np
import orjson
import pytest

from tests.conftest import invoke

# The README's Q/K/V commands, as written there (plus the one the issue tried).
README_QKV = [
    'attn-cli explain "hi how are you" --qkv',
    'attn-cli explain "the cat sat on the mat" --qkv --heads 2 --d-k 8 --causal --temperature 0.5',
    'attn-cli explain "hi how are" --qkv --heads 2 --d-k 2 --causal -T 0.5 -e random --dim 4',
    'attn-cli explain "hi how are you there" --qkv --heads 3 --d-k 4',
]


def attention_maps(command: str) -> tuple[int, list[np.ndarray]]:
    args = shlex.split(command)[1:]
    r = invoke([*args, "--json", "-", "--steps", "W"])
    assert r.exit_code == 0, r.stderr
    doc = orjson.loads(r.stdout)
    return len(doc["tokens"]), [np.array(s["data"], dtype=float) for s in doc["steps"]]


@pytest.mark.parametrize("command", README_QKV)
def test_every_head_is_visibly_non_uniform(command):
    n, maps = attention_maps(command)
    assert maps
    for w in maps:
        np.testing.assert_allclose(w.sum(axis=1), 1.0, atol=1e-12)
        assert w.max(axis=1).mean() >= 1.5 / n, (command, w.max(axis=1).mean() * n)


def test_without_the_norm_the_bundled_vectors_give_near_uniform_rows():
    """Why X_norm is there: the bundled vectors are small (entries ≈ 0.05), so without it every
    scaled score is ≈ 0 and W is within 1% of uniform."""
    n, maps = attention_maps('attn-cli explain "hi how are you there" --qkv --heads 3 --no-norm')
    for w in maps:
        assert np.abs(w - 1 / n).max() < 0.01 / n  # every weight within 1% of 1/n


def test_scaled_scores_have_about_unit_variance():
    """Unit-variance X_norm through U(±√(3/d)) projections: q·k/√d_k has variance ≈ 1, the
    assumption behind the √d_k in "Attention Is All You Need" (§3.2.1)."""
    r = invoke(
        ["explain", "the cat sat on the mat with a hat and a bat", "--qkv", "--heads", "4"]
        + ["--json", "-", "--steps", "W_scaled"]
    )
    assert r.exit_code == 0, r.stderr
    scores = np.concatenate([np.ravel(s["data"]) for s in orjson.loads(r.stdout)["steps"]])
    assert 0.5 < scores.std() < 2.0
