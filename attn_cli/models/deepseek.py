"""DeepSeek-V2 and DeepSeek-V3 (Kimi K2 runs DeepSeek-V3's code): multi-head latent attention
and a mixture of experts with shared experts.

Each layer, pre-norm with RMSNorm (× w):
  X = input_layernorm(h)
  c_q  = q_a_layernorm(X·W_qa)                      the query latent (q_lora_rank numbers), or
                                                    none: Q = X·W_q when q_lora_rank is null
  Q    = c_q·W_qb, per head [q_nope (qk_nope_head_dim) ‖ q_pe (qk_rope_head_dim)]
  [c ‖ k_pe] = X·W_kva                              kv_a_proj_with_mqa
  c_kv = kv_a_layernorm(c)                          the key/value latent (kv_lora_rank numbers)
  K    = [c_kv·W_kbʰ ‖ k_pe]                        per head: keys decompressed from the latent,
                                                    and one rotary key k_pe shared by all heads
  V    = c_kv·W_vbʰ                                 (W_kb, W_vb: the rows of kv_b_proj)
  Q_rot, K_rot = the rotary embedding on the q_pe / k_pe parts only
  W = softmax(Q_rot·K_rotᵀ · scale, causal mask);  Y = W·V;  h = h + Y_concat·W_o
  scale = 1/√(qk_nope + qk_rope), × yarn_mscale(factor, mscale_all_dim)² under YaRN
  h = h + MLP(post_attention_layernorm(h)): dense SwiGLU in the first first_k_dense_replace
      layers (and, as DeepSeek's own code has it, in layers not a multiple of moe_layer_freq:
      1 in every release, transformers does not read it), then shared experts + routed
      experts (each token's top-k experts, weighted):
      V2: softmax scores, top-k over all experts ("greedy") or within the topk_group groups
          whose best expert scores highest ("group_limited_greedy");
      V3: sigmoid scores; the choice adds e_score_correction_bias and keeps the topk_group
          groups with the largest sum of their two best (the weights use the scores without it),
          normalised when norm_topk_prob;
      both × routed_scaling_factor.
The rotary embedding pairs neighbouring dimensions (2i, 2i + 1): V2 rotates them in place
(complex multiplication), V3 (rope_interleave, its default) gathers the even then the odd
dimensions and rotates halves, as transformers does.

Checkpoints: as the hub and transformers' save_pretrained write DeepseekV2/V3ForCausalLM (one
tensor per expert and matrix: mlp.experts.{e}.gate_proj …). GGUF: llama.cpp's "deepseek2" architecture, whose
converter splits kv_b_proj into attn_k_b (stored transposed) and attn_v_b per head; they are
joined back head by head (files from before the split have attn_kv_b). The gating function
says V2 (softmax) or V3 (sigmoid); files without expert_group_count route without groups, as
llama.cpp then does. FP8 hub checkpoints (weight_scale_inv) are refused by name.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from attn_cli import attention as att
from attn_cli.errors import InputError
from attn_cli.models import rope
from attn_cli.models._decoder import (
    ANCHOR,
    FULL,
    DecoderArgs,
    Spec,
    decoder_family,
    parsed,
    tied,
)
from attn_cli.models.args import COUNT, FLAG, NUMBER, POSITIVE, POSITIVE_INT, TEXT, arg
from attn_cli.models.layers import activation, rms_norm
from attn_cli.models.registry import ABSENT, Config, Dims, GGUFTable, WeightSource
from attn_cli.models.weights import expect_layers, expect_shape
from attn_cli.narrate import superscript
from attn_cli.records import (
    KEY,
    KV_HEADS,
    QUERY,
    QUERY_HEADS,
    TOKENS,
    AttentionRecord,
    LayerRecord,
)
from attn_cli.records import Dims as Cols

if TYPE_CHECKING:
    from attn_cli.narrate import StageContext

V2, V3, KIMI = "deepseek_v2", "deepseek_v3", "kimi_k2"
Act = Callable[[np.ndarray], np.ndarray]
LATENT_EPS = 1e-6  # q_a_layernorm and kv_a_layernorm keep RMSNorm's default eps
TOPK_METHODS = ("greedy", "group_limited_greedy")  # V2's; V3 always routes as "noaux_tc"


@dataclass(frozen=True, kw_only=True)
class DeepseekV2Args(DecoderArgs):
    """transformers' DeepseekV2Config defaults (DeepSeek-V2-Lite's geometry); moe_layer_freq
    is DeepSeek's own config key (transformers does not read it). As in transformers, V2 does
    not read norm_topk_prob (every released V2 checkpoint has it false)."""

    vocab_size: int = arg(POSITIVE_INT, 102_400)
    hidden_size: int = arg(POSITIVE_INT, 4096)
    intermediate_size: int = arg(POSITIVE_INT, 11_008)
    num_hidden_layers: int = arg(POSITIVE_INT, 32)
    num_attention_heads: int = arg(POSITIVE_INT, 32)
    max_position_embeddings: int | None = arg(POSITIVE_INT, 2048, nullable=True)
    first_k_dense_replace: int = arg(COUNT, 0)
    kv_lora_rank: int = arg(POSITIVE_INT, 512)
    q_lora_rank: int | None = arg(POSITIVE_INT, 1536, nullable=True)
    n_group: int | None = arg(POSITIVE_INT, None)
    n_routed_experts: int | None = arg(POSITIVE_INT, 64, nullable=True)
    n_shared_experts: int | None = arg(COUNT, 2, nullable=True)
    qk_nope_head_dim: int = arg(POSITIVE_INT, 128)
    qk_rope_head_dim: int = arg(POSITIVE_INT, 64)
    routed_scaling_factor: float = arg(POSITIVE, 1.0)
    topk_group: int | None = arg(POSITIVE_INT, None)
    topk_method: str = arg(TEXT, "greedy")
    norm_topk_prob: bool = arg(FLAG, False)
    v_head_dim: int = arg(POSITIVE_INT, 128)
    num_experts_per_tok: int | None = arg(POSITIVE_INT, None)
    moe_intermediate_size: int = arg(POSITIVE_INT, 1407)
    moe_layer_freq: int = arg(POSITIVE_INT, 1)

    @property
    def qk_head_dim(self) -> int:
        return self.qk_nope_head_dim + self.qk_rope_head_dim

    @property
    def sigmoid(self) -> bool:
        """V3's routing: sigmoid scores with a bias correction (V2: softmax)."""
        return False

    @property
    def mlp_biases(self) -> bool:
        """The dense and shared MLPs have biases (V2's mlp_bias; V3 has none)."""
        return not self.sigmoid and bool(self.mlp_bias)

    @property
    def act(self) -> str:
        return str(self.hidden_act or "silu")

    def moe_layers(self) -> list[bool]:
        """Per layer, whether its MLP is the mixture of experts (DeepSeek's rule; transformers
        reads no moe_layer_freq, and every released checkpoint has 1)."""
        return [
            self.n_routed_experts is not None
            and i >= self.first_k_dense_replace
            and i % self.moe_layer_freq == 0
            for i in range(self.num_hidden_layers)
        ]

    def validate(self, source: str) -> None:
        super().validate(source)
        if self.kv_heads != self.num_attention_heads:
            raise InputError(
                f"{source}: num_key_value_heads {self.kv_heads} must equal num_attention_heads "
                f"{self.num_attention_heads} (latent attention decompresses a key and a value "
                "for every head)"
            )
        if self.qk_rope_head_dim % 2:
            raise InputError(
                f"{source}: qk_rope_head_dim must be even (dimensions rotate in pairs), got "
                f"{self.qk_rope_head_dim}"
            )
        if not self.sigmoid and self.topk_method not in TOPK_METHODS:
            raise InputError(
                f"{source}: topk_method {self.topk_method!r} is not supported (supported: "
                f"{', '.join(TOPK_METHODS)})"
            )
        # the first MoE layer, found without a list per layer (num_hidden_layers is not
        # checked against the checkpoint yet)
        freq = self.moe_layer_freq
        if self.n_routed_experts is None or (
            -(-self.first_k_dense_replace // freq) * freq >= self.num_hidden_layers
        ):
            return
        experts, top_k = self.n_routed_experts, self.num_experts_per_tok
        if top_k is None or top_k > experts:
            raise InputError(
                f"{source}: num_experts_per_tok {top_k} must be a number of experts up to "
                f"n_routed_experts {experts}"
            )
        if self.grouped:
            groups, used = self.n_group, self.topk_group
            if groups is None or used is None or experts % groups or used > groups:
                raise InputError(
                    f"{source}: group-limited routing needs n_group dividing n_routed_experts "
                    f"{experts} and topk_group up to n_group, got n_group {groups}, topk_group "
                    f"{used}"
                )
            if self.sigmoid and experts // groups < 2:
                raise InputError(
                    f"{source}: each of the n_group {groups} groups needs at least 2 of the "
                    f"{experts} experts (a group's score is the sum of its best two)"
                )
            if used * (experts // groups) < top_k:
                raise InputError(
                    f"{source}: topk_group {used} groups of {experts // groups} experts hold "
                    f"fewer than num_experts_per_tok {top_k}"
                )

    @property
    def grouped(self) -> bool:
        """Experts are chosen within the best groups (V2's group_limited_greedy; always in V3)."""
        return self.topk_method == "group_limited_greedy"


@dataclass(frozen=True, kw_only=True)
class DeepseekV3Args(DeepseekV2Args):
    """transformers' DeepseekV3Config defaults (DeepSeek-V3's geometry). Its routing is always
    sigmoid scores, bias-corrected choice within groups ("noaux_tc", whatever topk_method
    says)."""

    vocab_size: int = arg(POSITIVE_INT, 129_280)
    hidden_size: int = arg(POSITIVE_INT, 7168)
    intermediate_size: int = arg(POSITIVE_INT, 18_432)
    num_hidden_layers: int = arg(POSITIVE_INT, 61)
    num_attention_heads: int = arg(POSITIVE_INT, 128)
    num_key_value_heads: int | None = arg(POSITIVE_INT, 128, nullable=True)
    max_position_embeddings: int | None = arg(POSITIVE_INT, 4096, nullable=True)
    first_k_dense_replace: int = arg(COUNT, 3)
    n_group: int | None = arg(POSITIVE_INT, 8, nullable=True)
    n_routed_experts: int | None = arg(POSITIVE_INT, 256, nullable=True)
    n_shared_experts: int | None = arg(COUNT, 1, nullable=True)
    routed_scaling_factor: float = arg(POSITIVE, 2.5)
    topk_group: int | None = arg(POSITIVE_INT, 4, nullable=True)
    topk_method: str = arg(TEXT, "noaux_tc")
    norm_topk_prob: bool = arg(FLAG, True)
    num_experts_per_tok: int | None = arg(POSITIVE_INT, 8, nullable=True)
    moe_intermediate_size: int = arg(POSITIVE_INT, 2048)
    rope_interleave: bool = arg(FLAG, True)

    @property
    def sigmoid(self) -> bool:
        return True

    @property
    def grouped(self) -> bool:
        return True


SPECS = {V2: Spec(args=DeepseekV2Args), V3: Spec(args=DeepseekV3Args)}
SPECS[KIMI] = SPECS[V3]


def _args(cfg: Config) -> tuple[DeepseekV2Args, str]:
    _, args, source = parsed(SPECS, cfg)
    assert isinstance(args, DeepseekV2Args)
    return args, source


def rotary(args: DeepseekV2Args, source: str) -> rope.Rotary:
    """The rotary embedding of the qk_rope_head_dim dimensions (YaRN, linear … as configured)."""
    theta = type(args).default("rope_theta")
    return rope.rotary(args.as_config(), args.qk_rope_head_dim, FULL, theta, source=source)


def yarn_mscale(factor: float, mscale: float) -> float:
    return 1.0 if factor <= 1 else 0.1 * mscale * math.log(factor) + 1.0


def score_scale(args: DeepseekV2Args, rot: rope.Rotary) -> tuple[float, float]:
    """(the softmax scale, the mscale² it includes): 1/√qk_head_dim, and with a scaled rope and
    mscale_all_dim, × yarn_mscale(factor, mscale_all_dim)² (transformers' yarn_apply_mscale)."""
    scale = args.qk_head_dim**-0.5
    p = rot.params
    m_all = p.get("mscale_all_dim")
    if p.get("rope_type", "default") == "default" or not m_all:
        return scale, 1.0
    m = yarn_mscale(float(p["factor"]), float(m_all))
    return scale * m * m, m * m


def check(w: WeightSource, cfg: Config) -> None:
    """Config options this code runs, and every tensor's shape against config.json."""
    args, source = _args(cfg)
    activation(args.act)  # refuses unknown activations by name
    rot = rotary(args, source)
    if rot.params.get("rope_type") not in ("default", "linear", "yarn", "dynamic"):
        raise InputError(
            f"{source}: rope type {rot.params.get('rope_type')!r} is not supported for DeepSeek "
            "(supported: default, linear, yarn, dynamic)"
        )
    d, heads, vocab = args.hidden_size, args.num_attention_heads, args.vocab_size
    r, rope_dim, nope, v = (
        args.kv_lora_rank,
        args.qk_rope_head_dim,
        args.qk_nope_head_dim,
        args.v_head_dim,
    )
    bias = bool(args.attention_bias)
    if "layers.0.self_attn.kv_a_proj_with_mqa.weight_scale_inv" in w:
        raise InputError(
            f"{source}: this checkpoint stores its weights in FP8 blocks (weight_scale_inv), "
            "which are not read: convert it to bf16 first (DeepSeek's fp8_cast_bf16.py), or use "
            "a GGUF file"
        )
    expect_shape(w, ANCHOR, (vocab, d))
    expect_layers(
        w, args.num_hidden_layers, f"{source}: num_hidden_layers {args.num_hidden_layers}"
    )
    moe = args.moe_layers()
    for i in range(args.num_hidden_layers):
        p = f"layers.{i}."
        a = p + "self_attn."
        shapes: dict[str, tuple[int, ...]] = {
            p + "input_layernorm.weight": (d,),
            p + "post_attention_layernorm.weight": (d,),
            a + "kv_a_proj_with_mqa.weight": (r + rope_dim, d),
            a + "kv_a_layernorm.weight": (r,),
            a + "kv_b_proj.weight": (heads * (nope + v), r),
            a + "o_proj.weight": (d, heads * v),
        }
        if args.q_lora_rank is None:
            shapes[a + "q_proj.weight"] = (heads * args.qk_head_dim, d)
        else:
            shapes[a + "q_a_proj.weight"] = (args.q_lora_rank, d)
            shapes[a + "q_a_layernorm.weight"] = (args.q_lora_rank,)
            shapes[a + "q_b_proj.weight"] = (heads * args.qk_head_dim, args.q_lora_rank)
        if bias:
            shapes[a + "kv_a_proj_with_mqa.bias"] = (r + rope_dim,)
            shapes[a + "o_proj.bias"] = (d,)
            if args.q_lora_rank is not None:
                shapes[a + "q_a_proj.bias"] = (args.q_lora_rank,)
        m = p + "mlp."
        if moe[i]:
            shapes.update(_moe_shapes(w, m, args))
        else:
            shapes.update(_mlp_shapes(m, args.intermediate_size, d, args.mlp_biases))
        for name, shape in shapes.items():
            expect_shape(w, name, shape)
    expect_shape(w, "norm.weight", (d,))
    if not tied(args, w):
        expect_shape(w, "lm_head.weight", (vocab, d))


def _moe_shapes(w: WeightSource, m: str, args: DeepseekV2Args) -> dict[str, tuple[int, ...]]:
    d, inter = args.hidden_size, args.moe_intermediate_size
    experts = args.n_routed_experts
    assert experts is not None
    expect_shape(w, m + "gate.weight", (experts, d))  # the expert count, before the loop below
    shapes: dict[str, tuple[int, ...]] = {}
    if args.sigmoid:
        shapes[m + "gate.e_score_correction_bias"] = (experts,)
    if args.n_shared_experts:
        shared = inter * args.n_shared_experts
        shapes.update(_mlp_shapes(m + "shared_experts.", shared, d, args.mlp_biases))
    for e in range(experts):
        shapes.update(_mlp_shapes(m + f"experts.{e}.", inter, d, False))
    return shapes


def _mlp_shapes(p: str, inter: int, d: int, bias: bool) -> dict[str, tuple[int, ...]]:
    """A SwiGLU MLP's tensors under prefix `p`."""
    shapes: dict[str, tuple[int, ...]] = {
        p + "gate_proj.weight": (inter, d),
        p + "up_proj.weight": (inter, d),
        p + "down_proj.weight": (d, inter),
    }
    if bias:
        shapes.update({p + "gate_proj.bias": (inter,), p + "up_proj.bias": (inter,)})
        shapes[p + "down_proj.bias"] = (d,)
    return shapes


def _linear(w: WeightSource, name: str, x: np.ndarray, bias: bool) -> np.ndarray:
    """x·Wᵀ (+ b) for a torch Linear `name`: [n, in] @ [in, out]."""
    out = x @ w[name + ".weight"].T
    return out + w[name + ".bias"] if bias else out


def swiglu(w: WeightSource, p: str, x: np.ndarray, act: Act, bias: bool) -> np.ndarray:
    """down(act(gate(x)) ⊙ up(x)) of the MLP under prefix `p` (act: SiLU in every release)."""
    gate, up = _linear(w, p + "gate_proj", x, bias), _linear(w, p + "up_proj", x, bias)
    return _linear(w, p + "down_proj", act(gate) * up, bias)


def _rotate(x: np.ndarray, cos: np.ndarray, sin: np.ndarray, mode: str) -> np.ndarray:
    """The rotary embedding of (…, n, r) vectors; cos and sin are (n, r), angle ⧺ angle.
    "pairs": V2's complex multiplication, dimensions (2i, 2i + 1) rotated in place;
    "interleave": V3's, even dimensions then odd gathered, then rotate_half;
    "halves": rotate_half as it is (V3 with rope_interleave false)."""
    half = x.shape[-1] // 2
    if mode == "pairs":
        c, s = cos[:, :half], sin[:, :half]
        even, odd = x[..., 0::2], x[..., 1::2]
        out = np.empty_like(x)
        out[..., 0::2] = even * c - odd * s
        out[..., 1::2] = even * s + odd * c
        return out
    if mode == "interleave":
        x = np.concatenate([x[..., 0::2], x[..., 1::2]], axis=-1)
    rotated = np.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    return x * cos + rotated * sin


def rope_mode(args: DeepseekV2Args) -> str:
    if not args.sigmoid:
        return "pairs"
    return "interleave" if getattr(args, "rope_interleave", True) else "halves"


def latent_attention(
    w: WeightSource,
    a: str,
    x: np.ndarray,
    args: DeepseekV2Args,
    cos: np.ndarray,
    sin: np.ndarray,
    scale: float,
    resid: np.ndarray,
) -> AttentionRecord:
    """One layer's multi-head latent attention (transformers' DeepseekV2/V3Attention, eager):
    X, (c_q), c_kv, k_pe, Q, K, V, Q_rot, K_rot, W_raw, W_scaled, W_masked, W, Y; the output."""
    heads, n = args.num_attention_heads, len(x)
    nope, r = args.qk_nope_head_dim, args.kv_lora_rank
    bias = bool(args.attention_bias)
    rec = AttentionRecord("self", TOKENS, TOKENS, heads, heads, resid=resid)
    rec.add("X", x)
    if args.q_lora_rank is None:
        q_in, q_name = x, "q_proj"
    else:
        c_q = rms_norm(
            _linear(w, a + "q_a_proj", x, bias), w[a + "q_a_layernorm.weight"], LATENT_EPS
        )
        q_in, q_name = rec.add("c_q", c_q, cols=Cols("c")), "q_b_proj"
    kv_a = _linear(w, a + "kv_a_proj_with_mqa", x, bias)  # [n, d] @ [d, r + rope]
    c_kv = rms_norm(kv_a[:, :r], w[a + "kv_a_layernorm.weight"], LATENT_EPS)
    rec.add("c_kv", c_kv, rows=KEY, cols=Cols("c"))
    k_pe = rec.add("k_pe", np.ascontiguousarray(kv_a[:, r:]), rows=KEY, cols=Cols("r"))
    q = att.split_heads(q_in @ w[a + q_name + ".weight"].T, heads)  # [H, n, nope + rope]
    # kv_b_proj: per head, nope rows decompress a key and v_head_dim rows a value
    kv = att.split_heads(c_kv @ w[a + "kv_b_proj.weight"].T, heads)  # [H, n, nope + v]
    k_nope, v = kv[..., :nope], np.ascontiguousarray(kv[..., nope:])
    shared = np.broadcast_to(k_pe, (heads, n, k_pe.shape[1]))
    rec.add("Q", q, heads=QUERY_HEADS, cols=Cols("q"))
    rec.add(
        "K", np.concatenate([k_nope, shared], axis=-1), heads=KV_HEADS, rows=KEY, cols=Cols("k")
    )
    rec.add("V", v, heads=KV_HEADS, rows=KEY, cols=Cols("v"))
    mode = rope_mode(args)
    q_rot = np.concatenate([q[..., :nope], _rotate(q[..., nope:], cos, sin, mode)], axis=-1)
    k_pe_rot = np.broadcast_to(_rotate(k_pe, cos, sin, mode), shared.shape)
    k_rot = np.concatenate([k_nope, k_pe_rot], axis=-1)
    rec.add("Q_rot", q_rot, heads=QUERY_HEADS, cols=Cols("q"))
    rec.add("K_rot", k_rot, heads=KV_HEADS, rows=KEY, cols=Cols("k"))
    steps = att.attend(q_rot, k_rot, v, att.causal_mask(n), scale)
    for name, data in (("W_raw", steps.W_raw), ("W_scaled", steps.W_scaled)):
        rec.add(name, data, "scores", QUERY_HEADS, QUERY, KEY)
    assert steps.W_masked is not None
    rec.add("W_masked", steps.W_masked, "scores", QUERY_HEADS, QUERY, KEY)
    rec.add("W", steps.W, "weights", QUERY_HEADS, QUERY, KEY)
    y = rec.add("Y", steps.Y, heads=QUERY_HEADS, cols=Cols("v"))
    rec.output = _linear(w, a + "o_proj", att.merge_heads(y), bias)  # [n, H·v] @ [H·v, d]
    rec.facts.update(scale=scale, cap=None, temperature=1.0, d_k=args.qk_head_dim)
    return rec


def route(
    logits: np.ndarray, args: DeepseekV2Args, bias: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray]:
    """(the routing (n, E): each token's weight on each expert, zeros outside its top k; the
    scores the weights come from (n, E)): transformers' route_tokens_to_experts."""
    n, experts = logits.shape
    top_k = args.num_experts_per_tok
    assert top_k is not None
    if args.sigmoid:
        scores = 1.0 / (1.0 + np.exp(-logits))
        choice = scores + bias if bias is not None else scores
    else:
        scores = att.row_softmax(logits.copy())
        choice = scores
    if args.grouped:
        assert args.n_group is not None and args.topk_group is not None
        groups = choice.reshape(n, args.n_group, experts // args.n_group)
        if args.sigmoid:  # a group's score: the sum of its two best experts
            best = np.sort(groups, axis=-1)[..., -2:].sum(axis=-1)
        else:  # its best expert
            best = groups.max(axis=-1)
        kept = np.argsort(-best, axis=-1, kind="stable")[:, : args.topk_group]
        allowed = np.zeros_like(best, dtype=bool)
        np.put_along_axis(allowed, kept, True, axis=-1)
        # the other groups' experts: −∞ in V3, 0 in V2 (below every softmax score)
        hidden = -np.inf if args.sigmoid else 0.0
        choice = np.where(np.repeat(allowed, experts // args.n_group, axis=-1), choice, hidden)
    top = np.argsort(-choice, axis=-1, kind="stable")[:, :top_k]
    weights = np.take_along_axis(scores, top, axis=-1)
    if args.sigmoid and args.norm_topk_prob:  # V2 does not read it (transformers)
        weights = weights / (weights.sum(axis=-1, keepdims=True) + np.float32(1e-20))
    weights = weights * np.float32(args.routed_scaling_factor)
    routing = np.zeros_like(scores)
    np.put_along_axis(routing, top, weights.astype(np.float32), axis=-1)
    return routing, scores


def moe(
    w: WeightSource, m: str, x: np.ndarray, args: DeepseekV2Args, act: Act
) -> tuple[np.ndarray, np.ndarray]:
    """The mixture of experts (transformers' DeepseekV2Moe / DeepseekV3MoE): its output (n, d)
    and the routing (n, E). Each expert runs only on the tokens routed to it, its weights read
    only then."""
    logits = x @ w[m + "gate.weight"].T  # [n, d] @ [d, E]
    bias = w[m + "gate.e_score_correction_bias"] if args.sigmoid else None
    routing, _ = route(logits, args, bias)
    out = np.zeros_like(x)
    for e in (int(e) for e in np.flatnonzero((routing != 0).any(axis=0))):
        tokens = np.flatnonzero(routing[:, e] != 0)
        # one expert's matrices, read (dequantised) now: [t, d] -> [t, inter] -> [t, d]
        y = swiglu(w, m + f"experts.{e}.", x[tokens], act, False)
        out[tokens] += y * routing[tokens, e][:, None]
    if args.n_shared_experts:
        out = out + swiglu(w, m + "shared_experts.", x, act, args.mlp_biases)
    return out, routing


def layers(w: WeightSource, x: np.ndarray, cfg: Config) -> Iterator[LayerRecord]:
    args, source = _args(cfg)
    n, eps = len(x), args.rms_norm_eps
    rot = rotary(args, source)
    cos, sin = rot.cos_sin(n)
    scale, mscale2 = score_scale(args, rot)
    moe_layers = args.moe_layers()
    act = activation(args.act)
    experts = tuple(f"e{e}" for e in range(args.n_routed_experts or 0))
    x = x.astype(np.float32, copy=False)
    for i in range(args.num_hidden_layers):
        p = f"layers.{i}."
        a_in = rms_norm(x, w[p + "input_layernorm.weight"], eps)
        record = latent_attention(w, p + "self_attn.", a_in, args, cos, sin, scale, x)
        record.facts.update(mscale2=mscale2, rope=rope_mode(args), moe=moe_layers[i])
        assert record.output is not None
        h = x + record.output
        m_in = rms_norm(h, w[p + "post_attention_layernorm.weight"], eps)
        if moe_layers[i]:
            ff, routing = moe(w, p + "mlp.", m_in, args, act)
            record.add("router", routing, "relevance", None, QUERY, experts)
            record.facts.update(
                top_k=args.num_experts_per_tok,
                sigmoid=args.sigmoid,
                scaling=args.routed_scaling_factor,
                normalised=args.sigmoid and args.norm_topk_prob,  # V2 does not read it
                groups=(args.topk_group, args.n_group) if args.grouped else None,
            )
        else:
            ff = swiglu(w, p + "mlp.", m_in, act, args.mlp_biases)
        out = h + ff
        yield LayerRecord([record], out)
        x = out


def dims(cfg: Config) -> Dims:
    args, _ = _args(cfg)
    heads = args.num_attention_heads
    return Dims(
        args.num_hidden_layers,
        heads,
        heads,
        args.hidden_size,
        args.qk_head_dim,
        args.vocab_size,
        None,
    )


def describe(cfg: Config) -> dict[str, Any]:
    """What the config means for the attention and the experts, for the trace's config."""
    args, source = _args(cfg)
    rot = rotary(args, source)
    p = rot.params
    scale, mscale2 = score_scale(args, rot)
    info: dict[str, Any] = {"type": p.get("rope_type", "default"), "theta": float(p["rope_theta"])}
    for key in ("factor", "original_max_position_embeddings", "beta_fast", "beta_slow"):
        if p.get(key) is not None and info["type"] != "default":
            info[key] = p[key]
    for key in ("mscale", "mscale_all_dim"):
        if p.get(key) is not None:
            info[key] = p[key]
    factor = rope.inverse_frequencies(p, args.qk_rope_head_dim)[1]
    if factor != 1.0:
        info["attention_factor"] = factor
    moe_layers = args.moe_layers()
    routing: dict[str, Any] | None = None
    if any(moe_layers):
        routing = {
            "experts": args.n_routed_experts,
            "shared_experts": args.n_shared_experts or 0,
            "top_k": args.num_experts_per_tok,
            "scores": "sigmoid + e_score_correction_bias for the choice"
            if args.sigmoid
            else "softmax",
            "groups": (args.n_group, args.topk_group) if args.grouped else None,
            "norm_topk_prob": args.norm_topk_prob if args.sigmoid else "not read (V2)",
            "routed_scaling_factor": args.routed_scaling_factor,
        }
    return {
        "attention": "multi-head latent attention",
        "q_lora_rank": args.q_lora_rank,
        "kv_lora_rank": args.kv_lora_rank,
        "qk_nope_head_dim": args.qk_nope_head_dim,
        "qk_rope_head_dim": args.qk_rope_head_dim,
        "v_head_dim": args.v_head_dim,
        "kv_heads": args.num_attention_heads,
        "head_dim": args.qk_head_dim,
        "norm": "RMSNorm × w",
        "rope": {FULL: {**info, "rotary_dim": args.qk_rope_head_dim, "layout": rope_mode(args)}},
        "score_scale": scale,
        "score_mscale_squared": mscale2,
        "dense_layers": [i for i, moe_layer in enumerate(moe_layers) if not moe_layer],
        "mlp": f"SwiGLU ({args.act}); mixture of experts from layer "
        + (str(moe_layers.index(True)) if any(moe_layers) else "none"),
        "routing": routing,
        "tied_embeddings": bool(args.tie_word_embeddings),
    }


# --- GGUF: llama.cpp's "deepseek2" ---------------------------------------------------------


def gguf_model_type(metadata: Mapping[str, Any]) -> str:
    """deepseek_v3 for sigmoid gating (llama.cpp's expert_gating_func 2), else deepseek_v2."""
    return V3 if metadata.get("deepseek2.expert_gating_func") == 2 else V2


def _gguf_adapt(m: Any, cfg: dict[str, Any]) -> None:
    """What the deepseek2 metadata says that no single key does: V2 (softmax) or V3 (sigmoid)
    routing, the head sizes of the latent attention, the experts' grouping, YaRN's mscale."""
    m.checked(POSITIVE_INT, "expert_gating_func", 1)
    sigmoid = gguf_model_type(m.meta) == V3
    cfg["model_type"] = V3 if sigmoid else V2
    cfg["architectures"] = ["DeepseekV3ForCausalLM" if sigmoid else "DeepseekV2ForCausalLM"]
    args = DeepseekV3Args if sigmoid else DeepseekV2Args
    heads = cfg["num_attention_heads"]
    rope_dim = m.value("rope.dimension_count", "qk_rope_head_dim")
    k_len = m.value("attention.key_length_mla", "qk_nope_head_dim", ABSENT)
    v_len = m.value("attention.value_length_mla", "v_head_dim", ABSENT)
    if k_len is ABSENT:  # converters before the split write the per-head sizes here
        k_len = m.value("attention.key_length", "qk_nope_head_dim")
        v_len = m.value("attention.value_length", "v_head_dim")
    if k_len <= rope_dim:
        raise InputError(
            f"{m.label('attention.key_length_mla')}: {k_len} leaves no room for "
            f"the {rope_dim} rotary dimensions"
        )
    cfg.update(
        qk_rope_head_dim=rope_dim,
        qk_nope_head_dim=k_len - rope_dim,
        v_head_dim=v_len,
        num_key_value_heads=heads,
        head_dim=rope_dim,
    )
    cfg.pop("partial_rotary_factor", None)
    cfg["attention_bias"] = m.has_tensor("blk.0.attn_kv_a_mqa.bias")
    cfg["mlp_bias"] = any(
        m.has_tensor(f"blk.{i}.{name}.bias")
        for i in range(cfg["num_hidden_layers"])
        for name in ("ffn_gate", "ffn_gate_shexp")
    )
    groups = m.checked(POSITIVE_INT, "expert_group_count", 1)
    used = m.checked(POSITIVE_INT, "expert_group_used_count", groups)
    if sigmoid:
        cfg.update(topk_method="noaux_tc", n_group=groups, topk_group=used)
    else:
        grouped = groups > 1
        cfg.update(
            topk_method="group_limited_greedy" if grouped else "greedy",
            n_group=groups if grouped else None,
            topk_group=used if grouped else None,
        )
    scaling = cfg.get("rope_scaling")
    log_mul = m.checked(NUMBER, "rope.scaling.yarn_log_multiplier")
    if isinstance(scaling, dict) and scaling.get("rope_type") == "yarn" and log_mul:
        # llama.cpp's kq scale: (1 + yarn_log_multiplier·ln factor)², one mscale for both
        shortest = float(np.format_float_positional(np.float32(log_mul), unique=True, trim="-"))
        mscale = round(shortest / 0.1, 9)  # 0.0707 (float32) -> 0.707
        scaling.update(mscale=mscale, mscale_all_dim=mscale, beta_fast=32.0, beta_slow=1.0)
    args.parse(cfg, "GGUF metadata")  # every value checked as config.json's would be


def _gguf_shape(name: str, cfg: Any) -> tuple[int, ...] | None:
    """The HF shape of a deepseek2 tensor the generic rule does not know (None: it does)."""
    d, heads = cfg["hidden_size"], cfg["num_attention_heads"]
    nope, rope_dim, v = cfg["qk_nope_head_dim"], cfg["qk_rope_head_dim"], cfg["v_head_dim"]
    r, q_r = cfg["kv_lora_rank"], cfg.get("q_lora_rank")
    experts, inter = cfg.get("n_routed_experts") or 0, cfg["moe_intermediate_size"]
    shared = inter * (cfg.get("n_shared_experts") or 0)
    part = name.split("self_attn.")[-1].split("mlp.")[-1]
    return {
        "q_proj.weight": (heads * (nope + rope_dim), d),
        "q_a_proj.weight": (q_r, d),
        "q_a_layernorm.weight": (q_r,),
        "q_b_proj.weight": (heads * (nope + rope_dim), q_r),
        "kv_a_proj_with_mqa.weight": (r + rope_dim, d),
        "kv_a_layernorm.weight": (r,),
        "kv_b_proj.weight": (heads * (nope + v), r),
        "o_proj.weight": (d, heads * v),
        "q_a_proj.bias": (q_r,),
        "kv_a_proj_with_mqa.bias": (r + rope_dim,),
        "o_proj.bias": (d,),
        "gate.weight": (experts, d),
        "gate.e_score_correction_bias": (experts,),
        "shared_experts.gate_proj.weight": (shared, d),
        "shared_experts.up_proj.weight": (shared, d),
        "shared_experts.down_proj.weight": (d, shared),
        "shared_experts.gate_proj.bias": (shared,),
        "shared_experts.up_proj.bias": (shared,),
        "shared_experts.down_proj.bias": (d,),
    }.get(part)


GGUF = GGUFTable(
    arch="deepseek2",
    model_type=V2,  # V3 when the metadata says sigmoid gating (see _gguf_adapt)
    hf_class="DeepseekV2ForCausalLM",
    args=DeepseekV3Args,
    layer_tensors={
        "input_layernorm.weight": "attn_norm.weight",
        "post_attention_layernorm.weight": "ffn_norm.weight",
        "self_attn.kv_a_proj_with_mqa.weight": "attn_kv_a_mqa.weight",
        "self_attn.kv_a_layernorm.weight": "attn_kv_a_norm.weight",
        "self_attn.o_proj.weight": "attn_output.weight",
    },
    optional_layer_tensors={
        "self_attn.q_proj.weight": "attn_q.weight",
        "self_attn.q_a_proj.weight": "attn_q_a.weight",
        "self_attn.q_a_layernorm.weight": "attn_q_a_norm.weight",
        "self_attn.q_b_proj.weight": "attn_q_b.weight",
        "self_attn.kv_b_proj.weight": "attn_kv_b.weight",  # converters before the split
        "self_attn.q_a_proj.bias": "attn_q_a.bias",
        "self_attn.kv_a_proj_with_mqa.bias": "attn_kv_a_mqa.bias",
        "self_attn.o_proj.bias": "attn_output.bias",
        "mlp.gate_proj.weight": "ffn_gate.weight",
        "mlp.up_proj.weight": "ffn_up.weight",
        "mlp.down_proj.weight": "ffn_down.weight",
        "mlp.gate.weight": "ffn_gate_inp.weight",
        "mlp.gate.e_score_correction_bias": "exp_probs_b.bias",
        "mlp.shared_experts.gate_proj.weight": "ffn_gate_shexp.weight",
        "mlp.shared_experts.up_proj.weight": "ffn_up_shexp.weight",
        "mlp.shared_experts.down_proj.weight": "ffn_down_shexp.weight",
        **{
            f"mlp.{shared}{x}_proj.bias": f"ffn_{x}{shexp}.bias"
            for shared, shexp in (("", ""), ("shared_experts.", "_shexp"))
            for x in ("gate", "up", "down")
        },
    },
    # the routed experts, stacked [experts, out, in]: one expert's rows read at a time
    experts={
        f"mlp.experts.{{e}}.{x}_proj.weight": f"ffn_{x}_exps.weight" for x in ("gate", "up", "down")
    },
    # kv_b_proj from the split: per head, attn_k_b (heads, kv_lora_rank, nope) transposed,
    # then attn_v_b (heads, v_head_dim, kv_lora_rank)
    per_head_tensors={
        "self_attn.kv_b_proj.weight": (("attn_k_b.weight", True), ("attn_v_b.weight", False))
    },
    metadata={
        "leading_dense_block_count": ("first_k_dense_replace", 0),
        "attention.q_lora_rank": ("q_lora_rank", None),
        "attention.kv_lora_rank": ("kv_lora_rank", ABSENT),
        "expert_feed_forward_length": ("moe_intermediate_size", ABSENT),
        "expert_count": ("n_routed_experts", None),
        "expert_shared_count": ("n_shared_experts", 0),
        "expert_used_count": ("num_experts_per_tok", None),
        "expert_weights_scale": ("routed_scaling_factor", 1.0),
        "expert_weights_norm": ("norm_topk_prob", False),
    },
    config={"hidden_act": "silu", "rope_interleave": True},
    own_attention=True,
    shape=_gguf_shape,
    adapt=_gguf_adapt,
    model_type_of=gguf_model_type,
)


# --- the words of the latent attention's own steps ----------------------------------------


def _c_q(c: StageContext) -> tuple[str, str]:
    return "q_a_layernorm(X·W_qa)", (
        f"The query latent: each token's input squeezed into {c.data.shape[1]} numbers "
        "(low-rank q_a_proj, then RMSNorm). Every head's query is decompressed from it."
    )


def _c_kv(c: StageContext) -> tuple[str, str]:
    return "kv_a_layernorm((X·W_kva)[:, :kv_lora_rank])", (
        f"The key/value latent: one {c.data.shape[1]}-number vector per token, shared by all "
        f"{c.record.heads} heads. This is all the model keeps of a token for its keys and values "
        "(besides k_pe); each head decompresses its own keys and values from it."
    )


def _k_pe(c: StageContext) -> tuple[str, str]:
    return "(X·W_kva)[:, kv_lora_rank:]", (
        f"The rotary key: {c.data.shape[1]} numbers per token, one key shared by all heads, "
        "rotated by position in K_rot. The latent c_kv carries no position; this part does."
    )


def _latent_q(c: StageContext) -> tuple[str, str]:
    source = "c_q·W_qb" if "c_q" in c.record else "X·W_q"
    nope, rope_dim = _split(c)
    return f"{source}{superscript(c.h)}", (
        f"Queries of head {c.h}: the first {nope} numbers are matched against keys decompressed "
        f"from the latent, the last {rope_dim} against the shared rotary key."
    )


def _latent_k(c: StageContext) -> tuple[str, str]:
    nope, rope_dim = _split(c)
    return f"[c_kv·W_kb{superscript(c.h)} ‖ k_pe]", (
        f"Keys of head {c.h}, decompressed: {nope} numbers from the latent c_kv through this "
        f"head's rows of kv_b_proj, then the {rope_dim}-number rotary key k_pe, the same for "
        "every head."
    )


def _latent_v(c: StageContext) -> tuple[str, str]:
    return f"c_kv·W_vb{superscript(c.h)}", (
        f"Values of head {c.h}, decompressed from the latent c_kv through this head's rows of "
        "kv_b_proj: what each token passes on when attended to."
    )


def _latent_rot(c: StageContext) -> tuple[str, str]:
    letter = c.stage.name[0]
    nope, rope_dim = _split(c)
    part = "q_pe" if letter == "Q" else "k_pe"
    layout = {
        "pairs": "pairs of neighbouring dimensions (2i, 2i + 1)",
        "interleave": "pairs of neighbouring dimensions (2i, 2i + 1), gathered even then odd",
        "halves": "dimension i with dimension i + r/2",
    }[c.record.facts["rope"]]
    rotated = part if letter == "K" else f"Q[:, {nope}:]"
    return f"[{letter}[:, :{nope}] ‖ RoPE({rotated}, position)]", (
        f"Only the last {rope_dim} numbers are rotated by position ({layout}); the first {nope} "
        "carry no position. Each score is a content match plus a position-aware match."
    )


def _latent_scaled(c: StageContext) -> tuple[str, str]:
    scale, d_k, m2 = c.record.facts["scale"], c.record.facts["d_k"], c.record.facts["mscale2"]
    if m2 == 1.0:
        return "W_raw/√d_k", (
            f"Divided by √d_k = {math.sqrt(d_k):.3g} (d_k = qk_nope_head_dim + qk_rope_head_dim) "
            "so the softmax does not saturate."
        )
    return f"W_raw·mscale²/√d_k = W_raw·{scale:.4g}", (
        f"Divided by √d_k = {math.sqrt(d_k):.3g} and multiplied by YaRN's mscale² = {m2:.4g}: "
        "the context was stretched, and this sharpens the softmax back (mscale_all_dim)."
    )


def _router(c: StageContext) -> tuple[str, str]:
    f = c.record.facts
    k, scaling, groups = f["top_k"], f["scaling"], f["groups"]
    within = "" if groups is None else f" in the best {groups[0]} of {groups[1]} groups"
    if f["sigmoid"]:
        formula = f"top-{k} σ(h·W_gateᵀ), chosen by σ + bias{within}, × {scaling:g}"
        how = "chosen by sigmoid score plus a learned bias, weighted by the scores alone"
    else:
        formula = f"top-{k} softmax(h·W_gateᵀ){within} × {scaling:g}"
        how = "chosen and weighted by their softmax scores"
    if groups is not None:
        best = "the sum of its best two" if f["sigmoid"] else "its best expert"
        which = "the group" if groups[0] == 1 else f"the {groups[0]} groups"
        how += f", only from {which} of experts that score highest ({best})"
    total = " normalised to sum to 1, then" if f["normalised"] else ""
    return formula, (
        f"The mixture-of-experts router: each token's weight on each of the {c.data.shape[1]} "
        f"experts. Only its top {k} experts run on it, {how}; their weights are{total} × "
        f"routed_scaling_factor {scaling:g}, the rest 0. Shared experts run on every token and "
        "are not shown."
    )


def _split(c: StageContext) -> tuple[int, int]:
    """(qk_nope_head_dim, qk_rope_head_dim) of the record."""
    rope_dim = c.record["k_pe"].shape[1]
    return c.record.facts["d_k"] - rope_dim, rope_dim


STAGE_TEXTS = {
    "c_q": _c_q,
    "c_kv": _c_kv,
    "k_pe": _k_pe,
    "Q": _latent_q,
    "K": _latent_k,
    "V": _latent_v,
    "Q_rot": _latent_rot,
    "K_rot": _latent_rot,
    "W_scaled": _latent_scaled,
    "router": _router,
}


FAMILY = dataclasses.replace(
    decoder_family(
        "deepseek",
        SPECS,
        mask=(
            "The model reads left to right: a token may not look at later tokens, so their "
            "scores are −∞."
        ),
        multiplies="the latent projections (q_a/q, kv_a)",
        stage_texts=STAGE_TEXTS,
        gguf=(GGUF,),
    ),
    linear_values=False,  # values come through an RMSNorm of the latent: not x·W_v
    dims=dims,
    check=check,
    layers=layers,
    describe=describe,
)
