"""gpt-oss (OpenAI's open-weight decoders): attention sinks and a mixture-of-experts MLP.

Each layer, pre-norm with RMSNorm (× w):
  X = input_layernorm(h);  Q, K, V = X·W_q + b_q, X·W_k + b_k, X·W_v + b_v   (grouped K/V heads)
  Q_rot, K_rot = YaRN rotary embedding
  W_masked = Q_rot·K_rotᵀ/√d_k with −∞ where the mask forbids (alternating 128-token sliding
             window and full causal layers: layer_types, sliding_window)
  softmax over [W_masked | s_h] per row, s_h a learned sink logit per head; the sink column is
  then dropped: W (each row sums to 1 − its sink mass, the `sink` stage);  Y = W·V
  h = h + Y_concat·W_o + b_o
  h = h + MoE(post_attention_layernorm(h)): the router (linear with bias) picks each token's
      top-k experts, softmax over their logits; each expert's gate_up (gate and up interleaved,
      even and odd columns) runs a clamped SwiGLU, (up + 1)·gate·σ(α·gate), then down.
then the final norm and the LM head. Checkpoints are as transformers saves GptOssForCausalLM
(bf16 or float32 experts stacked as [E, d, 2·inter] and [E, inter, d]); the hub's MXFP4
expert blocks and GGUF are not read.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from attn_cli import attention as att
from attn_cli.errors import InputError
from attn_cli.kvcache import CachedLayers, KVCache, mask_rows
from attn_cli.models import rope
from attn_cli.models._decoder import (
    ANCHOR,
    FULL,
    SLIDING,
    DecoderArgs,
    Spec,
    config_window,
    decoder_family,
    describe,
    layer_kinds,
    parsed,
    rotaries,
    tied,
    window,
)
from attn_cli.models.args import FLAG, POSITIVE, POSITIVE_INT, arg
from attn_cli.models.layers import rms_norm
from attn_cli.models.registry import Config, WeightSource
from attn_cli.models.weights import expect_shape
from attn_cli.records import (
    KEY,
    KV_HEADS,
    QUERY,
    QUERY_HEADS,
    TOKENS,
    AttentionRecord,
    Dims,
    LayerRecord,
)

if TYPE_CHECKING:
    from collections.abc import Iterator

    from attn_cli.narrate import StageContext

# transformers' GptOssConfig rope when config.json gives none
DEFAULT_ROPE = {
    "rope_type": "yarn",
    "factor": 32.0,
    "beta_fast": 32.0,
    "beta_slow": 1.0,
    "truncate": False,
    "original_max_position_embeddings": 4096,
}


@dataclass(frozen=True, kw_only=True)
class GptOssArgs(DecoderArgs):
    """transformers' GptOssConfig defaults."""

    num_hidden_layers: int = arg(POSITIVE_INT, 36)
    num_local_experts: int = arg(POSITIVE_INT, 128)
    num_experts_per_tok: int = arg(POSITIVE_INT, 4)
    vocab_size: int = arg(POSITIVE_INT, 201_088)
    hidden_size: int = arg(POSITIVE_INT, 2880)
    intermediate_size: int = arg(POSITIVE_INT, 2880)
    head_dim: int | None = arg(POSITIVE_INT, 64, nullable=True)
    num_attention_heads: int = arg(POSITIVE_INT, 64)
    num_key_value_heads: int | None = arg(POSITIVE_INT, 8, nullable=True)
    sliding_window: int | None = arg(POSITIVE_INT, 128, nullable=True)
    max_position_embeddings: int | None = arg(POSITIVE_INT, 131_072, nullable=True)
    rms_norm_eps: float = arg(POSITIVE, 1e-5)
    rope_theta: float | None = arg(POSITIVE, 150_000.0, nullable=True)
    attention_bias: bool | None = arg(FLAG, True, nullable=True)
    swiglu_alpha: float = arg(POSITIVE, 1.702)
    swiglu_limit: float = arg(POSITIVE, 7.0)

    def validate(self, source: str) -> None:
        super().validate(source)
        if self.num_experts_per_tok > self.num_local_experts:
            raise InputError(
                f"{source}: num_experts_per_tok {self.num_experts_per_tok} is more than "
                f"num_local_experts {self.num_local_experts}"
            )


def _alternating(args: GptOssArgs) -> list[str]:
    """transformers' default: even layers slide, odd layers see everything."""
    if args.layer_types:
        return list(args.layer_types)
    return [SLIDING if (i + 1) % 2 else FULL for i in range(args.num_hidden_layers)]


SPECS = {
    "gpt_oss": Spec(
        args=GptOssArgs, qkv_bias=True, o_bias=True, layer_types=_alternating, window=config_window
    )
}


def gpt_oss_config(cfg: Config) -> Config:
    """The config as GptOssConfig reads it: YaRN (factor 32 over 4,096 tokens) when it names no
    rope settings."""
    if cfg.get("rope_parameters") or cfg.get("rope_scaling"):
        return cfg
    return {**cfg, "rope_parameters": {**DEFAULT_ROPE, "rope_theta": cfg.get("rope_theta")}}


def _args(cfg: Config) -> tuple[Spec, GptOssArgs, str]:
    spec, args, source = parsed(SPECS, cfg)
    assert isinstance(args, GptOssArgs)
    return spec, args, source


def check(w: WeightSource, cfg: Config) -> None:
    """Config options this code runs, and every tensor's shape against config.json."""
    spec, args, source = _args(cfg)
    d, heads, kv, hd = args.hidden_size, args.num_attention_heads, args.kv_heads, args.head_size
    inter, experts = args.intermediate_size, args.num_local_experts
    kinds = layer_kinds(spec, args)
    if len(kinds) != args.num_hidden_layers or any(k not in (FULL, SLIDING) for k in kinds):
        raise InputError(
            f"{source}: layer_types must list {args.num_hidden_layers} entries of {FULL!r} or "
            f"{SLIDING!r}"
        )
    rotaries(spec, args, source)  # refuses unsupported rope types and bad rope values by name
    if "layers.0.mlp.experts.gate_up_proj_blocks" in w:
        raise InputError(
            f"{source}: this checkpoint stores its experts in MXFP4 (gate_up_proj_blocks), "
            "which is not read yet: load it in transformers with "
            "Mxfp4Config(dequantize=True) and save_pretrained it in bf16"
        )
    expect_shape(w, ANCHOR, (args.vocab_size, d))
    for i in range(args.num_hidden_layers):
        p = f"layers.{i}."
        a = p + "self_attn."
        m = p + "mlp."
        shapes = {
            p + "input_layernorm.weight": (d,),
            p + "post_attention_layernorm.weight": (d,),
            a + "q_proj.weight": (heads * hd, d),
            a + "q_proj.bias": (heads * hd,),
            a + "k_proj.weight": (kv * hd, d),
            a + "k_proj.bias": (kv * hd,),
            a + "v_proj.weight": (kv * hd, d),
            a + "v_proj.bias": (kv * hd,),
            a + "o_proj.weight": (d, heads * hd),
            a + "o_proj.bias": (d,),
            a + "sinks": (heads,),
            m + "router.weight": (experts, d),
            m + "router.bias": (experts,),
            m + "experts.gate_up_proj": (experts, d, 2 * inter),
            m + "experts.gate_up_proj_bias": (experts, 2 * inter),
            m + "experts.down_proj": (experts, inter, d),
            m + "experts.down_proj_bias": (experts, d),
        }
        for name, shape in shapes.items():
            expect_shape(w, name, shape)
    expect_shape(w, "norm.weight", (d,))
    if not tied(args, w):
        expect_shape(w, "lm_head.weight", (args.vocab_size, d))


def sink_attention(
    x: np.ndarray,
    p: att.AttentionParams,
    sinks: np.ndarray,
    mask: np.ndarray,
    rot: rope.Rotary,
    cos: np.ndarray,
    sin: np.ndarray,
    resid: np.ndarray,
    cache: tuple[KVCache, int] | None = None,
) -> AttentionRecord:
    """Self-attention with one sink logit per head joining each row's softmax (transformers'
    eager_attention_forward for gpt-oss): X, Q, K, V, Q_rot, K_rot, W_raw, W_scaled, W_masked,
    W (over the real tokens: partial weights), sink (each row's mass to the sink), Y. With a
    `cache` (and this layer's index), x are new tokens: their keys and values join the cached
    ones, and the rows are the new tokens' over every key so far."""
    rec = AttentionRecord("self", TOKENS, TOKENS, p.heads, p.kv_heads, resid=resid, params=p)
    rec.add("X", x)
    q, k, v = att.project(x, p)
    rec.add("Q", q, heads=QUERY_HEADS, cols=Dims("q"))
    rec.add("K", k, heads=KV_HEADS, rows=KEY, cols=Dims("k"))
    rec.add("V", v, heads=KV_HEADS, rows=KEY, cols=Dims("v"))
    q = rec.add("Q_rot", rot.apply(q, cos, sin), heads=QUERY_HEADS, cols=Dims("q"))
    k = rec.add("K_rot", rot.apply(k, cos, sin), heads=KV_HEADS, rows=KEY, cols=Dims("k"))
    heads, n, d_k = q.shape
    if cache is not None:
        k, v = cache[0].extend(cache[1], k, v)
    scale = float(d_k) ** -0.5
    w_raw = att.scores(q, att.repeat_kv(k, heads))  # [H, n, d_k] @ [H, d_k, n] -> [H, n, n]
    w_scaled = w_raw * np.float32(scale)
    w_masked = np.where(mask, w_scaled, -np.inf).astype(np.float32)
    sink_logits = np.broadcast_to(sinks.astype(np.float32)[:, None, None], (heads, n, 1))
    probs = att.row_softmax(np.concatenate([w_masked, sink_logits], axis=-1))  # [H, n, n + 1]
    for name, data in (("W_raw", w_raw), ("W_scaled", w_scaled), ("W_masked", w_masked)):
        rec.add(name, data, "scores", QUERY_HEADS, QUERY, KEY)
    weights = rec.add("W", probs[..., :-1], "partial_weights", QUERY_HEADS, QUERY, KEY)
    rec.add("sink", probs[..., -1:], "relevance", QUERY_HEADS, QUERY, ("sink",))
    y = rec.add("Y", weights @ att.repeat_kv(v, heads), heads=QUERY_HEADS, cols=Dims("v"))
    assert p.w_o is not None  # every gpt-oss layer has its output projection
    rec.output = att.linear(att.merge_heads(y), p.w_o, p.b_o)  # [n, H·d_v] @ [H·d_v, d]
    rec.facts.update(scale=scale, cap=None, temperature=1.0, d_k=d_k, sinks=sinks)
    return rec


def moe(w: WeightSource, p: str, x: np.ndarray, args: GptOssArgs) -> tuple[np.ndarray, np.ndarray]:
    """The mixture-of-experts MLP (transformers' GptOssMLP): its output (n, d) and the routing
    (n, experts): the weight each token's chosen experts get, zeros elsewhere. Each expert runs
    only on the tokens routed to it."""
    logits = x @ w[p + "router.weight"].T + w[p + "router.bias"]  # [n, d] @ [d, E] -> [n, E]
    top = np.argsort(-logits, axis=-1, kind="stable")[:, : args.num_experts_per_tok]
    chosen = np.take_along_axis(logits, top, axis=-1)
    routing = np.zeros_like(logits)
    np.put_along_axis(routing, top, att.row_softmax(chosen), axis=-1)
    gate_up_b, down_b = w[p + "experts.gate_up_proj_bias"], w[p + "experts.down_proj_bias"]
    alpha, limit = np.float32(args.swiglu_alpha), np.float32(args.swiglu_limit)
    out = np.zeros_like(x)
    for e in (int(e) for e in np.flatnonzero((routing > 0).any(axis=0))):
        tokens = np.flatnonzero(routing[:, e] > 0)
        # one expert's matrices at a time, read only when a token routes to it
        gate_up_w = w.rows(p + "experts.gate_up_proj", [e])[0]  # [d, 2·inter]
        down_w = w.rows(p + "experts.down_proj", [e])[0]  # [inter, d]
        gate_up = x[tokens] @ gate_up_w + gate_up_b[e]  # [t, d] @ [d, 2·inter]
        gate = np.minimum(gate_up[:, ::2], limit)  # gate and up are interleaved columns
        up = np.clip(gate_up[:, 1::2], -limit, limit)
        with np.errstate(over="ignore"):  # exp overflows to inf for very negative gates: glu → 0
            glu = gate / (np.float32(1.0) + np.exp(-alpha * gate))  # gate·σ(α·gate)
        y = ((up + 1) * glu) @ down_w + down_b[e]  # [t, inter] @ [inter, d]
        out[tokens] += y * routing[tokens, e][:, None]
    return out, routing


def layers(
    w: WeightSource, x: np.ndarray, cfg: Config, cache: KVCache | None = None
) -> Iterator[LayerRecord]:
    """The layers over tokens x; with a `cache`, x are the tokens after those it holds."""
    spec, args, source = _args(cfg)
    n = len(x)
    start = 0 if cache is None else cache.length  # the position of x's first token
    heads, kv, eps = args.num_attention_heads, args.kv_heads, args.rms_norm_eps
    kinds = layer_kinds(spec, args)
    rots = rotaries(spec, args, source)
    tables = {}
    for kind, r in rots.items():
        cos, sin = r.cos_sin(start + n)
        tables[kind] = (cos[start:], sin[start:])
    width = window(spec, args)
    masks = {FULL: mask_rows(start, start + n)}
    if width is not None:
        masks[SLIDING] = mask_rows(start, start + n, width)
    experts = tuple(f"e{e}" for e in range(args.num_local_experts))
    x = x.astype(np.float32, copy=False)
    for i in range(args.num_hidden_layers):
        p = f"layers.{i}."
        a = p + "self_attn."
        proj = {
            name: (w[a + f"{name}_proj.weight"].T, w[a + f"{name}_proj.bias"]) for name in "qkvo"
        }
        params = att.AttentionParams(
            proj["q"][0],
            proj["k"][0],
            proj["v"][0],
            heads,
            kv,
            proj["q"][1],
            proj["k"][1],
            proj["v"][1],
            proj["o"][0],
            proj["o"][1],
        )
        kind = kinds[i]
        cos, sin = tables[kind]
        a_in = rms_norm(x, w[p + "input_layernorm.weight"], eps)
        at = None if cache is None else (cache, i)
        record = sink_attention(
            a_in, params, w[a + "sinks"], masks[kind], rots[kind], cos, sin, x, at
        )
        assert record.output is not None
        h = x + record.output
        ff, routing = moe(
            w, p + "mlp.", rms_norm(h, w[p + "post_attention_layernorm.weight"], eps), args
        )
        record.add("router", routing, "relevance", None, QUERY, experts)
        record.facts["top_k"] = args.num_experts_per_tok
        out = h + ff
        yield LayerRecord([record], out)
        x = out


def describe_gpt_oss(cfg: Config) -> dict[str, Any]:
    """The shared decoder description, with the MLP and the sinks as gpt-oss has them."""
    _, args, _ = _args(cfg)
    return {
        **describe(cfg),
        "mlp": (
            f"mixture of {args.num_local_experts} experts, top {args.num_experts_per_tok}, "
            f"clamped SwiGLU (alpha {args.swiglu_alpha:g}, limit {args.swiglu_limit:g})"
        ),
        "attention_sinks": "one learned sink logit per head",
    }


def _sink_weights(c: StageContext) -> tuple[str, str]:
    return f"softmax([{c.logits()} | s_h]) per row, sink column dropped", (
        f"Attention weights of head {c.h} over the real tokens. A learned sink logit "
        f"(s_h = {_sink_logit(c)}) joins each row's softmax and is then dropped, so each row sums to "
        "less than 1: the rest went to the sink (the sink step)."
    )


def _sink_logit(c: StageContext) -> str:
    return f"{float(c.record.facts['sinks'][c.h]):.3g}"


def _sink(c: StageContext) -> tuple[str, str]:
    mean = float(np.mean(c.data))
    return "softmax([W_masked | s_h])[:, sink] = 1 − Σ_j W_ij", (
        f"Each token's attention that went to head {c.h}'s sink (a key that holds no token): "
        f"{mean:.3g} on average. A token with nothing worth reading can look here instead."
    )


def _router(c: StageContext) -> tuple[str, str]:
    k = c.record.facts["top_k"]
    return f"softmax(top-{k}(post_attention_layernorm(h)·W_routerᵀ + b))", (
        f"The mixture-of-experts router: each token's weight on each of the {c.data.shape[1]} "
        f"experts. Only its top {k} experts run on it (their weights sum to 1); the rest are 0."
    )


# The words of gpt-oss's own stages (the step catalogue in narrate.py has the shared ones).
STAGE_TEXTS = {"W": _sink_weights, "sink": _sink, "router": _router}


FAMILY = dataclasses.replace(
    decoder_family(
        "gpt_oss",
        SPECS,
        adapt={"gpt_oss": gpt_oss_config},
        stage_texts=STAGE_TEXTS,
        mask=(
            "The model reads left to right: a token may not look at later tokens, so their "
            "scores are −∞; in sliding-window layers, neither at tokens more than "
            "sliding_window back."
        ),
    ),
    check=check,
    layers=CachedLayers(layers),
    describe=describe_gpt_oss,
)
