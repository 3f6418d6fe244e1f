"""GPT-2: token + position embeddings, pre-LayerNorm decoder layers with a causal mask and tanh
GELU, a final LayerNorm. Conv1D weights are already [in, out]."""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import numpy as np

from attn_cli.attention import causal_mask, multi_head_attention
from attn_cli.errors import InputError
from attn_cli.models.layers import LayerSteps, activation, layer_norm

ANCHOR = "wte.weight"


def check_shapes(w, cfg: dict) -> None:
    from attn_cli.models.checkpoint import expect_shape

    d = cfg["n_embd"]
    inner = cfg.get("n_inner") or 4 * d
    if d % cfg["n_head"]:
        raise InputError("config.json: n_embd is not divisible by n_head")
    if cfg.get("scale_attn_by_inverse_layer_idx") or cfg.get("reorder_and_upcast_attn"):
        raise InputError(
            "GPT-2 variants with scale_attn_by_inverse_layer_idx/reorder_and_upcast_attn are not supported"
        )
    expect_shape(w, ANCHOR, (cfg["vocab_size"], d))
    expect_shape(w, "wpe.weight", (cfg["n_positions"], d))
    for i in range(cfg["n_layer"]):
        p = f"h.{i}."
        expect_shape(w, p + "attn.c_attn.weight", (d, 3 * d))
        expect_shape(w, p + "attn.c_attn.bias", (3 * d,))
        expect_shape(w, p + "attn.c_proj.weight", (d, d))
        expect_shape(w, p + "mlp.c_fc.weight", (d, inner))
        expect_shape(w, p + "mlp.c_proj.weight", (inner, d))
    expect_shape(w, "ln_f.weight", (d,))


def embed(w, ids: list[int], cfg: dict) -> np.ndarray:
    rows = w.rows(ANCHOR, ids) if hasattr(w, "rows") else w[ANCHOR][ids]
    return rows + w["wpe.weight"][: len(ids)]  # token + position


def layers(w: Mapping, x: np.ndarray, cfg: dict) -> Iterator[LayerSteps]:
    heads, eps = cfg["n_head"], cfg.get("layer_norm_epsilon", 1e-5)
    act = activation(cfg.get("activation_function", "gelu_new"))
    mask = causal_mask(len(x))
    for i in range(cfg["n_layer"]):
        p = f"h.{i}."
        a_in = layer_norm(x, w[p + "ln_1.weight"], w[p + "ln_1.bias"], eps)  # pre-LN
        c_attn, b_attn = w[p + "attn.c_attn.weight"], w[p + "attn.c_attn.bias"]  # [d, 3d]
        wq, wk, wv = np.split(c_attn, 3, axis=1)
        bq, bk, bv = np.split(b_attn, 3)
        a = multi_head_attention(
            a_in,
            wq,
            wk,
            wv,
            heads,
            bq,
            bk,
            bv,
            w[p + "attn.c_proj.weight"],
            w[p + "attn.c_proj.bias"],
            mask,
        )
        h = x + a.O  # residual
        m = layer_norm(h, w[p + "ln_2.weight"], w[p + "ln_2.bias"], eps)
        ff = act(m @ w[p + "mlp.c_fc.weight"] + w[p + "mlp.c_fc.bias"])  # [n, d] -> [n, 4d]
        out = h + ff @ w[p + "mlp.c_proj.weight"] + w[p + "mlp.c_proj.bias"]  # -> [n, d]
        yield LayerSteps(a_in, a, out)  # X is ln_1(hidden): what W_q, W_k, W_v multiply
        x = out


def final(w: Mapping, h: np.ndarray, cfg: dict) -> np.ndarray:
    return layer_norm(h, w["ln_f.weight"], w["ln_f.bias"], cfg.get("layer_norm_epsilon", 1e-5))
