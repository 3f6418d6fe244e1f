"""Llama 4's text model (llama4_text): NoPE layers with attention temperature tuning, chunked
attention on the rotary layers, an L2 norm on queries and keys, and a mixture of experts.

Each layer, pre-norm with RMSNorm (× w):
  X = input_layernorm(h);  Q, K, V = X·W_q, X·W_k, X·W_v            (grouped key/value heads)
  rotary layers (no_rope_layers[i] = 1; by default every layer but each 4th):
    Q_rot, K_rot = RoPE on interleaved pairs (dimensions 2j, 2j + 1 rotate together);
    Q_norm, K_norm = x / √(mean(x²) + ε), no learned scale (use_qk_norm), after RoPE;
    chunked attention: a token sees the earlier tokens of its own attention_chunk_size block
  NoPE layers: no rotation, full causal attention; with attn_temperature_tuning the queries
    of the token at position p are multiplied by log(1 + ⌊(p + 1)/floor_scale⌋)·attn_scale + 1
    (Q_temp; K_temp = K), so far-away tokens' scores grow sharper on long inputs
  W = softmax(Q·Kᵀ/√d_k, masked);  Y = W·V;  h = h + Y_concat·W_o
  h = h + MLP(post_attention_layernorm(h)): on the MoE layers (moe_layers, by default every
    interleave_moe_layer_step-th), a router picks each token's top num_experts_per_tok experts
    and weights each by the sigmoid of its logit; the token is scaled by that weight before the
    expert (SwiGLU, gate_up_proj [E, d, 2·inter] gate first) and a shared expert runs on every
    token; the other layers have a dense SwiGLU MLP of width intermediate_size_mlp.
then the final norm and the LM head. Checkpoints as transformers saves Llama4ForCausalLM, and
the language model of the multimodal hub checkpoints (model_type llama4: its text_config, tensors
under language_model.; the vision tower is not read).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from attn_cli import attention as att
from attn_cli import narrate
from attn_cli.errors import InputError
from attn_cli.models import _moe
from attn_cli.models._decoder import (
    ANCHOR,
    FULL,
    DecoderArgs,
    Spec,
    decoder_family,
    describe,
    parsed,
    rotaries,
    tied,
)
from attn_cli.models.args import FLAG, POSITIVE, POSITIVE_INT, Kind, arg
from attn_cli.models.layers import rms_norm
from attn_cli.models.registry import Config, WeightSource
from attn_cli.models.weights import expect_shape
from attn_cli.records import LayerRecord, multi_head_attention

if TYPE_CHECKING:
    from collections.abc import Iterator

    from attn_cli.narrate import StageContext

CHUNKED = "chunked_attention"
ROPE_FLAGS = Kind(
    "a list of 0 or 1 per layer",
    lambda v: isinstance(v, list) and all(x in (0, 1) and not isinstance(x, float) for x in v),
)
# Meta's Llama 4 configs write attn_temperature_tuning as a number (4): on when non-zero
SWITCH = Kind(
    "true, false or an integer",
    lambda v: isinstance(v, bool | int) and not isinstance(v, float),
)
LAYER_LIST = Kind(
    "a list of layer numbers",
    lambda v: (
        isinstance(v, list) and all(isinstance(x, int) and not isinstance(x, bool) for x in v)
    ),
)


@dataclass(frozen=True, kw_only=True)
class Llama4TextArgs(DecoderArgs):
    """transformers' Llama4TextConfig defaults."""

    vocab_size: int = arg(POSITIVE_INT, 202_048)
    hidden_size: int = arg(POSITIVE_INT, 5120)
    intermediate_size: int = arg(POSITIVE_INT, 8192)
    intermediate_size_mlp: int = arg(POSITIVE_INT, 16_384)
    num_hidden_layers: int = arg(POSITIVE_INT, 48)
    num_attention_heads: int = arg(POSITIVE_INT, 40)
    num_key_value_heads: int | None = arg(POSITIVE_INT, 8, nullable=True)
    head_dim: int | None = arg(POSITIVE_INT, 128, nullable=True)
    max_position_embeddings: int | None = arg(POSITIVE_INT, 131_072, nullable=True)
    rms_norm_eps: float = arg(POSITIVE, 1e-5)
    rope_theta: float | None = arg(POSITIVE, 500_000.0, nullable=True)
    num_experts_per_tok: int = arg(POSITIVE_INT, 1)
    num_local_experts: int = arg(POSITIVE_INT, 16)
    moe_layers: list[int] | None = arg(LAYER_LIST, None, nullable=True)
    interleave_moe_layer_step: int = arg(POSITIVE_INT, 1)
    use_qk_norm: bool | None = arg(FLAG, True, nullable=True)
    no_rope_layers: list[int] | None = arg(ROPE_FLAGS, None, nullable=True)
    no_rope_layer_interval: int = arg(POSITIVE_INT, 4)
    attention_chunk_size: int | None = arg(POSITIVE_INT, 8192, nullable=True)
    attn_temperature_tuning: bool | int | None = arg(SWITCH, True, nullable=True)
    floor_scale: float = arg(POSITIVE, 8192)
    attn_scale: float = arg(POSITIVE, 0.1)

    def validate(self, source: str) -> None:
        super().validate(source)
        _moe.check_top_k(
            source, self.num_experts_per_tok, self.num_local_experts, "num_local_experts"
        )
        if self.no_rope_layers and len(self.no_rope_layers) < self.num_hidden_layers:
            raise InputError(
                f"{source}: no_rope_layers lists {len(self.no_rope_layers)} layers, "
                f"num_hidden_layers is {self.num_hidden_layers}"
            )
        kinds = layer_types(self)
        if len(kinds) != self.num_hidden_layers or any(k not in (FULL, CHUNKED) for k in kinds):
            raise InputError(
                f"{source}: layer_types must list {self.num_hidden_layers} entries of "
                f"{FULL!r} or {CHUNKED!r}"
            )
        if CHUNKED in kinds and self.attention_chunk_size is None:
            raise InputError(f"{source}: chunked_attention layers need attention_chunk_size")


def uses_rope(args: Llama4TextArgs) -> list[bool]:
    """Per layer, whether it rotates its queries and keys (no_rope_layers: 1 = rotary; an
    empty or missing list: every no_rope_layer_interval-th layer is NoPE)."""
    n = args.num_hidden_layers
    if args.no_rope_layers:
        return [bool(x) for x in args.no_rope_layers[:n]]
    return [(i + 1) % args.no_rope_layer_interval != 0 for i in range(n)]


def layer_types(args: Llama4TextArgs) -> list[str]:
    """'chunked_attention' (the rotary layers, when attention_chunk_size is set) or
    'full_attention' for each layer."""
    if args.layer_types:
        return list(args.layer_types)
    chunked = args.attention_chunk_size is not None
    return [CHUNKED if rope_ and chunked else FULL for rope_ in uses_rope(args)]


def moe_layers(args: Llama4TextArgs) -> list[int]:
    if args.moe_layers is not None:
        return list(args.moe_layers)
    step = args.interleave_moe_layer_step
    return list(range(step - 1, args.num_hidden_layers, step))


def chunked_mask(n: int, chunk: int) -> np.ndarray:
    """Causal, and only within the same block of `chunk` tokens: j ≤ i and ⌊i/chunk⌋ = ⌊j/chunk⌋."""
    block = np.arange(n) // chunk
    return att.causal_mask(n) & (block[:, None] == block[None, :])


def temperature(n: int, args: Llama4TextArgs) -> np.ndarray:
    """(n,) the NoPE layers' query scale per position p: log(1 + ⌊(p + 1)/floor_scale⌋)·attn_scale
    + 1, in float32 as transformers computes it."""
    p = np.arange(n, dtype=np.float32)
    floor = np.floor((p + np.float32(1.0)) / np.float32(args.floor_scale))
    return (np.log1p(floor) * np.float32(args.attn_scale) + np.float32(1.0)).astype(np.float32)


def rotate_pairs(x: np.ndarray, cos: np.ndarray, sin: np.ndarray) -> np.ndarray:
    """RoPE on interleaved pairs (Llama 4's apply_rotary_emb: dimensions 2j and 2j + 1 are one
    complex number, turned by position × inv_freq[j]). cos, sin: (n, head_dim) as
    rope.Rotary.cos_sin lays them out (angle ⧺ angle), so their first half is per frequency."""
    half = x.shape[-1] // 2
    c, s = cos[:, :half], sin[:, :half]
    even, odd = x[..., 0::2], x[..., 1::2]
    out = np.empty_like(x)
    out[..., 0::2] = even * c - odd * s
    out[..., 1::2] = even * s + odd * c
    return out


def l2_norm(x: np.ndarray, eps: float) -> np.ndarray:
    """Llama4TextL2Norm: x / √(mean(x²) + ε) over each head's vector, no learned scale."""
    return rms_norm(x, np.ones(x.shape[-1], np.float32), eps)


SPECS = {"llama4_text": Spec(args=Llama4TextArgs, rope_layers=uses_rope)}  # type: ignore[arg-type]


def llama4_text(cfg: Config) -> Config:
    """A llama4_text config; for the multimodal Llama 4 (model_type llama4: Scout, Maverick) its
    text_config, whose language model this runs."""
    if cfg.get("model_type") != "llama4":
        return cfg
    text = cfg.get("text_config")
    if not isinstance(text, Mapping):
        raise InputError("config.json: a llama4 checkpoint needs a text_config object")
    return {**text, "model_type": "llama4_text"}


def rename(name: str) -> str:
    """The multimodal checkpoints' LM head (language_model.lm_head.weight) by its plain name;
    the language model's other tensors lose their prefix with the anchor's."""
    return name.removeprefix("language_model.")


def _args(cfg: Config) -> tuple[Spec, Llama4TextArgs, str]:
    spec, args, source = parsed(SPECS, cfg)
    assert isinstance(args, Llama4TextArgs)
    return spec, args, source


def moe_of(args: Llama4TextArgs) -> _moe.MoE:
    return _moe.MoE(
        experts=args.num_local_experts,
        top_k=args.num_experts_per_tok,
        inter=args.intermediate_size,
        routing="sigmoid_topk",
        act=str(args.hidden_act or "silu"),
    )


def check(w: WeightSource, cfg: Config) -> None:
    """Config options this code runs, and every tensor's shape against config.json."""
    spec, args, source = _args(cfg)
    d, heads, kv, hd = args.hidden_size, args.num_attention_heads, args.kv_heads, args.head_size
    inter, experts = args.intermediate_size, args.num_local_experts
    rotaries(spec, args, source)  # refuses unsupported rope types and bad rope values by name
    expect_shape(w, ANCHOR, (args.vocab_size, d))
    sparse = set(moe_layers(args))
    bias = bool(args.attention_bias)
    for i in range(args.num_hidden_layers):
        p = f"layers.{i}."
        a, f = p + "self_attn.", p + "feed_forward."
        expect_shape(w, p + "input_layernorm.weight", (d,))
        expect_shape(w, p + "post_attention_layernorm.weight", (d,))
        for name, shape in (("q", (heads * hd, d)), ("k", (kv * hd, d)), ("v", (kv * hd, d)),
                            ("o", (d, heads * hd))):  # fmt: skip
            expect_shape(w, a + f"{name}_proj.weight", shape)
            if bias:
                expect_shape(w, a + f"{name}_proj.bias", shape[:1])
        if i in sparse:
            expect_shape(w, f + "router.weight", (experts, d))
            expect_shape(w, f + "experts.gate_up_proj", (experts, d, 2 * inter))
            expect_shape(w, f + "experts.down_proj", (experts, inter, d))
            _moe.check_dense(w, f + "shared_expert.", d, inter)
        else:
            _moe.check_dense(w, f, d, args.intermediate_size_mlp)
    expect_shape(w, "norm.weight", (d,))
    if not tied(args, w):
        expect_shape(w, "lm_head.weight", (args.vocab_size, d))


def moe(
    w: WeightSource, f: str, x: np.ndarray, args: Llama4TextArgs
) -> tuple[np.ndarray, np.ndarray]:
    """Llama4TextMoe: the shared expert on every token plus each token's routed experts, and the
    routing (n, E). An expert's stacked matrices are read only when a token routes to it."""
    m = moe_of(args)
    routing = _moe.route(x @ w[f + "router.weight"].T, m)  # [n, d] @ [d, E] -> [n, E]
    inter = args.intermediate_size

    def load(e: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        gate_up = w.rows(f + "experts.gate_up_proj", [e])[0]  # [d, 2·inter], gate first
        down = w.rows(f + "experts.down_proj", [e])[0]  # [inter, d]
        return gate_up[:, :inter].T, gate_up[:, inter:].T, down.T

    routed = _moe.run_experts(x, routing, m, load)
    return _moe.dense_mlp(w, f + "shared_expert.", x, m.act) + routed, routing


def layers(w: WeightSource, x: np.ndarray, cfg: Config) -> Iterator[LayerRecord]:
    spec, args, source = _args(cfg)
    n = len(x)
    heads, kv, eps = args.num_attention_heads, args.kv_heads, args.rms_norm_eps
    with_rope, kinds, sparse = uses_rope(args), layer_types(args), set(moe_layers(args))
    cos, sin = rotaries(spec, args, source)[FULL].cos_sin(n)
    masks = {FULL: att.causal_mask(n)}
    if CHUNKED in kinds:
        assert args.attention_chunk_size is not None  # validate() says so
        masks[CHUNKED] = chunked_mask(n, args.attention_chunk_size)
    temp = temperature(n, args)[:, None]  # [n, 1]: one factor per query row
    bias = bool(args.attention_bias)
    x = x.astype(np.float32, copy=False)
    for i in range(args.num_hidden_layers):
        p = f"layers.{i}."
        a = p + "self_attn."
        proj = {
            name: (w[a + f"{name}_proj.weight"].T, w[a + f"{name}_proj.bias"] if bias else None)
            for name in "qkvo"
        }
        params = att.AttentionParams(
            proj["q"][0], proj["k"][0], proj["v"][0], heads, kv,
            proj["q"][1], proj["k"][1], proj["v"][1], proj["o"][0], proj["o"][1],
        )  # fmt: skip
        rotary = with_rope[i]

        def hook(q: np.ndarray, k: np.ndarray, rotary: bool = rotary) -> list[att.QKStage]:
            if rotary:
                stages = [("rot", rotate_pairs(q, cos, sin), rotate_pairs(k, cos, sin))]
                if args.use_qk_norm:
                    stages.append(("norm", l2_norm(stages[0][1], eps), l2_norm(stages[0][2], eps)))
                return stages
            if args.attn_temperature_tuning:
                return [("temp", (q * temp).astype(np.float32), k)]
            return []

        a_in = rms_norm(x, w[p + "input_layernorm.weight"], eps)
        record = multi_head_attention(a_in, params, masks[kinds[i]], hook, resid=x)
        record.facts.update(
            rope=rotary,
            layer_type=kinds[i],
            chunk=args.attention_chunk_size,
            floor_scale=args.floor_scale,
            attn_scale=args.attn_scale,
        )
        assert record.output is not None
        h = x + record.output
        m = rms_norm(h, w[p + "post_attention_layernorm.weight"], eps)
        f = p + "feed_forward."
        if i in sparse:
            ff, routing = moe(w, f, m, args)
            _moe.add_router(record, routing, moe_of(args))
        else:
            ff = _moe.dense_mlp(w, f, m, str(args.hidden_act or "silu"))
        out = h + ff
        yield LayerRecord([record], out)
        x = out


def describe_llama4(cfg: Config) -> dict[str, Any]:
    """The shared decoder description, with Llama 4's own attention and MLP."""
    _, args, _ = _args(cfg)
    dense = [i for i in range(args.num_hidden_layers) if i not in set(moe_layers(args))]
    return {
        **describe(cfg),
        "layer_types": layer_types(args),
        "attention_chunk_size": args.attention_chunk_size,
        "rope_layout": "interleaved pairs (2j, 2j + 1)",
        "qk_norm": bool(args.use_qk_norm),
        "qk_norm_kind": "L2 (RMS, no learned scale) after RoPE, rotary layers only",
        "attn_temperature_tuning": (
            {"floor_scale": args.floor_scale, "attn_scale": args.attn_scale}
            if args.attn_temperature_tuning
            else None
        ),
        "mlp": _moe.describe_moe(moe_of(args), dense),
    }


NOPE = (
    " No positional encoding in this layer (NoPE): its queries and keys are not rotated, so "
    "a score depends only on what the two tokens hold, not on how far apart they are; the "
    "causal mask is the only order it sees."
)


def _masked(c: StageContext) -> tuple[str, str]:
    if c.record.facts.get("layer_type") == CHUNKED:
        chunk = c.record.facts["chunk"]
        return f"{c.logits()}, −∞ above the diagonal and outside the chunk", (
            f"Chunked attention: a token sees only itself and the earlier tokens of its own "
            f"block of {chunk} (tokens 0–{chunk - 1}, {chunk}–{2 * chunk - 1}, …); later tokens "
            "and earlier blocks are −∞ and get weight 0, so the first token of each block sees "
            "only itself."
        )
    formula, description = narrate.STAGE_TEXTS["W_masked"](c)
    return formula, description + ("" if c.record.facts.get("rope", True) else NOPE)


def _l2_norm(c: StageContext) -> tuple[str, str]:
    letter = c.stage.name[0]
    what = "query" if letter == "Q" else "key"
    return f"{c.latest(letter)} / √(mean({c.latest(letter)}²) + ε)", (
        f"Each head's rotated {what} vector scaled to unit root-mean-square, with no learned "
        "scale (Llama 4's L2 norm on its rotary layers): every score is then a cosine "
        "similarity times d_k."
    )


def _temp(c: StageContext) -> tuple[str, str]:
    if c.stage.name[0] == "K":
        return "K (unchanged)", "The keys are not scaled; only the queries are (Q_temp)."
    floor, scale = c.record.facts["floor_scale"], c.record.facts["attn_scale"]
    return f"Q · (log(1 + ⌊(p + 1)/{floor:g}⌋) · {scale:g} + 1)", (
        "Attention temperature tuning on this NoPE layer: the query of the token at position p "
        f"(from 0) is multiplied by a factor that is 1 while p + 1 < floor_scale ({floor:g}) and "
        "grows slowly (logarithmically) after, so attention stays sharp over long inputs."
    )


STAGE_TEXTS: dict[str, Any] = {
    "W_masked": _masked,
    "Q_norm": _l2_norm,
    "K_norm": _l2_norm,
    "Q_temp": _temp,
    "K_temp": _temp,
    "router": _moe.router_text,
}


FAMILY = dataclasses.replace(
    decoder_family(
        "llama4",
        SPECS,
        mask=(
            "The model reads left to right: a token may not look at later tokens, so their "
            "scores are −∞; in chunked layers, neither at tokens before its own chunk."
        ),
        stage_texts=STAGE_TEXTS,
        model_types=(*SPECS, "llama4"),
        adapt={"llama4_text": llama4_text, "llama4": llama4_text},
        rename=rename,
    ),
    check=check,
    layers=layers,
    describe=describe_llama4,
)
