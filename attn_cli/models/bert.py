"""BERT family (MiniLM, bert-base, …): embeddings, then post-LayerNorm encoder layers with
bidirectional attention and exact (erf) GELU. Weights as torch stores them: Linear [out, in]."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from attn_cli.attention import AttentionParams, linear
from attn_cli.errors import InputError
from attn_cli.models.args import POSITIVE, POSITIVE_INT, TEXT, Args, arg
from attn_cli.models.layers import activation, layer_norm
from attn_cli.models.registry import Config, Dims, Family, WeightSource, Wording
from attn_cli.models.weights import expect_shape
from attn_cli.records import LayerRecord, multi_head_attention

ANCHOR = "embeddings.word_embeddings.weight"


@dataclass(frozen=True, kw_only=True)
class BertArgs(Args):
    """What this file reads of a BERT config.json (transformers' BertConfig defaults)."""

    hidden_size: int = arg(POSITIVE_INT)
    num_attention_heads: int = arg(POSITIVE_INT)
    num_hidden_layers: int = arg(POSITIVE_INT)
    intermediate_size: int = arg(POSITIVE_INT)
    vocab_size: int = arg(POSITIVE_INT)
    max_position_embeddings: int = arg(POSITIVE_INT)
    type_vocab_size: int = arg(POSITIVE_INT, 2)
    layer_norm_eps: float = arg(POSITIVE, 1e-12)
    hidden_act: str = arg(TEXT, "gelu")
    position_embedding_type: str | None = arg(TEXT, "absolute", nullable=True)

    def validate(self, source: str) -> None:
        if self.hidden_size % self.num_attention_heads:
            raise InputError(
                f"{source}: hidden_size {self.hidden_size} is not divisible by "
                f"num_attention_heads {self.num_attention_heads}"
            )


def dims(cfg: Config) -> Dims:
    args = BertArgs.parse(cfg)
    d, heads = args.hidden_size, args.num_attention_heads
    return Dims(
        args.num_hidden_layers,
        heads,
        heads,
        d,
        d // heads,
        args.vocab_size,
        args.max_position_embeddings,
    )


def check(w: WeightSource, cfg: Config) -> None:
    args = BertArgs.parse(cfg)
    d, inter = args.hidden_size, args.intermediate_size
    if (args.position_embedding_type or "absolute") != "absolute":
        raise InputError("only absolute position embeddings are supported")
    activation(args.hidden_act)  # refuses unknown activations by name
    expect_shape(w, ANCHOR, (args.vocab_size, d))
    expect_shape(w, "embeddings.position_embeddings.weight", (args.max_position_embeddings, d))
    expect_shape(w, "embeddings.token_type_embeddings.weight", (args.type_vocab_size, d))
    for i in range(args.num_hidden_layers):
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
    eps = BertArgs.parse(cfg).layer_norm_eps
    return layer_norm(x, w["embeddings.LayerNorm.weight"], w["embeddings.LayerNorm.bias"], eps)


def linear_params(w: WeightSource, name: str) -> tuple[np.ndarray, np.ndarray]:
    """A torch Linear's weight [out, in] as [in, out], and its bias."""
    return w[name + ".weight"].T, w[name + ".bias"]


def layers(w: WeightSource, x: np.ndarray, cfg: Config) -> Iterator[LayerRecord]:
    args = BertArgs.parse(cfg)
    heads, eps = args.num_attention_heads, args.layer_norm_eps
    act = activation(args.hidden_act)
    for i in range(args.num_hidden_layers):
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
        ff = linear(act(linear(h, wi, bi)), wf, bf)  # [n, d] -> [n, 4d] -> [n, d]
        out = layer_norm(
            ff + h, w[p + "output.LayerNorm.weight"], w[p + "output.LayerNorm.bias"], eps
        )
        yield LayerRecord([a], out)
        x = out


def attn_out_norm(w: WeightSource, i: int, cfg: Config) -> tuple[np.ndarray, np.ndarray, float]:
    """Layer i's LayerNorm on (residual + attention output): γ, β, ε (for ALTI)."""
    p = f"encoder.layer.{i}.attention.output.LayerNorm."
    return w[p + "weight"], w[p + "bias"], float(BertArgs.parse(cfg).layer_norm_eps)


def final(w: WeightSource, h: np.ndarray, cfg: Config) -> np.ndarray:
    return h  # BERT's last hidden state is the last layer's output


def _x_description(i: int) -> str:
    return " (the embeddings, after LayerNorm)." if i == 0 else f" (layer {i - 1}'s output)."


FAMILY = Family(
    name="bert",
    model_types=("bert",),
    anchor=ANCHOR,
    causal=False,
    norm="post",
    linear_values=True,
    sentence_pairs=True,
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
