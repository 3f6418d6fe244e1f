"""BERT family (MiniLM, bert-base, …): embeddings, then post-LayerNorm encoder layers with
bidirectional attention and exact (erf) GELU. Weights as torch stores them: Linear [out, in]."""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import numpy as np

from attn_cli.attention import multi_head_attention
from attn_cli.errors import InputError
from attn_cli.models.layers import LayerSteps, activation, layer_norm

ANCHOR = "embeddings.word_embeddings.weight"


def check_shapes(w, cfg: dict) -> None:
    from attn_cli.models.checkpoint import expect_shape

    d, inter = cfg["hidden_size"], cfg["intermediate_size"]
    if d % cfg["num_attention_heads"]:
        raise InputError(f"config.json: hidden_size {d} is not divisible by num_attention_heads")
    if cfg.get("position_embedding_type", "absolute") != "absolute":
        raise InputError("only absolute position embeddings are supported")
    expect_shape(w, ANCHOR, (cfg["vocab_size"], d))
    expect_shape(w, "embeddings.position_embeddings.weight", (cfg["max_position_embeddings"], d))
    expect_shape(w, "embeddings.token_type_embeddings.weight", (cfg["type_vocab_size"], d))
    for i in range(cfg["num_hidden_layers"]):
        p = f"encoder.layer.{i}."
        for name in ("query", "key", "value"):
            expect_shape(w, p + f"attention.self.{name}.weight", (d, d))
            expect_shape(w, p + f"attention.self.{name}.bias", (d,))
        expect_shape(w, p + "attention.output.dense.weight", (d, d))
        expect_shape(w, p + "intermediate.dense.weight", (inter, d))
        expect_shape(w, p + "output.dense.weight", (d, inter))


def embed(w, ids: list[int], cfg: dict) -> np.ndarray:
    """word + position + token-type (all 0: one segment) embeddings, then LayerNorm."""
    n = len(ids)
    rows = w.rows(ANCHOR, ids) if hasattr(w, "rows") else w[ANCHOR][ids]
    x = (
        rows
        + w["embeddings.position_embeddings.weight"][:n]
        + w["embeddings.token_type_embeddings.weight"][0]
    )
    return layer_norm(
        x, w["embeddings.LayerNorm.weight"], w["embeddings.LayerNorm.bias"], cfg["layer_norm_eps"]
    )


def linear_params(w: Mapping, name: str) -> tuple[np.ndarray, np.ndarray]:
    """A torch Linear's weight [out, in] as [in, out], and its bias."""
    return w[name + ".weight"].T, w[name + ".bias"]


def layers(w: Mapping, x: np.ndarray, cfg: dict) -> Iterator[LayerSteps]:
    heads, eps = cfg["num_attention_heads"], cfg["layer_norm_eps"]
    act = activation(cfg.get("hidden_act", "gelu"))
    for i in range(cfg["num_hidden_layers"]):
        p = f"encoder.layer.{i}."

        (wq, bq), (wk, bk), (wv, bv) = (
            linear_params(w, p + f"attention.self.{n}") for n in ("query", "key", "value")
        )
        wo, bo = linear_params(w, p + "attention.output.dense")
        a = multi_head_attention(x, wq, wk, wv, heads, bq, bk, bv, wo, bo)  # bidirectional
        h = layer_norm(
            a.O + x,
            w[p + "attention.output.LayerNorm.weight"],
            w[p + "attention.output.LayerNorm.bias"],
            eps,
        )  # post-LN residual
        wi, bi = linear_params(w, p + "intermediate.dense")
        wf, bf = linear_params(w, p + "output.dense")
        ff = act(h @ wi + bi) @ wf + bf  # [n, d] -> [n, 4d] -> [n, d]
        out = layer_norm(
            ff + h, w[p + "output.LayerNorm.weight"], w[p + "output.LayerNorm.bias"], eps
        )
        yield LayerSteps(x, a, out)
        x = out


def final(w: Mapping, h: np.ndarray, cfg: dict) -> np.ndarray:
    return h  # BERT's last hidden state is the last layer's output
