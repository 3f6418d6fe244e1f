"""GPT-2: token + position embeddings, pre-LayerNorm decoder layers with a causal mask and tanh
GELU, a final LayerNorm. Conv1D weights are already [in, out]."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from attn_cli.attention import AttentionParams, causal_mask
from attn_cli.errors import InputError
from attn_cli.models.layers import activation, layer_norm
from attn_cli.models.registry import Config, Dims, Family, WeightSource, Wording
from attn_cli.models.weights import expect_shape
from attn_cli.records import LayerRecord, multi_head_attention

ANCHOR = "wte.weight"


def dims(cfg: Config) -> Dims:
    d, heads = int(cfg["n_embd"]), int(cfg["n_head"])
    return Dims(
        int(cfg["n_layer"]),
        heads,
        heads,
        d,
        d // heads,
        int(cfg["vocab_size"]),
        int(cfg["n_positions"]),
    )


def check(w: WeightSource, cfg: Config) -> None:
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


def embed(w: WeightSource, ids: list[int], cfg: Config) -> np.ndarray:
    return w.rows(ANCHOR, ids) + w["wpe.weight"][: len(ids)]  # token + position


def layers(w: WeightSource, x: np.ndarray, cfg: Config) -> Iterator[LayerRecord]:
    heads, eps = cfg["n_head"], cfg.get("layer_norm_epsilon", 1e-5)
    act = activation(cfg.get("activation_function", "gelu_new"))
    mask = causal_mask(len(x))
    for i in range(cfg["n_layer"]):
        p = f"h.{i}."
        a_in = layer_norm(x, w[p + "ln_1.weight"], w[p + "ln_1.bias"], eps)  # pre-LN
        c_attn, b_attn = w[p + "attn.c_attn.weight"], w[p + "attn.c_attn.bias"]  # [d, 3d]
        wq, wk, wv = np.split(c_attn, 3, axis=1)
        bq, bk, bv = np.split(b_attn, 3)
        params = AttentionParams(
            wq,
            wk,
            wv,
            heads,
            b_q=bq,
            b_k=bk,
            b_v=bv,
            w_o=w[p + "attn.c_proj.weight"],
            b_o=w[p + "attn.c_proj.bias"],
        )
        # X is ln_1(hidden): what W_q, W_k, W_v multiply
        a = multi_head_attention(a_in, params, mask, resid=x)
        assert a.output is not None
        h = x + a.output  # residual
        m = layer_norm(h, w[p + "ln_2.weight"], w[p + "ln_2.bias"], eps)
        ff = act(m @ w[p + "mlp.c_fc.weight"] + w[p + "mlp.c_fc.bias"])  # [n, d] -> [n, 4d]
        out = h + ff @ w[p + "mlp.c_proj.weight"] + w[p + "mlp.c_proj.bias"]  # -> [n, d]
        yield LayerRecord([a], out)
        x = out


def final(w: WeightSource, h: np.ndarray, cfg: Config) -> np.ndarray:
    return layer_norm(h, w["ln_f.weight"], w["ln_f.bias"], cfg.get("layer_norm_epsilon", 1e-5))


def logits(w: WeightSource, h: np.ndarray, cfg: Config) -> np.ndarray:
    """Next-token logits: the final hidden states times the (tied) token embeddings."""
    return h @ w[ANCHOR].T  # [n, d] @ [d, vocab]


FAMILY = Family(
    name="gpt2",
    model_types=("gpt2",),
    anchor=ANCHOR,
    causal=True,
    norm="pre-LayerNorm",
    dims=dims,
    check=check,
    embed=embed,
    layers=layers,
    final=final,
    logits=logits,
    wording=Wording(
        x_formula="ln_1(hidden states)",
        x_description=lambda i: (
            " after the layer's first LayerNorm (GPT-2 normalises before attention)."
        ),
        mask="GPT-2 reads left to right: a token may not look at later tokens, so their scores are −∞.",
        final="The model's output: one vector per token after every layer and the final LayerNorm.",
    ),
)
