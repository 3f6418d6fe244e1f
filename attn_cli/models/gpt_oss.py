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
then the final norm and the LM head. Experts are read one at a time, in any of three layouts:
  - transformers' GptOssForCausalLM (bf16 or float32, stacked as [E, d, 2·inter], [E, inter, d]);
  - the hub's MXFP4 checkpoints (gate_up_proj_blocks/_scales, down_proj_blocks/_scales:
    [E, out, in/32, 16] codes and [E, out, in/32] exponents), dequantised as transformers does;
  - llama.cpp's GGUF (architecture `gpt-oss`, convert_hf_to_gguf's GptOssModel): gate and up
    split apart (ffn_gate_exps, ffn_up_exps [E, inter, d]), ffn_down_exps [E, d, inter], their
    biases apart, usually MXFP4 (gguf/quants.py, bit-identical to ggml); attn_sinks, the router
    as ffn_gate_inp, post_attention_norm; no q/k row permutation.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from attn_cli import attention as att
from attn_cli.errors import InputError
from attn_cli.gguf.quants import mxfp4_pairs
from attn_cli.kvcache import CachedLayers, KVCache, mask_rows
from attn_cli.models import _moe, rope
from attn_cli.models._decoder import (
    ANCHOR,
    FULL,
    GGUF_OPTIONAL_TENSORS,
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
from attn_cli.models.registry import ABSENT, Config, GGUFTable, WeightSource
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
        _moe.check_top_k(
            source, self.num_experts_per_tok, self.num_local_experts, "num_local_experts"
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


def gguf_config(meta: Any, cfg: dict[str, Any]) -> None:
    """llama.cpp writes YaRN's factor and original length; GptOssConfig's beta_fast, beta_slow
    and truncate=False come back from its defaults (or the file's yarn_beta_* keys)."""
    scaling = cfg.get("rope_scaling")
    if scaling and scaling.get("rope_type") == "yarn":
        cfg["rope_scaling"] = {
            **scaling,
            "beta_fast": meta.checked(POSITIVE, "rope.scaling.yarn_beta_fast", 32.0),
            "beta_slow": meta.checked(POSITIVE, "rope.scaling.yarn_beta_slow", 1.0),
            "truncate": False,
        }


# llama.cpp's layout (gguf-py MODEL_ARCH.GPT_OSS): HF-style names of the GGUF tensors; the
# experts' gate and up are apart here (GGUF_EXPERTS), interleaved again when read.
GGUF_EXPERTS = {
    f"mlp.experts.{part}_proj.{kind}": f"ffn_{part}_exps.{kind}"
    for part in ("gate", "up", "down")
    for kind in ("weight", "bias")
}
GGUF = GGUFTable(
    arch="gpt-oss",
    model_type="gpt_oss",
    hf_class="GptOssForCausalLM",
    args=GptOssArgs,
    layer_tensors={
        "input_layernorm.weight": "attn_norm.weight",
        "post_attention_layernorm.weight": "post_attention_norm.weight",
        "self_attn.o_proj.weight": "attn_output.weight",
        "self_attn.sinks": "attn_sinks.weight",
        "mlp.router.weight": "ffn_gate_inp.weight",
        "mlp.router.bias": "ffn_gate_inp.bias",
        **GGUF_EXPERTS,
    },
    optional_layer_tensors=GGUF_OPTIONAL_TENSORS,
    metadata={
        "expert_count": ("num_local_experts", ABSENT),
        "expert_used_count": ("num_experts_per_tok", ABSENT),
        "attention.sliding_window": ("sliding_window", ABSENT),
    },
    adapt=gguf_config,
)


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
            **_expert_shapes(layout(w, m), m, experts, d, inter),
        }
        for name, shape in shapes.items():
            expect_shape(w, name, shape)
    expect_shape(w, "norm.weight", (d,))
    if not tied(args, w):
        expect_shape(w, "lm_head.weight", (args.vocab_size, d))


def layout(w: WeightSource, m: str) -> str:
    """How a layer's experts are stored: "dense" (transformers), "mxfp4" (the hub's blocks and
    scales) or "gguf" (gate, up and down apart, [E, out, in])."""
    if m + "experts.gate_up_proj_blocks" in w:
        return "mxfp4"
    if m + "experts.gate_proj.weight" in w:
        return "gguf"
    return "dense"


def _expert_shapes(
    kind: str, m: str, experts: int, d: int, inter: int
) -> dict[str, tuple[int, ...]]:
    e = m + "experts."
    if kind == "gguf":
        return {
            e + "gate_proj.weight": (experts, inter, d),
            e + "gate_proj.bias": (experts, inter),
            e + "up_proj.weight": (experts, inter, d),
            e + "up_proj.bias": (experts, inter),
            e + "down_proj.weight": (experts, d, inter),
            e + "down_proj.bias": (experts, d),
        }
    biases = {e + "gate_up_proj_bias": (experts, 2 * inter), e + "down_proj_bias": (experts, d)}
    if kind == "mxfp4":
        for size, name in ((d, "d"), (inter, "intermediate_size")):
            if size % 32:
                raise InputError(f"MXFP4 experts need {name} to be a multiple of 32, not {size}")
        return {
            e + "gate_up_proj_blocks": (experts, 2 * inter, d // 32, 16),
            e + "gate_up_proj_scales": (experts, 2 * inter, d // 32),
            e + "down_proj_blocks": (experts, d, inter // 32, 16),
            e + "down_proj_scales": (experts, d, inter // 32),
            **biases,
        }
    return {
        e + "gate_up_proj": (experts, d, 2 * inter),
        e + "down_proj": (experts, inter, d),
        **biases,
    }


def _interleave(gate: np.ndarray, up: np.ndarray) -> np.ndarray:
    """gate and up side by side as transformers holds them: gate in the even, up in the odd
    columns (of the last axis)."""
    out = np.empty((*gate.shape[:-1], 2 * gate.shape[-1]), dtype=np.float32)
    out[..., ::2], out[..., 1::2] = gate, up
    return out


def expert_biases(w: WeightSource, m: str) -> tuple[np.ndarray, np.ndarray]:
    """Every expert's gate_up bias [E, 2·inter] (interleaved) and down bias [E, d]."""
    e = m + "experts."
    if layout(w, m) == "gguf":
        return _interleave(w[e + "gate_proj.bias"], w[e + "up_proj.bias"]), w[e + "down_proj.bias"]
    return w[e + "gate_up_proj_bias"], w[e + "down_proj_bias"]


def expert(w: WeightSource, m: str, i: int) -> tuple[np.ndarray, np.ndarray]:
    """Expert i's gate_up [d, 2·inter] (gate and up interleaved) and down [inter, d] as
    transformers multiplies them, read (and dequantised) alone."""
    e = m + "experts."
    kind = layout(w, m)
    if kind == "gguf":  # [out, in] each, gate and up apart
        gate, up = w.rows(e + "gate_proj.weight", [i])[0], w.rows(e + "up_proj.weight", [i])[0]
        return _interleave(gate.T, up.T), w.rows(e + "down_proj.weight", [i])[0].T
    if kind == "mxfp4":  # [out, in/32, 16] codes and [out, in/32] exponents
        stored = w.stored  # type: ignore[attr-defined]
        gate_up = mxfp4_pairs(
            stored(e + "gate_up_proj_blocks", i), stored(e + "gate_up_proj_scales", i)
        )
        down = mxfp4_pairs(stored(e + "down_proj_blocks", i), stored(e + "down_proj_scales", i))
        return gate_up.T, down.T
    return w.rows(e + "gate_up_proj", [i])[0], w.rows(e + "down_proj", [i])[0]


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
    gate_up_b, down_b = expert_biases(w, p)
    alpha, limit = np.float32(args.swiglu_alpha), np.float32(args.swiglu_limit)
    out = np.zeros_like(x)
    # transformers-format experts from safetensors: converted as they are multiplied, a few
    # columns at a time in the cache (never a whole expert in float32)
    product = getattr(w, "entry_product", None) if layout(w, p) == "dense" else None
    for e in (int(e) for e in np.flatnonzero((routing > 0).any(axis=0))):
        tokens = np.flatnonzero(routing[:, e] > 0)
        # one expert's matrices at a time, read only when a token routes to it
        if product is not None:  # [t, d] @ [d, 2·inter]
            gate_up = product(p + "experts.gate_up_proj", e, x[tokens]) + gate_up_b[e]
        else:
            gate_up_w, down_w = expert(w, p, e)  # [d, 2·inter], [inter, d]
            gate_up = x[tokens] @ gate_up_w + gate_up_b[e]
        gate = np.minimum(gate_up[:, ::2], limit)  # gate and up are interleaved columns
        up = np.clip(gate_up[:, 1::2], -limit, limit)
        with np.errstate(over="ignore"):  # exp overflows to inf for very negative gates: glu → 0
            glu = gate / (np.float32(1.0) + np.exp(-alpha * gate))  # gate·σ(α·gate)
        act = (up + 1) * glu
        if product is not None:  # [t, inter] @ [inter, d]
            y = product(p + "experts.down_proj", e, act) + down_b[e]
        else:
            y = act @ down_w + down_b[e]
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
    tables = {kind: r.cos_sin(start + n, start) for kind, r in rots.items()}
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
    gguf=(GGUF,),
)
