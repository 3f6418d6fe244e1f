"""T5 family (t5-small … t5-11b, T5 v1.1, FLAN-T5, mT5): an encoder–decoder with relative
position buckets and no √d scaling.

Each encoder layer, pre-norm with RMSNorm (T5LayerNorm: no mean, no bias):
  X = RMSNorm(h);  Q, K, V = X·W_q, X·W_k, X·W_v (no biases)
  W = softmax(Q·Kᵀ + B)        no 1/√d_k (folded into the initialisation), B the position bias
  h = h + Y_concat·W_o;  h = h + FF(RMSNorm(h))
  FF(x) = act(x·W_i)·W_o   ("relu": T5);  (gelu_new(x·W_i0) ⊙ x·W_i1)·W_o  ("gated-gelu": v1.1)
B[h, i, j] = a learned number per head for the bucket of the distance j − i: exact for short
distances, logarithmic up to relative_attention_max_distance; bidirectional in the encoder
(separate buckets before and after), one-sided in the decoder. Only layer 0 of each stack owns
the table; the stack's later layers reuse layer 0's B.
Each decoder layer: causal self-attention (with its B), cross-attention over the encoder
output (no position bias), the FF; each sublayer pre-normed. The LM head multiplies by
d_model^-0.5 first when it is tied to the embeddings.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from attn_cli.attention import AttentionParams, causal_mask
from attn_cli.errors import InputError
from attn_cli.models.args import FLAG, POSITIVE, POSITIVE_INT, TEXT, Args, arg
from attn_cli.models.layers import activation, rms_norm
from attn_cli.models.registry import Config, Dims, Family, Seq2Seq, WeightSource, Wording
from attn_cli.models.weights import expect_shape
from attn_cli.narrate import StageContext
from attn_cli.records import LayerRecord, multi_head_attention

ANCHOR = "shared.weight"


@dataclass(frozen=True, kw_only=True)
class T5Args(Args):
    """What this file reads of a T5 config.json (transformers' T5Config defaults)."""

    vocab_size: int = arg(POSITIVE_INT, 32128)
    d_model: int = arg(POSITIVE_INT, 512)
    d_kv: int = arg(POSITIVE_INT, 64)
    d_ff: int = arg(POSITIVE_INT, 2048)
    num_layers: int = arg(POSITIVE_INT, 6)
    num_decoder_layers: int | None = arg(POSITIVE_INT, None)
    num_heads: int = arg(POSITIVE_INT, 8)
    relative_attention_num_buckets: int = arg(POSITIVE_INT, 32)
    relative_attention_max_distance: int = arg(POSITIVE_INT, 128)
    layer_norm_epsilon: float = arg(POSITIVE, 1e-6)
    feed_forward_proj: str = arg(TEXT, "relu")
    tie_word_embeddings: bool = arg(FLAG, True)
    # transformers 5 writes this (and tie_word_embeddings true) in place of an untied head's
    # tie_word_embeddings: false; None: scale unless tie_word_embeddings is false
    scale_decoder_outputs: bool | None = arg(FLAG, None)

    @property
    def decoder_depth(self) -> int:
        return self.num_layers if self.num_decoder_layers is None else self.num_decoder_layers

    @property
    def scaled_head(self) -> bool:
        """The decoder's output is scaled by d_model^-0.5 before the LM head (original T5's
        tied head; not T5 v1.1 / FLAN-T5, whose configs say tie_word_embeddings: false)."""
        if self.scale_decoder_outputs is not None:
            return self.scale_decoder_outputs
        return self.tie_word_embeddings

    @property
    def gated(self) -> bool:
        return self.feed_forward_proj.startswith("gated-")

    @property
    def act(self) -> str:
        """transformers' T5Config.dense_act_fn: 'gated-gelu' means gelu_new (tanh)."""
        name = self.feed_forward_proj.split("-")[-1]
        return "gelu_new" if self.gated and name == "gelu" else name

    def validate(self, source: str) -> None:
        parts = self.feed_forward_proj.split("-")
        if len(parts) > 2 or (len(parts) == 2 and parts[0] != "gated"):
            raise InputError(
                f"{source}: feed_forward_proj {self.feed_forward_proj!r} is not "
                "'{ACT}' or 'gated-{ACT}'"
            )


def dims(cfg: Config) -> Dims:
    a = T5Args.parse(cfg)
    return Dims(a.num_layers, a.num_heads, a.num_heads, a.d_model, a.d_kv, a.vocab_size, None)


def _stack_shapes(w: WeightSource, a: T5Args, stack: str, depth: int) -> None:
    d, inner, ff = a.d_model, a.num_heads * a.d_kv, a.d_ff
    sub = ["SelfAttention"] + (["EncDecAttention"] if stack == "decoder" else [])
    for i in range(depth):
        p = f"{stack}.block.{i}.layer."
        for j, name in enumerate(sub):
            for m in "qkv":
                expect_shape(w, f"{p}{j}.{name}.{m}.weight", (inner, d))
            expect_shape(w, f"{p}{j}.{name}.o.weight", (d, inner))
            expect_shape(w, f"{p}{j}.layer_norm.weight", (d,))
        f = f"{p}{len(sub)}."
        for m in ("wi_0", "wi_1") if a.gated else ("wi",):
            expect_shape(w, f"{f}DenseReluDense.{m}.weight", (ff, d))
        expect_shape(w, f"{f}DenseReluDense.wo.weight", (d, ff))
        expect_shape(w, f"{f}layer_norm.weight", (d,))
    bias = f"{stack}.block.0.layer.0.SelfAttention.relative_attention_bias.weight"
    expect_shape(w, bias, (a.relative_attention_num_buckets, a.num_heads))
    expect_shape(w, f"{stack}.final_layer_norm.weight", (d,))


def check(w: WeightSource, cfg: Config) -> None:
    a = T5Args.parse(cfg)
    activation(a.act)  # refuses unknown activations by name
    expect_shape(w, ANCHOR, (a.vocab_size, a.d_model))
    _stack_shapes(w, a, "encoder", a.num_layers)
    _stack_shapes(w, a, "decoder", a.decoder_depth)
    if "lm_head.weight" in w:
        expect_shape(w, "lm_head.weight", (a.vocab_size, a.d_model))


def relative_buckets(
    n_q: int, n_k: int, bidirectional: bool, num_buckets: int, max_distance: int
) -> np.ndarray:
    """(n_q, n_k) bucket of each key's distance from each query (transformers'
    T5Attention._relative_position_bucket): distances below half the buckets (a quarter each
    way, bidirectional) are exact, longer ones share logarithmically wider buckets up to
    max_distance; the decoder only looks back, so its later keys all fall in bucket 0."""
    rel = np.arange(n_k)[None, :] - np.arange(n_q)[:, None]  # key position − query position
    buckets = np.zeros_like(rel)
    if bidirectional:
        num_buckets //= 2
        buckets += (rel > 0) * num_buckets
        rel = np.abs(rel)
    else:
        rel = -np.minimum(rel, 0)
    max_exact = num_buckets // 2
    large = max_exact + (
        np.log(np.maximum(rel, 1).astype(np.float32) / max_exact)  # short ones: not used
        / math.log(max_distance / max_exact)
        * (num_buckets - max_exact)
    ).astype(np.int64)
    large = np.minimum(large, num_buckets - 1)
    return buckets + np.where(rel < max_exact, rel, large)


def position_bias(w: WeightSource, a: T5Args, stack: str, n_q: int, n_k: int) -> np.ndarray:
    """(H, n_q, n_k): layer 0's learned number per head for each query–key bucket, computed
    once per stack and shared by its layers."""
    table = w[f"{stack}.block.0.layer.0.SelfAttention.relative_attention_bias.weight"]
    b = relative_buckets(
        n_q,
        n_k,
        stack == "encoder",
        a.relative_attention_num_buckets,
        a.relative_attention_max_distance,
    )
    return table[b].transpose(2, 0, 1)  # [n_q, n_k, H] -> [H, n_q, n_k]


def _params(w: WeightSource, p: str, heads: int) -> AttentionParams:
    q, k, v, o = (w[f"{p}.{m}.weight"].T for m in "qkvo")
    return AttentionParams(q, k, v, heads, w_o=o)


def _feed_forward(w: WeightSource, p: str, x: np.ndarray, a: T5Args) -> np.ndarray:
    act = activation(a.act)
    ff = f"{p}DenseReluDense."
    if a.gated:
        hidden = act(x @ w[ff + "wi_0.weight"].T) * (x @ w[ff + "wi_1.weight"].T)
    else:
        hidden = act(x @ w[ff + "wi.weight"].T)  # [n, d] -> [n, d_ff]
    return hidden @ w[ff + "wo.weight"].T  # [n, d_ff] -> [n, d]


def _norm(w: WeightSource, name: str, x: np.ndarray, a: T5Args) -> np.ndarray:
    return rms_norm(x, w[name], a.layer_norm_epsilon)


def embed(w: WeightSource, ids: list[int], cfg: Config) -> np.ndarray:
    return w.rows(ANCHOR, ids)  # the shared table, not scaled


def layers(w: WeightSource, h: np.ndarray, cfg: Config) -> Iterator[LayerRecord]:
    """The encoder: bidirectional self-attention over the source."""
    a = T5Args.parse(cfg)
    bias = position_bias(w, a, "encoder", len(h), len(h))
    for i in range(a.num_layers):
        p = f"encoder.block.{i}.layer."
        x = _norm(w, p + "0.layer_norm.weight", h, a)
        rec = multi_head_attention(
            x,
            _params(w, p + "0.SelfAttention", a.num_heads),
            scale=1.0,
            bias=bias,
            axis="source",
            block="encoder",
            resid=h,
        )
        assert rec.output is not None
        rec.facts["bias_layer"] = 0
        h = h + rec.output
        h = h + _feed_forward(w, p + "1.", _norm(w, p + "1.layer_norm.weight", h, a), a)
        yield LayerRecord([rec], h)


def final(w: WeightSource, h: np.ndarray, cfg: Config) -> np.ndarray:
    return _norm(w, "encoder.final_layer_norm.weight", h, T5Args.parse(cfg))


def decoder(w: WeightSource, h: np.ndarray, enc: np.ndarray, cfg: Config) -> Iterator[LayerRecord]:
    """The decoder: causal self-attention over the target, cross-attention over the source."""
    a = T5Args.parse(cfg)
    n = len(h)
    bias = position_bias(w, a, "decoder", n, n)
    mask = causal_mask(n)
    for i in range(a.decoder_depth):
        p = f"decoder.block.{i}.layer."
        x = _norm(w, p + "0.layer_norm.weight", h, a)
        own = multi_head_attention(
            x,
            _params(w, p + "0.SelfAttention", a.num_heads),
            mask,
            scale=1.0,
            bias=bias,
            block="decoder",
            resid=h,
        )
        assert own.output is not None
        h = h + own.output
        x = _norm(w, p + "1.layer_norm.weight", h, a)
        cross = multi_head_attention(
            x,
            _params(w, p + "1.EncDecAttention", a.num_heads),
            scale=1.0,
            block="cross",
            resid=h,
            memory=enc,
            key_axis="source",
        )
        assert cross.output is not None
        h = h + cross.output
        h = h + _feed_forward(w, p + "2.", _norm(w, p + "2.layer_norm.weight", h, a), a)
        yield LayerRecord([own, cross], h)


def decoder_final(w: WeightSource, h: np.ndarray, cfg: Config) -> np.ndarray:
    return _norm(w, "decoder.final_layer_norm.weight", h, T5Args.parse(cfg))


def logits(w: WeightSource, h: np.ndarray, cfg: Config) -> np.ndarray:
    """The LM head: its own lm_head.weight when the checkpoint has one, else the shared
    embeddings; the decoder's output is scaled by d_model^-0.5 first unless the config says
    tie_word_embeddings: false (T5 v1.1, FLAN-T5) or scale_decoder_outputs: false, as
    transformers does."""
    a = T5Args.parse(cfg)
    head = w["lm_head.weight"] if "lm_head.weight" in w else w[ANCHOR]
    if a.scaled_head:
        h = h * np.float32(a.d_model**-0.5)
    return h @ head.T  # [n, d] @ [d, V] -> [n, V]


def describe(cfg: Config) -> dict[str, object]:
    a = T5Args.parse(cfg)
    return {
        "position": "relative buckets",
        "buckets": a.relative_attention_num_buckets,
        "max_distance": a.relative_attention_max_distance,
        "feed_forward": a.feed_forward_proj,
        "scaled_lm_head": a.scaled_head,
        "decoder_layers": a.decoder_depth,
    }


def _scaled(c: StageContext) -> tuple[str, str]:
    return "W_raw (×1)", (
        "Not divided by √d_k: T5 folds that scale into how its weights were initialised, so "
        "the scores are used as they are."
    )


def _biased(c: StageContext) -> tuple[str, str]:
    where = "layer 0's table, shared by every layer of this stack"
    side = (
        "separate buckets for keys before and after the query"
        if c.record.block == "encoder"
        else "the decoder only looks back, so only distances to earlier tokens count"
    )
    return "W_scaled + B (relative position bias)", (
        f"Plus the position bias B: head {c.h}'s learned number for the bucket of each "
        f"query–key distance ({where}; exact for short distances, logarithmic buckets for long "
        f"ones; {side}). Position enters T5 only here."
    )


def _x_description(i: int) -> str:
    return (
        " (the shared embeddings, RMS-normalised)."
        if i == 0
        else f" (layer {i - 1}'s output, RMS-normalised)."
    )


FAMILY = Family(
    name="t5",
    model_types=("t5", "mt5"),
    anchor=ANCHOR,
    causal=False,
    norm="pre",
    linear_values=True,
    sentence_pairs=False,
    dims=dims,
    check=check,
    embed=embed,
    layers=layers,
    final=final,
    describe=describe,
    stage_texts={"W_scaled": _scaled, "W_biased": _biased},
    wording=Wording(
        x_formula="RMSNorm(hidden states)",
        x_description=_x_description,
        final="The decoder's output after its final RMSNorm: one vector per target token.",
    ),
    seq2seq=Seq2Seq(
        decoder_layers=lambda cfg: T5Args.parse(cfg).decoder_depth,
        embed_target=embed,
        decoder=decoder,
        decoder_final=decoder_final,
        logits=logits,
    ),
)
