"""BERT family (MiniLM, bert-base, …): embeddings, then post-LayerNorm encoder layers with
bidirectional attention and exact (erf) GELU. Weights as torch stores them: Linear [out, in]."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from attn_cli.attention import AttentionParams
from attn_cli.errors import InputError
from attn_cli.models.layers import activation, layer_norm
from attn_cli.models.registry import Config, Dims, Family, WeightSource, Wording
from attn_cli.models.weights import expect_shape
from attn_cli.records import LayerRecord, multi_head_attention

ANCHOR = "embeddings.word_embeddings.weight"


def dims(cfg: Config) -> Dims:
    d, heads = int(cfg["hidden_size"]), int(cfg["num_attention_heads"])
    return Dims(
        int(cfg["num_hidden_layers"]),
        heads,
        heads,
        d,
        d // heads,
        int(cfg["vocab_size"]),
        int(cfg["max_position_embeddings"]),
    )


def check(w: WeightSource, cfg: Config) -> None:
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


def embed(
    w: WeightSource, ids: list[int], cfg: Config, segments: list[int] | None = None
) -> np.ndarray:
    """word + position + token-type embeddings, then LayerNorm. `segments` are the
    token_type_ids (0 for the first sentence, 1 for the second of a pair)."""
    n = len(ids)
    types = w["embeddings.token_type_embeddings.weight"]
    seg = types[0] if segments is None else types[np.asarray(segments)]
    x = w.rows(ANCHOR, ids) + w["embeddings.position_embeddings.weight"][:n] + seg
    return layer_norm(
        x, w["embeddings.LayerNorm.weight"], w["embeddings.LayerNorm.bias"], cfg["layer_norm_eps"]
    )


def linear_params(w: WeightSource, name: str) -> tuple[np.ndarray, np.ndarray]:
    """A torch Linear's weight [out, in] as [in, out], and its bias."""
    return w[name + ".weight"].T, w[name + ".bias"]


def layers(w: WeightSource, x: np.ndarray, cfg: Config) -> Iterator[LayerRecord]:
    heads, eps = cfg["num_attention_heads"], cfg["layer_norm_eps"]
    act = activation(cfg.get("hidden_act", "gelu"))
    for i in range(cfg["num_hidden_layers"]):
        p = f"encoder.layer.{i}."
        (wq, bq), (wk, bk), (wv, bv) = (
            linear_params(w, p + f"attention.self.{n}") for n in ("query", "key", "value")
        )
        wo, bo = linear_params(w, p + "attention.output.dense")
        params = AttentionParams(wq, wk, wv, heads, b_q=bq, b_k=bk, b_v=bv, w_o=wo, b_o=bo)
        a = multi_head_attention(x, params, resid=x)  # bidirectional: no mask
        assert a.output is not None
        h = layer_norm(
            a.output + x,
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
        yield LayerRecord([a], out)
        x = out


def attn_out_norm(w: WeightSource, i: int, cfg: Config) -> tuple[np.ndarray, np.ndarray, float]:
    """Layer i's LayerNorm on (residual + attention output): γ, β, ε (for ALTI)."""
    p = f"encoder.layer.{i}.attention.output.LayerNorm."
    return w[p + "weight"], w[p + "bias"], float(cfg["layer_norm_eps"])


def final(w: WeightSource, h: np.ndarray, cfg: Config) -> np.ndarray:
    return h  # BERT's last hidden state is the last layer's output


def _x_description(i: int) -> str:
    return " (the embeddings, after LayerNorm)." if i == 0 else f" (layer {i - 1}'s output)."


FAMILY = Family(
    name="bert",
    model_types=("bert",),
    anchor=ANCHOR,
    causal=False,
    norm="post-LayerNorm",
    dims=dims,
    check=check,
    embed=embed,
    layers=layers,
    final=final,
    attn_out_norm=attn_out_norm,
    wording=Wording(
        x_formula="hidden states",
        x_description=_x_description,
        final="The model's output: one vector per token after every layer.",
    ),
)
