"""The step catalogue: every step a layer can produce, worded from the intermediates alone
(grouped key/value heads, a model's own scale, soft-capping, sliding windows, q/k stages)."""

from __future__ import annotations

import numpy as np

from attn_cli import attention as att
from attn_cli import narrate

LABELS = list("abcdef")


def layer(**kw):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(6, 8))
    p = att.AttentionParams(
        rng.normal(size=(8, 8)), rng.normal(size=(8, 4)), rng.normal(size=(8, 4)), 4, kv_heads=2
    )
    return x, att.multi_head_attention(x, p, **kw)


def by_name(steps):
    return {(s.name, s.head): s for s in steps}


def test_grouped_heads_say_which_query_heads_share_a_key_value_head():
    x, m = layer(mask=att.causal_mask(6))
    steps = by_name(narrate.model_layer_steps(x, m, 3, [2], LABELS, "f", "d", narrate.Voice(False)))
    k = steps[("K", 2)]
    assert "key/value head 1, shared by query heads 2–3" in k.description
    np.testing.assert_array_equal(k.data, m.K[1])  # head 2 reads key/value head 2 // 2 = 1
    assert steps[("W_masked", 2)].formula == "W_scaled, −∞ above the diagonal"
    assert all(s.layer == 3 for s in steps.values())


def test_a_models_own_scale_soft_cap_and_sliding_window_are_named():
    x, m = layer(mask=att.sliding_window_mask(6, 3), scale=0.25, cap=2.0)
    steps = by_name(narrate.model_layer_steps(x, m, 0, [0], LABELS, "f", "d", narrate.Voice(False)))
    assert steps[("W_scaled", 0)].formula == "W_raw·0.25"
    np.testing.assert_allclose(steps[("W_scaled", 0)].data, steps[("W_raw", 0)].data * 0.25)
    capped = steps[("W_capped", 0)]
    assert capped.formula == "2·tanh(W_scaled/2)"
    assert np.all(np.abs(capped.data) < 2.0)
    masked = steps[("W_masked", 0)]
    assert masked.formula == "W_capped, −∞ above the diagonal and 3+ tokens back"
    assert "itself and the 2 tokens before it" in masked.description
    w = steps[("W", 0)].data
    assert w[5, 2] == 0 and w[5, 3] > 0  # token 5 sees 3, 4, 5 only


def test_hook_stages_become_named_steps_in_order():
    def hook(q, k):
        qn, kn = (
            q / np.linalg.norm(q, axis=-1, keepdims=True),
            k / np.linalg.norm(k, axis=-1, keepdims=True),
        )
        return [("norm", qn, kn), ("rot", qn[:, ::-1], kn[:, ::-1])]

    x, m = layer(qk_hook=hook)
    steps = narrate.model_layer_steps(x, m, 0, [1], LABELS, "f", "d", narrate.Voice(False))
    names = [s.name for s in steps]
    assert names == [
        "X",
        "Q",
        "K",
        "V",
        "Q_norm",
        "K_norm",
        "Q_rot",
        "K_rot",
        "W_raw",
        "W_scaled",
        "W",
        "Y",
    ]
    found = by_name(steps)
    assert found[("Q_rot", 1)].formula == "RoPE(Q_norm, position)"
    assert found[("W_raw", 1)].formula == "Q_rot·K_rotᵀ"
    # The scores are those of the last stage.
    q, k = m.stages[-1][1][1], m.stages[-1][2][0]
    np.testing.assert_allclose(found[("W_raw", 1)].data, np.einsum("id,jd->ij", q, k))


def test_step_filter_keeps_only_the_named_steps():
    x, m = layer()
    keep = {"W", "Y"}.__contains__
    steps = narrate.model_layer_steps(
        x, m, 0, [0, 1], LABELS, "f", "d", narrate.Voice(False), keep=keep
    )
    assert [(s.name, s.head) for s in steps] == [("W", 0), ("Y", 0), ("W", 1), ("Y", 1)]


def test_every_step_name_is_in_the_catalogue():
    x, m = layer(mask=att.sliding_window_mask(6, 3), cap=1.0)
    names = {
        s.name
        for s in narrate.model_layer_steps(x, m, 0, [0], LABELS, "f", "d", narrate.Voice(False))
    }
    assert names <= set(narrate.STEP_NAMES)
