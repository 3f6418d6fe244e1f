"""The forward pass shared by the Llama-style decoders (Llama, Mistral, Qwen, Gemma, Phi-3).

Each layer, pre-norm with RMSNorm:
  X    = input_layernorm(h)
  Q, K, V = X·W_q (+ b_q), X·W_k (+ b_k), X·W_v (+ b_v)      K, V have kv_heads heads
  Q_norm, K_norm = RMSNorm over each head's vector            (Qwen3, Gemma 3)
  Q_rot, K_rot   = rotary embedding (position enters here)
  W = softmax(cap(Q_rot·K_rotᵀ · scale), causal + sliding-window mask);  Y = W·V;  O = Y_concat·W_o
  h = h + O                       (Gemma 2/3: h + post_attention_layernorm(O))
  h = h + MLP(post_attention_layernorm(h))    MLP(x) = down(act(gate(x)) ⊙ up(x))
                                  (Gemma 2/3: pre_ and post_feedforward_layernorm around it)
then the final norm and the LM head (tied to the embeddings when the config says so).

A family file describes its differences as a `Spec` per model_type (with the args dataclass
that reads and checks its config) and its GGUF tables; this module runs them. Weights are
torch Linear [out, in]; they are read one layer at a time.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from attn_cli import long
from attn_cli.attention import (
    AttentionParams,
    QKStage,
    causal_mask,
    linear,
    sliding_window_mask,
    softcap,
)
from attn_cli.blas import matmul
from attn_cli.errors import InputError
from attn_cli.kvcache import CachedLayers, KVCache, mask_rows
from attn_cli.models import rope
from attn_cli.models.args import (
    COUNT,
    FLAG,
    FRACTION,
    OBJECT,
    POSITIVE,
    POSITIVE_INT,
    TEXT,
    TEXTS,
    Args,
    arg,
    source_of,
)
from attn_cli.models.layers import activation, rms_norm
from attn_cli.models.registry import (
    Config,
    Dims,
    Family,
    GGUFSources,
    NormPlacement,
    WeightSource,
    Wording,
    families,
)
from attn_cli.models.weights import expect_layers, expect_shape, matmul_rows_t
from attn_cli.records import LayerRecord, multi_head_attention

ANCHOR = "embed_tokens.weight"
FULL, SLIDING = "full_attention", "sliding_attention"


@dataclass(frozen=True, kw_only=True)
class DecoderArgs(Args):
    """What the shared forward pass reads of a Llama-style config: transformers' LlamaConfig
    defaults. A family's args subclass adds its own keys and changes defaults."""

    hidden_size: int = arg(POSITIVE_INT)
    intermediate_size: int = arg(POSITIVE_INT)
    num_hidden_layers: int = arg(POSITIVE_INT)
    num_attention_heads: int = arg(POSITIVE_INT)
    vocab_size: int = arg(POSITIVE_INT)
    num_key_value_heads: int | None = arg(POSITIVE_INT, None)  # None: one per query head
    head_dim: int | None = arg(POSITIVE_INT, None)  # None: hidden_size // num_attention_heads
    rms_norm_eps: float = arg(POSITIVE, 1e-6)
    hidden_act: str | None = arg(TEXT, "silu", nullable=True)  # null: the Spec's default_act
    attention_bias: bool | None = arg(FLAG, False, nullable=True)
    mlp_bias: bool | None = arg(FLAG, False, nullable=True)
    tie_word_embeddings: bool | None = arg(FLAG, False, nullable=True)
    use_bidirectional_attention: bool | None = arg(FLAG, False, nullable=True)
    max_position_embeddings: int | None = arg(POSITIVE_INT, None)
    original_max_position_embeddings: int | None = arg(POSITIVE_INT, None)
    sliding_window: int | None = arg(POSITIVE_INT, None)
    layer_types: list[str] | None = arg(TEXTS, None)
    rope_theta: float | None = arg(POSITIVE, rope.DEFAULT_THETA, nullable=True)
    rope_scaling: Mapping[str, Any] | None = arg(OBJECT, None)
    rope_parameters: Mapping[str, Any] | None = arg(OBJECT, None)
    partial_rotary_factor: float | None = arg(FRACTION, None)

    @property
    def kv_heads(self) -> int:
        return self.num_key_value_heads or self.num_attention_heads

    @property
    def head_size(self) -> int:
        return self.head_dim or self.hidden_size // self.num_attention_heads

    def validate(self, source: str) -> None:
        if self.head_size < 1:
            raise InputError(
                f"{source}: hidden_size {self.hidden_size} gives no head_dim for "
                f"{self.num_attention_heads} heads (num_attention_heads is larger)"
            )
        if self.num_attention_heads % self.kv_heads:
            raise InputError(
                f"{source}: num_attention_heads {self.num_attention_heads} is not a multiple "
                f"of num_key_value_heads {self.kv_heads}"
            )


@dataclass(frozen=True, kw_only=True)
class SlidingArgs(DecoderArgs):
    """Qwen2/Qwen3: a window over the layers from max_window_layers on (use_sliding_window)."""

    use_sliding_window: bool | None = arg(FLAG, False, nullable=True)
    max_window_layers: int = arg(COUNT, 28)


@dataclass(frozen=True)
class Spec:
    """How one model_type differs from Llama."""

    args: type[DecoderArgs] = DecoderArgs  # its config keys, their defaults and checks
    norm_offset: float = 0.0  # Gemma's RMSNorm multiplies by (1 + w)
    embed_scale: bool = False  # Gemma: embeddings × √hidden_size
    qkv_bias: bool | None = None  # True: always (Qwen2); None: config attention_bias
    o_bias: bool | None = None  # False: never (Qwen2); None: config attention_bias
    mlp_bias: bool = False  # the config's mlp_bias switches MLP biases on (Llama)
    qk_norm: bool = False  # Qwen3, Gemma 3: RMSNorm on each head's q and k before RoPE
    fused: bool = False  # Phi-3: one qkv_proj and one gate_up_proj
    sandwich: bool = False  # Gemma 2/3: norms after attention and around the MLP
    # OLMo 2: no input norm; RMSNorm on the attention and MLP outputs before each residual sum
    # (post_attention_layernorm, post_feedforward_layernorm)
    post_norm: bool = False
    qk_norm_full: bool = False  # OLMo 2: q/k RMSNorm over all heads at once (H·head_dim)
    # SmolLM3: per layer, whether it applies the rotary embedding (None: every layer does);
    # a layer without one (NoPE) has no position encoding at all, only the causal mask
    rope_layers: Callable[[Any], list[bool]] | None = None
    act_keys: tuple[str, ...] = ("hidden_act",)
    default_act: str = "silu"
    gelu_means_tanh: bool = False  # Gemma 1: transformers reads a legacy "gelu" as tanh-GELU
    scale_key: str | None = None  # Gemma 2/3: scale = query_pre_attn_scalar^-½
    # Gemma 2: attn_logit_softcapping (Gemma 3 ignores it, as transformers does)
    attn_softcap: bool = False
    final_softcap: bool = False  # Gemma 2/3: final_logit_softcapping
    # Which layers slide ('sliding_attention') and how wide the window is (None: no layer does).
    layer_types: Callable[[Any], list[str]] = lambda args: [FULL] * args.num_hidden_layers
    window: Callable[[Any], int | None] = lambda args: None
    local_theta_key: str | None = None  # Gemma 3's rope_local_base_freq (hub-style configs)
    # A mixture-of-experts MLP instead of the dense one: mlp(w, layer, x, args, record) -> the
    # MLP output; it may add stages to the layer's record (the router). mlp_check(w, layer,
    # args) checks its tensors' shapes. None: the dense MLP.
    mlp: Callable[..., np.ndarray] | None = None
    mlp_check: Callable[[WeightSource, int, Any], None] | None = None


# llama.cpp's names of a Llama-style layer's tensors (gguf-py's TensorNameMap): HF name under
# model.layers.{i}. -> GGUF name under blk.{i}. q, k and v are split or fused by gguf/to_hf.py.
GGUF_LAYER_TENSORS: dict[str, GGUFSources] = {
    "input_layernorm.weight": "attn_norm.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "self_attn.o_proj.weight": "attn_output.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
}
GGUF_OPTIONAL_TENSORS = {"self_attn.o_proj.bias": "attn_output.bias"}
GGUF_QK_NORMS: dict[str, GGUFSources] = {
    "self_attn.q_norm.weight": "attn_q_norm.weight",
    "self_attn.k_norm.weight": "attn_k_norm.weight",
}


def dims(args: DecoderArgs) -> Dims:
    return Dims(
        args.num_hidden_layers,
        args.num_attention_heads,
        args.kv_heads,
        args.hidden_size,
        args.head_size,
        args.vocab_size,
        None,
    )


def window(spec: Spec, args: DecoderArgs) -> int | None:
    """The sliding window width, or None when no layer slides."""
    w = spec.window(args)
    return None if w is None else int(w)


def all_layers(kind: str) -> Callable[[Any], list[str]]:
    return lambda args: [kind] * args.num_hidden_layers


def config_window(args: DecoderArgs) -> int | None:
    return args.sliding_window


def layer_kinds(spec: Spec, args: DecoderArgs) -> list[str]:
    """'full_attention' or 'sliding_attention' for each layer."""
    if window(spec, args) is None:
        return [FULL] * args.num_hidden_layers
    return spec.layer_types(args)


def rope_layers(spec: Spec, args: DecoderArgs) -> list[bool]:
    """Whether each layer applies the rotary embedding (False: a NoPE layer)."""
    if spec.rope_layers is None:
        return [True] * args.num_hidden_layers
    return spec.rope_layers(args)


def tied(args: DecoderArgs, w: WeightSource) -> bool:
    return bool(args.tie_word_embeddings) or "lm_head.weight" not in w


def activation_name(spec: Spec, args: DecoderArgs) -> str:
    name = next(
        (str(getattr(args, key)) for key in spec.act_keys if getattr(args, key)), spec.default_act
    )
    return "gelu_pytorch_tanh" if spec.gelu_means_tanh and name == "gelu" else name


def scale(spec: Spec, args: DecoderArgs) -> float | None:
    """The score scale: 1/√head_dim (None), or Gemma's query_pre_attn_scalar^-½."""
    if spec.scale_key is None or getattr(args, spec.scale_key) is None:
        return None
    return float(getattr(args, spec.scale_key)) ** -0.5


def rotaries(spec: Spec, args: DecoderArgs, source: str) -> dict[str, rope.Rotary]:
    theta = type(args).default("rope_theta")
    return {
        kind: rope.rotary(
            args.as_config(), args.head_size, kind, theta, spec.local_theta_key, source=source
        )
        for kind in sorted(set(layer_kinds(spec, args)))
    }


def check(spec: Spec, w: WeightSource, args: DecoderArgs, source: str) -> None:
    """Config options this code runs, and every tensor's shape against config.json."""
    d, heads, kv, hd = args.hidden_size, args.num_attention_heads, args.kv_heads, args.head_size
    layers, inter, vocab = args.num_hidden_layers, args.intermediate_size, args.vocab_size
    if args.use_bidirectional_attention:
        raise InputError(f"{source}: use_bidirectional_attention is not supported (decoders only)")
    activation(activation_name(spec, args))  # refuses unknown activations by name
    expect_layers(w, layers, f"{source}: num_hidden_layers {layers}")
    kinds = layer_kinds(spec, args)
    if len(kinds) != layers or any(k not in (FULL, SLIDING) for k in kinds):
        raise InputError(
            f"{source}: layer_types must list {layers} entries of {FULL!r} or {SLIDING!r}"
        )
    rotaries(spec, args, source)  # refuses unsupported rope types and bad rope values by name
    expect_shape(w, ANCHOR, (vocab, d))
    bias = _biases(spec, args)
    for i in range(layers):
        p = f"layers.{i}."
        if not spec.post_norm:
            expect_shape(w, p + "input_layernorm.weight", (d,))
        expect_shape(w, p + "post_attention_layernorm.weight", (d,))
        if spec.sandwich:
            expect_shape(w, p + "pre_feedforward_layernorm.weight", (d,))
            expect_shape(w, p + "post_feedforward_layernorm.weight", (d,))
        att = p + "self_attn."
        if spec.fused:
            expect_shape(w, att + "qkv_proj.weight", ((heads + 2 * kv) * hd, d))
            expect_shape(w, p + "mlp.gate_up_proj.weight", (2 * inter, d))
        else:
            for name, out in (("q", heads * hd), ("k", kv * hd), ("v", kv * hd)):
                expect_shape(w, att + f"{name}_proj.weight", (out, d))
                if bias["qkv"]:
                    expect_shape(w, att + f"{name}_proj.bias", (out,))
        expect_shape(w, att + "o_proj.weight", (d, heads * hd))
        if bias["o"]:
            expect_shape(w, att + "o_proj.bias", (d,))
        if spec.mlp_check is not None:
            spec.mlp_check(w, i, args)
        else:
            if not spec.fused:
                expect_shape(w, p + "mlp.gate_proj.weight", (inter, d))
                expect_shape(w, p + "mlp.up_proj.weight", (inter, d))
            expect_shape(w, p + "mlp.down_proj.weight", (d, inter))
        if spec.post_norm:
            expect_shape(w, p + "post_feedforward_layernorm.weight", (d,))
        if spec.qk_norm:
            full = spec.qk_norm_full
            expect_shape(w, att + "q_norm.weight", (heads * hd if full else hd,))
            expect_shape(w, att + "k_norm.weight", (kv * hd if full else hd,))
    expect_shape(w, "norm.weight", (d,))
    if not tied(args, w):
        expect_shape(w, "lm_head.weight", (vocab, d))


def _biases(spec: Spec, args: DecoderArgs) -> dict[str, bool]:
    attention_bias = bool(args.attention_bias)
    return {
        "qkv": attention_bias if spec.qkv_bias is None else spec.qkv_bias,
        "o": attention_bias if spec.o_bias is None else spec.o_bias,
        "mlp": spec.mlp_bias and bool(args.mlp_bias),
    }


def embed(spec: Spec, w: WeightSource, ids: list[int], args: DecoderArgs) -> np.ndarray:
    """Token embeddings (Gemma: × √hidden_size, the scale rounded to float32 as transformers
    does for a float32 model)."""
    x = w.rows(ANCHOR, ids)
    if spec.embed_scale:
        x = x * np.float32(math.sqrt(args.hidden_size))
    return x


def _norm(spec: Spec, w: WeightSource, name: str, x: np.ndarray, eps: float) -> np.ndarray:
    return rms_norm(x, w[name], eps, spec.norm_offset)


def _linear(w: WeightSource, name: str, bias: bool) -> tuple[np.ndarray, np.ndarray | None]:
    """A torch Linear's weight [out, in] as [in, out], and its bias if the layer has one."""
    return w[name + ".weight"].T, (w[name + ".bias"] if bias else None)


def qk_hook(
    spec: Spec,
    w: WeightSource,
    prefix: str,
    eps: float,
    rot: rope.Rotary | None,
    cos: np.ndarray,
    sin: np.ndarray,
) -> Callable[[np.ndarray, np.ndarray], list[QKStage]]:
    """q/k norms (if the model has them), then the rotary embedding (unless `rot` is None: a
    NoPE layer): stages 'norm' and 'rot'."""

    def norm(x: np.ndarray, name: str) -> np.ndarray:
        g = w[prefix + name]
        if not spec.qk_norm_full:
            return rms_norm(x, g, eps, spec.norm_offset)
        heads, n, hd = x.shape  # one RMSNorm over every head's numbers of a token
        flat = x.transpose(1, 0, 2).reshape(n, heads * hd)
        flat = rms_norm(flat, g, eps, spec.norm_offset)
        return flat.reshape(n, heads, hd).transpose(1, 0, 2)

    def hook(q: np.ndarray, k: np.ndarray) -> list[QKStage]:
        stages: list[QKStage] = []
        if spec.qk_norm:
            q, k = norm(q, "q_norm.weight"), norm(k, "k_norm.weight")
            stages.append(("norm", q, k))
        if rot is not None:
            stages.append(("rot", rot.apply(q, cos, sin), rot.apply(k, cos, sin)))
        return stages

    return hook


def layers(
    spec: Spec,
    w: WeightSource,
    x: np.ndarray,
    args: DecoderArgs,
    source: str,
    cache: KVCache | None = None,
) -> Iterator[LayerRecord]:
    """The layers over tokens x; with a `cache`, x are the tokens after those it holds (their
    keys and values are read from it, the new ones appended): the new rows only."""
    n = len(x)
    heads, kv, hd = args.num_attention_heads, args.kv_heads, args.head_size
    eps = args.rms_norm_eps
    act = activation(activation_name(spec, args))
    bias = _biases(spec, args)
    kinds = layer_kinds(spec, args)
    with_rope = rope_layers(spec, args)
    rots = rotaries(spec, args, source)
    width = window(spec, args)
    plan = long.current() if cache is None else None  # long: blockwise, no n × n masks
    masks = {}
    if cache is None:
        tables = {kind: r.cos_sin(n) for kind, r in rots.items()}
        if plan is None:
            masks[FULL] = causal_mask(n)
            if width is not None:
                masks[SLIDING] = sliding_window_mask(n, width)
    else:  # positions start … start + n − 1 of a pass over every token so far
        start = cache.length
        tables = {k: r.cos_sin(start + n, start) for k, r in rots.items()}
        masks = {FULL: mask_rows(start, start + n)}
        if width is not None:
            masks[SLIDING] = mask_rows(start, start + n, width)
    s = scale(spec, args)
    cap = getattr(args, "attn_logit_softcapping", None) if spec.attn_softcap else None
    x = x.astype(np.float32, copy=False)
    for i in range(args.num_hidden_layers):
        p = f"layers.{i}."
        a = p + "self_attn."
        kind = kinds[i]
        # X: what W_q, W_k, W_v multiply
        a_in = x if spec.post_norm else _norm(spec, w, p + "input_layernorm.weight", x, eps)
        if spec.fused:
            qkv = w[a + "qkv_proj.weight"].T  # [d, (H + 2·KV)·hd]
            wq, wk, wv = np.split(qkv, [heads * hd, (heads + kv) * hd], axis=1)
            bq = bk = bv = None
        else:
            (wq, bq), (wk, bk), (wv, bv) = (
                _linear(w, a + f"{name}_proj", bias["qkv"]) for name in ("q", "k", "v")
            )
        wo, bo = _linear(w, a + "o_proj", bias["o"])
        params = AttentionParams(wq, wk, wv, heads, kv, bq, bk, bv, wo, bo)
        cos, sin = tables[kind]
        hook = qk_hook(spec, w, a, eps, rots[kind] if with_rope[i] else None, cos, sin)
        c = None if cap is None else float(cap)
        if plan is not None:
            slide = width if kind == SLIDING else None
            record = long.attention(plan, i, a_in, params, slide, hook, s, c, x)
        elif cache is None:
            record = multi_head_attention(a_in, params, masks[kind], hook, s, c, resid=x)
        else:
            record = cache.attention(i, a_in, params, masks[kind], hook, s, c, resid=x)
        record.facts["rope"] = with_rope[i]
        assert record.output is not None
        o = record.output
        if spec.sandwich or spec.post_norm:
            o = _norm(spec, w, p + "post_attention_layernorm.weight", o, eps)
        h = x + o  # residual
        if spec.post_norm:
            m = h
        else:
            mlp_norm = "pre_feedforward_layernorm" if spec.sandwich else "post_attention_layernorm"
            m = _norm(spec, w, p + mlp_norm + ".weight", h, eps)
        if spec.mlp is None:
            ff = _mlp(spec, w, p + "mlp.", m, act, bias["mlp"])
        else:
            ff = spec.mlp(w, i, m, args, record)
        if spec.sandwich or spec.post_norm:
            ff = _norm(spec, w, p + "post_feedforward_layernorm.weight", ff, eps)
        out = h + ff
        yield LayerRecord([record], out)
        x = out


def _mlp(
    spec: Spec,
    w: WeightSource,
    p: str,
    x: np.ndarray,
    act: Callable[[np.ndarray], np.ndarray],
    bias: bool,
) -> np.ndarray:
    """down(act(gate(x)) ⊙ up(x)): SwiGLU with SiLU, GeGLU with tanh-GELU."""
    if spec.fused:
        gate_up = matmul(x, w[p + "gate_up_proj.weight"].T)  # [n, d] @ [d, 2·inter]
        gate, up = np.split(gate_up, 2, axis=-1)
    else:
        gate = linear(x, *_linear(w, p + "gate_proj", bias))  # [n, d] @ [d, inter]
        up = linear(x, *_linear(w, p + "up_proj", bias))
    hidden = act(gate) * up
    return linear(hidden, *_linear(w, p + "down_proj", bias))  # [n, inter] @ [inter, d]


def final(spec: Spec, w: WeightSource, h: np.ndarray, args: DecoderArgs) -> np.ndarray:
    return _norm(spec, w, "norm.weight", h, args.rms_norm_eps)


def logits(spec: Spec, w: WeightSource, h: np.ndarray, args: DecoderArgs) -> np.ndarray:
    """Next-token logits (n, vocab): final hidden states times the LM head, read in row blocks
    (tied: the token embeddings); Gemma 2/3 soft-cap them with final_logit_softcapping."""
    head = ANCHOR if tied(args, w) else "lm_head.weight"
    out = matmul_rows_t(w, head, h.astype(np.float32, copy=False))
    cap = getattr(args, "final_logit_softcapping", None) if spec.final_softcap else None
    return out if cap is None else softcap(out, float(cap))


def spec_for(specs: Mapping[str, Spec], cfg: Config) -> Spec:
    kind = str(cfg.get("model_type"))
    if kind not in specs:
        raise InputError(f"model_type {kind!r} is not one of {', '.join(specs)}")
    return specs[kind]


# Every decoder model_type's Spec, filled by the family modules as they are imported (bind),
# and the config rewrites some model_types need first.
ALL_SPECS: dict[str, Spec] = {}
ADAPTERS: dict[str, Callable[[Config], Config]] = {}


def adapted(cfg: Config) -> Config:
    """The config as the forward pass reads it (see bind's `adapt`)."""
    adapt = ADAPTERS.get(str(cfg.get("model_type")))
    return cfg if adapt is None else adapt(cfg)


def parsed(specs: Mapping[str, Spec], cfg: Config) -> tuple[Spec, DecoderArgs, str]:
    """The config as the forward pass reads it: its Spec, its checked args, and what messages
    call it (see bind's `adapt`)."""
    source = source_of(cfg)
    cfg = adapted(cfg)
    spec = spec_for(specs, cfg)
    return spec, spec.args.parse(cfg, source), source


def describe(cfg: Config) -> dict[str, Any]:
    """What a decoder's config means for its attention, for the trace config and the step text:
    grouped heads, norms, rotary settings per layer type, which layers slide, scales, caps."""

    families()  # imports every family module, so ALL_SPECS is complete
    spec, args, source = parsed(ALL_SPECS, cfg)
    d, heads, kv, hd = args.hidden_size, args.num_attention_heads, args.kv_heads, args.head_size
    act = activation_name(spec, args)
    s = scale(spec, args)
    attn_cap = getattr(args, "attn_logit_softcapping", None) if spec.attn_softcap else None
    final_cap = getattr(args, "final_logit_softcapping", None) if spec.final_softcap else None
    rope_info = {}
    for kind, r in rotaries(spec, args, source).items():
        p = r.params
        info = {
            "type": p.get("rope_type", "default"),
            "theta": float(p["rope_theta"]),
            "rotary_dim": r.rotary_dim,
        }
        for key in (
            "factor",
            "low_freq_factor",
            "high_freq_factor",
            "original_max_position_embeddings",
            "beta_fast",
            "beta_slow",
        ):
            if p.get(key) is not None and info["type"] != "default":
                info[key] = p[key]
        scaling = rope.inverse_frequencies(p, r.head_dim)[1]
        if scaling != 1.0:  # yarn, longrope: what cos and sin are multiplied by
            info["attention_factor"] = scaling
        rope_info[kind] = info
    # only the models that have them carry these keys (older traces' configs stay as they were)
    own: dict[str, Any] = {}
    if spec.qk_norm_full:
        own["qk_norm_width"] = "all heads at once (H·head_dim)"
    if spec.post_norm:
        own["norm_placement"] = "after attention and after the MLP, before each residual sum"
    if spec.rope_layers is not None:
        own["nope_layers"] = [i for i, r in enumerate(rope_layers(spec, args)) if not r]
    return {
        **own,
        "kv_heads": kv,
        "query_heads_per_kv_head": heads // kv,
        "head_dim": hd,
        "norm": "RMSNorm × (1 + w)" if spec.norm_offset else "RMSNorm × w",
        "mlp": f"{'GeGLU' if 'gelu' in act else 'SwiGLU'} ({act})",
        "qk_norm": spec.qk_norm,
        "rope": rope_info,
        "layer_types": layer_kinds(spec, args),
        "sliding_window": window(spec, args),
        "score_scale": (1.0 / math.sqrt(hd)) if s is None else s,
        "query_pre_attn_scalar": getattr(args, spec.scale_key) if spec.scale_key else None,
        "attn_logit_softcapping": None if attn_cap is None else float(attn_cap),
        "final_logit_softcapping": None if final_cap is None else float(final_cap),
        "embed_scale": float(np.float32(math.sqrt(d))) if spec.embed_scale else None,
        "tied_embeddings": bool(args.tie_word_embeddings),
    }


def bind(
    specs: Mapping[str, Spec], adapt: Mapping[str, Callable[[Config], Config]] | None = None
) -> dict[str, Any]:
    """The Family callables for a set of model_types, each dispatching on config model_type.
    `adapt` maps a model_type to a function rewriting its config first (a multimodal
    checkpoint's text_config)."""
    ALL_SPECS.update(specs)
    ADAPTERS.update(adapt or {})

    def run_check(w: WeightSource, cfg: Config) -> None:
        spec, args, source = parsed(specs, cfg)
        check(spec, w, args, source)

    def run_embed(w: WeightSource, ids: list[int], cfg: Config) -> np.ndarray:
        spec, args, _ = parsed(specs, cfg)
        return embed(spec, w, ids, args)

    def run_layers(
        w: WeightSource, x: np.ndarray, cfg: Config, cache: KVCache | None = None
    ) -> Iterator[LayerRecord]:
        spec, args, source = parsed(specs, cfg)
        return layers(spec, w, x, args, source, cache)

    def run_final(w: WeightSource, h: np.ndarray, cfg: Config) -> np.ndarray:
        spec, args, _ = parsed(specs, cfg)
        return final(spec, w, h, args)

    def run_logits(w: WeightSource, h: np.ndarray, cfg: Config) -> np.ndarray:
        spec, args, _ = parsed(specs, cfg)
        return logits(spec, w, h, args)

    return {
        "dims": lambda cfg: dims(parsed(specs, cfg)[1]),
        "check": run_check,
        "embed": run_embed,
        "layers": CachedLayers(run_layers),
        "final": run_final,
        "logits": run_logits,
        "describe": describe,
    }


def decoder_family(
    name: str,
    specs: Mapping[str, Spec],
    mask: str,
    multiplies: str = "W_q, W_k and W_v",
    norm: str | None = "RMSNorm (input_layernorm)",  # None: no input norm (OLMo 2)
    model_types: tuple[str, ...] | None = None,
    **extra: Any,
) -> Family:
    """The Family of a pre-norm decoder over this forward pass: its specs bound, its words.
    Sandwich-normed when its specs say so (Gemma 2/3); `extra` are further Family fields
    (attn_out_norm, gguf)."""
    scaled = all(spec.embed_scale for spec in specs.values())

    def x_description(i: int) -> str:
        source = "the token embeddings" if i == 0 else f"layer {i - 1}'s output"
        if i == 0 and scaled:
            source = "the scaled token embeddings"
        if norm is None:
            return (
                f" ({source}), not normalised first: what {multiplies} multiply (this model "
                "normalises each sublayer's output instead)."
            )
        return f" ({source}) after the layer's {norm}: what {multiplies} multiply."

    bound = bind(specs, **{k: extra.pop(k) for k in ("adapt",) if k in extra})
    # OLMo 2 normalises each sublayer's output before the residual sum and has no input norm
    placement: NormPlacement = "pre"
    if any(spec.sandwich for spec in specs.values()):
        placement = "sandwich"
    elif any(spec.post_norm for spec in specs.values()):
        placement = "post"
    return Family(
        name=name,
        model_types=model_types or tuple(specs),
        anchor=ANCHOR,
        causal=True,
        norm=placement,
        linear_values=True,
        sentence_pairs=False,
        **bound,
        **extra,
        wording=Wording(
            x_formula="hidden states" if norm is None else "input_layernorm(hidden states)",
            x_description=x_description,
            mask=mask,
            final="The model's output: one vector per token after every layer and the final RMSNorm.",
        ),
    )
