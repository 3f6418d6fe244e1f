"""GPT-2: token + position embeddings, pre-LayerNorm decoder layers with a causal mask and tanh
GELU, a final LayerNorm. Conv1D weights are already [in, out]. Generation uses the key/value
cache: the new tokens are embedded at their positions (PositionedEmbed.at), the layers run
over them alone (CachedLayers)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from attn_cli.attention import AttentionParams, causal_mask, linear
from attn_cli.errors import InputError
from attn_cli.kvcache import CachedLayers, KVCache, PositionedEmbed, mask_rows
from attn_cli.models.args import FLAG, POSITIVE, POSITIVE_INT, TEXT, Args, arg
from attn_cli.models.layers import activation, layer_norm
from attn_cli.models.registry import Config, Dims, Family, WeightSource, Wording
from attn_cli.models.weights import expect_shape
from attn_cli.records import LayerRecord, multi_head_attention

ANCHOR = "wte.weight"


@dataclass(frozen=True, kw_only=True)
class GPT2Args(Args):
    """What this file reads of a GPT-2 config.json (transformers' GPT2Config defaults)."""

    n_embd: int = arg(POSITIVE_INT)
    n_head: int = arg(POSITIVE_INT)
    n_layer: int = arg(POSITIVE_INT)
    vocab_size: int = arg(POSITIVE_INT)
    n_positions: int = arg(POSITIVE_INT)
    n_inner: int | None = arg(POSITIVE_INT, None)  # None: 4 × n_embd
    layer_norm_epsilon: float = arg(POSITIVE, 1e-5)
    activation_function: str = arg(TEXT, "gelu_new")
    scale_attn_by_inverse_layer_idx: bool | None = arg(FLAG, False, nullable=True)
    reorder_and_upcast_attn: bool | None = arg(FLAG, False, nullable=True)

    def validate(self, source: str) -> None:
        if self.n_embd % self.n_head:
            raise InputError(
                f"{source}: n_embd {self.n_embd} is not divisible by n_head {self.n_head}"
            )


def dims(cfg: Config) -> Dims:
    args = GPT2Args.parse(cfg)
    d, heads = args.n_embd, args.n_head
    return Dims(args.n_layer, heads, heads, d, d // heads, args.vocab_size, args.n_positions)


def check(w: WeightSource, cfg: Config) -> None:
    args = GPT2Args.parse(cfg)
    d = args.n_embd
    inner = args.n_inner or 4 * d
    if args.scale_attn_by_inverse_layer_idx or args.reorder_and_upcast_attn:
        raise InputError(
            "GPT-2 variants with scale_attn_by_inverse_layer_idx/reorder_and_upcast_attn are not supported"
        )
    activation(args.activation_function)  # refuses unknown activations by name
    expect_shape(w, ANCHOR, (args.vocab_size, d))
    expect_shape(w, "wpe.weight", (args.n_positions, d))
    for i in range(args.n_layer):
        p = f"h.{i}."
        expect_shape(w, p + "attn.c_attn.weight", (d, 3 * d))
        expect_shape(w, p + "attn.c_attn.bias", (3 * d,))
        expect_shape(w, p + "attn.c_proj.weight", (d, d))
        expect_shape(w, p + "mlp.c_fc.weight", (d, inner))
        expect_shape(w, p + "mlp.c_proj.weight", (inner, d))
    expect_shape(w, "ln_f.weight", (d,))


def embed(w: WeightSource, ids: list[int], cfg: Config, start: int = 0) -> np.ndarray:
    """Token + learned position embeddings, the tokens at positions start, start + 1, …"""
    return w.rows(ANCHOR, ids) + w["wpe.weight"][start : start + len(ids)]


def layers(
    w: WeightSource, x: np.ndarray, cfg: Config, cache: KVCache | None = None
) -> Iterator[LayerRecord]:
    """The layers over tokens x; with a `cache`, x are the tokens after those it holds (their
    queries against every key so far, the rows a full pass computes for them)."""
    args = GPT2Args.parse(cfg)
    heads, eps = args.n_head, args.layer_norm_epsilon
    act = activation(args.activation_function)
    if cache is None:
        mask = causal_mask(len(x))
    else:
        start = cache.length
        mask = mask_rows(start, start + len(x))
    for i in range(args.n_layer):
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
        if cache is None:
            a = multi_head_attention(a_in, params, mask, resid=x)
        else:
            a = cache.attention(i, a_in, params, mask, resid=x)
        assert a.output is not None
        h = x + a.output  # residual
        m = layer_norm(h, w[p + "ln_2.weight"], w[p + "ln_2.bias"], eps)
        ff = act(linear(m, w[p + "mlp.c_fc.weight"], w[p + "mlp.c_fc.bias"]))  # [n, d] -> [n, 4d]
        out = h + linear(ff, w[p + "mlp.c_proj.weight"], w[p + "mlp.c_proj.bias"])  # -> [n, d]
        yield LayerRecord([a], out)
        x = out


def final(w: WeightSource, h: np.ndarray, cfg: Config) -> np.ndarray:
    eps = GPT2Args.parse(cfg).layer_norm_epsilon
    return layer_norm(h, w["ln_f.weight"], w["ln_f.bias"], eps)


def logits(w: WeightSource, h: np.ndarray, cfg: Config) -> np.ndarray:
    """Next-token logits: the final hidden states times the (tied) token embeddings."""
    return h @ w[ANCHOR].T  # [n, d] @ [d, vocab]


FAMILY = Family(
    name="gpt2",
    model_types=("gpt2",),
    anchor=ANCHOR,
    causal=True,
    norm="pre",
    linear_values=True,
    sentence_pairs=False,
    dims=dims,
    check=check,
    embed=PositionedEmbed(embed),
    layers=CachedLayers(layers),
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
