"""The encoder–decoder shared by BART, mBART and Marian (fairseq's transformer, as transformers
ports it). A family file gives its `Spec` (where it normalises, how positions enter) and its
args class; this module runs them.

  embeddings:  E[ids]·scale (√d_model when scale_embedding) + P[position]
               P learned with an offset of 2 rows (BART, mBART) or sinusoidal (Marian:
               sin in the first half of the vector, cos in the second), then LayerNorm
               (layernorm_embedding: BART, mBART)
  each encoder layer, post-LN (BART, Marian):
      h = LN(h + SelfAttn(h));  h = LN(h + FF(h))
  pre-LN (mBART):
      h = h + SelfAttn(LN(h));  h = h + FF(LN(h))         and a final LayerNorm per stack
  attention: Q·Kᵀ/√d_head, biases on every projection; FF(x) = act(x·W_1 + b_1)·W_2 + b_2
  each decoder layer: causal self-attention, cross-attention over the encoder output, FF,
  normalised the same way; logits = h·Eᵀ + final_logits_bias.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from attn_cli.attention import AttentionParams, causal_mask
from attn_cli.errors import InputError
from attn_cli.models.args import FLAG, POSITIVE_INT, TEXT, Args, arg
from attn_cli.models.layers import activation, layer_norm
from attn_cli.models.registry import Config, Dims, Family, Seq2Seq, WeightSource, Wording
from attn_cli.models.weights import expect_shape
from attn_cli.records import LayerRecord, multi_head_attention

# Every checkpoint of these families has it (the token tables may be shared or per stack).
ANCHOR = "decoder.layers.0.encoder_attn.q_proj.weight"
EPS = 1e-5  # torch.nn.LayerNorm's default: these configs have no epsilon
OFFSET = 2  # BART's learned position table starts 2 rows in (a fairseq padding leftover)


@dataclass(frozen=True, kw_only=True)
class BartArgs(Args):
    """What this module reads of a BART / mBART / Marian config.json (transformers'
    BartConfig defaults; a family's subclass changes its own)."""

    vocab_size: int = arg(POSITIVE_INT, 50265)
    d_model: int = arg(POSITIVE_INT, 1024)
    encoder_layers: int = arg(POSITIVE_INT, 12)
    decoder_layers: int = arg(POSITIVE_INT, 12)
    encoder_attention_heads: int = arg(POSITIVE_INT, 16)
    decoder_attention_heads: int = arg(POSITIVE_INT, 16)
    encoder_ffn_dim: int = arg(POSITIVE_INT, 4096)
    decoder_ffn_dim: int = arg(POSITIVE_INT, 4096)
    max_position_embeddings: int = arg(POSITIVE_INT, 1024)
    activation_function: str = arg(TEXT, "gelu")
    scale_embedding: bool = arg(FLAG, False)
    # Marian: the decoder's own vocabulary (None: the encoder's)
    decoder_vocab_size: int | None = arg(POSITIVE_INT, None)

    @property
    def target_vocab(self) -> int:
        return self.vocab_size if self.decoder_vocab_size is None else self.decoder_vocab_size

    def validate(self, source: str) -> None:
        check_heads(
            source, self.d_model, self.encoder_attention_heads, self.decoder_attention_heads
        )


def check_heads(source: str, d_model: int, encoder_heads: int, decoder_heads: int) -> None:
    """Each stack's heads split d_model evenly (BART-style configs, Whisper's too)."""
    for heads, stack in ((encoder_heads, "encoder"), (decoder_heads, "decoder")):
        if d_model % heads:
            raise InputError(
                f"{source}: d_model {d_model} is not divisible by {stack}_attention_heads {heads}"
            )


@dataclass(frozen=True)
class Spec:
    """What differs between the families this module runs."""

    args: type[BartArgs]
    pre_norm: bool  # mBART: LayerNorm before each sublayer, and a final one per stack
    sinusoidal: bool  # Marian: fixed sinusoidal positions, no offset; else learned, offset 2
    layernorm_embedding: bool  # a LayerNorm on the embeddings (BART, mBART)


def sinusoidal_positions(n: int, d: int) -> np.ndarray:
    """(n, d) Marian's table (MarianSinusoidalPositionalEmbedding): angle pos/10000^(2⌊j/2⌋/d),
    the sines of the even j in the first half, the cosines of the odd j in the second."""
    j = np.arange(d)
    angle = np.arange(n)[:, None] / np.power(10000.0, 2 * (j // 2) / d)[None, :]  # float64
    half = (d + 1) // 2
    out = np.empty((n, d), dtype=np.float32)
    out[:, :half] = np.sin(angle[:, 0::2])
    out[:, half:] = np.cos(angle[:, 1::2])
    return out


def _table(w: WeightSource, stack: str) -> str:
    """The token table a stack reads: its own, or the shared one."""
    own = f"{stack}.embed_tokens.weight"
    return own if own in w else "shared.weight"


def dims(spec: Spec) -> Callable[[Config], Dims]:
    def get(cfg: Config) -> Dims:
        a = spec.args.parse(cfg)
        heads = a.encoder_attention_heads
        return Dims(
            a.encoder_layers,
            heads,
            heads,
            a.d_model,
            a.d_model // heads,
            a.target_vocab,
            a.max_position_embeddings,
        )

    return get


def check(spec: Spec) -> Callable[[WeightSource, Config], None]:
    def run(w: WeightSource, cfg: Config) -> None:
        a = spec.args.parse(cfg)
        activation(a.activation_function)  # refuses unknown activations by name
        d = a.d_model
        if "shared.weight" not in w and "encoder.embed_tokens.weight" not in w:
            raise InputError("the checkpoint has no token embeddings (shared.weight)")
        expect_shape(w, _table(w, "encoder"), (a.vocab_size, d))
        expect_shape(w, _table(w, "decoder"), (a.target_vocab, d))
        for stack, depth, ffn in (
            ("encoder", a.encoder_layers, a.encoder_ffn_dim),
            ("decoder", a.decoder_layers, a.decoder_ffn_dim),
        ):
            if not spec.sinusoidal:
                rows = a.max_position_embeddings + OFFSET
                expect_shape(w, f"{stack}.embed_positions.weight", (rows, d))
            norms = ["self_attn_layer_norm", "final_layer_norm"]
            blocks = ["self_attn"]
            if stack == "decoder":
                norms.append("encoder_attn_layer_norm")
                blocks.append("encoder_attn")
            for i in range(depth):
                p = f"{stack}.layers.{i}."
                for block in blocks:
                    check_attention(w, p + block, d)
                for norm in norms:
                    expect_shape(w, f"{p}{norm}.weight", (d,))
                expect_shape(w, f"{p}fc1.weight", (ffn, d))
                expect_shape(w, f"{p}fc2.weight", (d, ffn))
            if spec.layernorm_embedding:
                expect_shape(w, f"{stack}.layernorm_embedding.weight", (d,))
            if spec.pre_norm:
                expect_shape(w, f"{stack}.layer_norm.weight", (d,))
        if "lm_head.weight" in w:
            expect_shape(w, "lm_head.weight", (a.target_vocab, d))
        if "final_logits_bias" in w:
            expect_shape(w, "final_logits_bias", (1, a.target_vocab))

    return run


def _embed(spec: Spec, stack: str) -> Callable[[WeightSource, list[int], Config], np.ndarray]:
    def run(w: WeightSource, ids: list[int], cfg: Config) -> np.ndarray:
        a = spec.args.parse(cfg)
        n = len(ids)
        if n > a.max_position_embeddings:
            raise InputError(
                f"the {'source' if stack == 'encoder' else 'target'} is {n} tokens, more than "
                f"the model's {a.max_position_embeddings} positions"
            )
        x = w.rows(_table(w, stack), ids)
        if a.scale_embedding:
            x = x * np.float32(math.sqrt(a.d_model))
        if spec.sinusoidal:
            x = x + sinusoidal_positions(n, a.d_model)
        else:
            x = x + w[f"{stack}.embed_positions.weight"][OFFSET : OFFSET + n]
        if spec.layernorm_embedding:
            x = ln(w, f"{stack}.layernorm_embedding", x)
        return x

    return run


def ln(w: WeightSource, name: str, x: np.ndarray) -> np.ndarray:
    """The LayerNorm `name` (its weight and bias, torch's ε: these configs have none)."""
    return layer_norm(x, w[name + ".weight"], w[name + ".bias"], EPS)


def attention_params(w: WeightSource, p: str, heads: int, key_bias: bool = True) -> AttentionParams:
    """The attention block `p` (…self_attn, …encoder_attn): q/k/v/out_proj with biases (Whisper's
    k_proj has none: key_bias False)."""
    q, k, v, o = (w[f"{p}.{m}.weight"].T for m in ("q_proj", "k_proj", "v_proj", "out_proj"))
    return AttentionParams(
        q, k, v, heads,
        b_q=w[f"{p}.q_proj.bias"],
        b_k=w[f"{p}.k_proj.bias"] if key_bias else None,
        b_v=w[f"{p}.v_proj.bias"],
        w_o=o,
        b_o=w[f"{p}.out_proj.bias"],
    )  # fmt: skip


def check_attention(w: WeightSource, p: str, d: int, key_bias: bool = True) -> None:
    """Every tensor shape of attention block `p`, as attention_params reads it."""
    for m in ("q_proj", "k_proj", "v_proj", "out_proj"):
        expect_shape(w, f"{p}.{m}.weight", (d, d))
        if key_bias or m != "k_proj":
            expect_shape(w, f"{p}.{m}.bias", (d,))


def _ff(
    w: WeightSource, p: str, act: Callable[[np.ndarray], np.ndarray]
) -> Callable[[np.ndarray], tuple[np.ndarray, Any]]:
    """Layer p's feed-forward sublayer: act(x·W_1 + b_1)·W_2 + b_2 (no record)."""

    def run(x: np.ndarray) -> tuple[np.ndarray, Any]:
        hidden = act(x @ w[p + "fc1.weight"].T + w[p + "fc1.bias"])  # [n, d] -> [n, ffn]
        return hidden @ w[p + "fc2.weight"].T + w[p + "fc2.bias"], None  # [n, ffn] -> [n, d]

    return run


def _sublayer(
    spec: Spec,
    w: WeightSource,
    norm: str,
    h: np.ndarray,
    inner: Callable[[np.ndarray], tuple[np.ndarray, Any]],
) -> tuple[np.ndarray, Any]:
    """One residual sublayer, normalised before (pre-LN) or after the sum (post-LN)."""
    if spec.pre_norm:
        out, rec = inner(ln(w, norm, h))
        return h + out, rec
    out, rec = inner(h)
    return ln(w, norm, h + out), rec


def _attention(
    w: WeightSource,
    p: str,
    heads: int,
    h: np.ndarray,
    **kw: Any,
) -> Callable[[np.ndarray], tuple[np.ndarray, Any]]:
    def run(x: np.ndarray) -> tuple[np.ndarray, Any]:
        rec = multi_head_attention(x, attention_params(w, p, heads), resid=h, **kw)
        assert rec.output is not None
        return rec.output, rec

    return run


def _encoder(spec: Spec) -> Callable[[WeightSource, np.ndarray, Config], Iterator[LayerRecord]]:
    def run(w: WeightSource, h: np.ndarray, cfg: Config) -> Iterator[LayerRecord]:
        a = spec.args.parse(cfg)
        act = activation(a.activation_function)
        for i in range(a.encoder_layers):
            p = f"encoder.layers.{i}."
            attend = _attention(
                w,
                p + "self_attn",
                a.encoder_attention_heads,
                h,
                axis="source",
                block="encoder",
            )
            h, rec = _sublayer(spec, w, p + "self_attn_layer_norm", h, attend)
            h, _ = _sublayer(spec, w, p + "final_layer_norm", h, _ff(w, p, act))
            yield LayerRecord([rec], h)

    return run


def _decoder(
    spec: Spec,
) -> Callable[[WeightSource, np.ndarray, np.ndarray, Config], Iterator[LayerRecord]]:
    def run(w: WeightSource, h: np.ndarray, enc: np.ndarray, cfg: Config) -> Iterator[LayerRecord]:
        a = spec.args.parse(cfg)
        act = activation(a.activation_function)
        heads = a.decoder_attention_heads
        mask = causal_mask(len(h))
        for i in range(a.decoder_layers):
            p = f"decoder.layers.{i}."
            own_attn = _attention(w, p + "self_attn", heads, h, mask=mask, block="decoder")
            h, own = _sublayer(spec, w, p + "self_attn_layer_norm", h, own_attn)
            cross_attn = _attention(
                w, p + "encoder_attn", heads, h, block="cross", memory=enc, key_axis="source"
            )
            h, cross = _sublayer(spec, w, p + "encoder_attn_layer_norm", h, cross_attn)
            h, _ = _sublayer(spec, w, p + "final_layer_norm", h, _ff(w, p, act))
            yield LayerRecord([own, cross], h)

    return run


def _final(spec: Spec, stack: str) -> Callable[[WeightSource, np.ndarray, Config], np.ndarray]:
    def run(w: WeightSource, h: np.ndarray, cfg: Config) -> np.ndarray:
        return ln(w, f"{stack}.layer_norm", h) if spec.pre_norm else h

    return run


def logits(w: WeightSource, h: np.ndarray, cfg: Config) -> np.ndarray:
    """h·Eᵀ (the decoder's token table, or the checkpoint's own lm_head) + final_logits_bias."""
    head = w["lm_head.weight"] if "lm_head.weight" in w else w[_table(w, "decoder")]
    out = h @ head.T  # [n, d] @ [d, V] -> [n, V]
    if "final_logits_bias" in w:
        out = out + w["final_logits_bias"][0]
    return out


def describe(spec: Spec) -> Callable[[Config], dict[str, Any]]:
    def get(cfg: Config) -> dict[str, Any]:
        a = spec.args.parse(cfg)
        return {
            "norm": "pre" if spec.pre_norm else "post",
            "positions": "sinusoidal" if spec.sinusoidal else f"learned (offset {OFFSET})",
            "scale_embedding": a.scale_embedding,
            "decoder_layers": a.decoder_layers,
        }

    return get


def _x_description(spec: Spec) -> Callable[[int], str]:
    def text(i: int) -> str:
        made = "the embeddings" if i == 0 else f"layer {i - 1}'s output"
        return f" ({made}, LayerNorm-ed first)." if spec.pre_norm else f" ({made})."

    return text


def family(name: str, model_types: tuple[str, ...], spec: Spec) -> Family:
    """The Family of one of the fairseq-style encoder–decoders."""
    return Family(
        name=name,
        model_types=model_types,
        anchor=ANCHOR,
        causal=False,
        norm="pre" if spec.pre_norm else "post",
        linear_values=True,
        sentence_pairs=False,
        dims=dims(spec),
        check=check(spec),
        embed=_embed(spec, "encoder"),
        layers=_encoder(spec),
        final=_final(spec, "encoder"),
        describe=describe(spec),
        wording=Wording(
            x_formula="LayerNorm(hidden states)" if spec.pre_norm else "hidden states",
            x_description=_x_description(spec),
            final="The decoder's output after its last layer: one vector per target token.",
        ),
        seq2seq=Seq2Seq(
            decoder_layers=lambda cfg: spec.args.parse(cfg).decoder_layers,
            embed_target=_embed(spec, "decoder"),
            decoder=_decoder(spec),
            decoder_final=_final(spec, "decoder"),
            logits=logits,
        ),
    )
