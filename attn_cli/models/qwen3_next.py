"""Qwen3-Next: three Gated DeltaNet linear-attention layers to one gated softmax layer, and a
mixture-of-experts MLP with a shared expert (transformers' modeling_qwen3_next.py, its torch
path: torch_chunk_gated_delta_rule and the torch causal conv1d).

Every RMSNorm multiplies by (1 + w) (zero-centred weights), except the gated norm of the linear
layers (× w). Each layer, pre-norm:
  X = input_layernorm(h)
  linear layers (layer_types "linear_attention"; by default three of every full_attention_interval):
    q, k, v, z = X·W_qkvz (per key head: q, k, then its value heads' v and z);  b, a = X·W_ba
    q, k, v = SiLU(causal depthwise conv1d over the last linear_conv_kernel_dim tokens)
    q, k = L2-normalised (q also × 1/√d_k), each key head serving its group of value heads
    β_t = σ(b_t) (how much token t writes),  g_t = −exp(A_log)·softplus(a_t + dt_bias) (decay)
    S_t = e^{g_t}·S_{t−1} + k_t·(β_t·(v_t − e^{g_t}·S_{t−1}ᵀk_t))ᵀ,   y_t = S_tᵀ·q_t
    y = RMSNorm(y)·w ⊙ SiLU(z) per head;  O = y_concat·W_out
  softmax layers ("full_attention"):
    q_proj gives per head a query and an output gate; q and k RMSNorm (1 + w) per head;
    rotary on the first partial_rotary_factor of each head;  W = softmax(q·kᵀ/√d, causal);
    O = (W·V ⊙ σ(gate))_concat · W_o
  h = h + O;  h = h + MLP(post_attention_layernorm(h)):  MoE layers (num_experts > 0, every
    decoder_sparse_step-th layer, not in mlp_only_layers): softmax router over all experts, top
    num_experts_per_tok (renormalised: norm_topk_prob), SwiGLU experts, plus a SwiGLU shared
    expert × σ(x·w_shared_gate); other layers a dense SwiGLU MLP.

A linear layer has no softmax, but y_t is still a mix of the value vectors: per head,
y = A·V with A lower-triangular,
    A = (Q·Kᵀ ⊙ D) · (I + strictly_lower(diag(β)·(K·Kᵀ ⊙ D)))⁻¹ · diag(β),
    D[t, s] = exp(Σ_{r=s+1..t} g_r) for s ≤ t, 0 above the diagonal
(unrolling the recurrence: the write of token s is u_s = β_s(v_s − Σ_{r<s} D[s,r]·(k_s·k_r)·u_r)
and y_t = Σ_{s≤t} D[t,s]·(q_t·k_s)·u_s). A is the layer's map (kind "mixing": signed, rows need
not sum to 1). Checkpoints are as transformers saves Qwen3NextForCausalLM (experts one by one,
experts.{e}.gate_proj …, or stacked as experts.gate_up_proj [E, 2·inter, d]); no GGUF yet.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from attn_cli import attention as att
from attn_cli.errors import InputError
from attn_cli.models import _moe, rope
from attn_cli.models._decoder import (
    ANCHOR,
    FULL,
    DecoderArgs,
    Spec,
    decoder_family,
    describe,
    parsed,
    qk_hook,
    tied,
)
from attn_cli.models.args import COUNT, FLAG, FRACTION, POSITIVE, POSITIVE_INT, Kind, arg
from attn_cli.models.layers import activation, rms_norm, silu
from attn_cli.models.registry import Config, Dims, WeightSource
from attn_cli.models.weights import expect_layers, expect_shape
from attn_cli.narrate import STAGE_TEXTS as CATALOGUE
from attn_cli.narrate import StageContext
from attn_cli.records import (
    KEY,
    KV_HEADS,
    QUERY,
    QUERY_HEADS,
    TOKENS,
    AttentionRecord,
    LayerRecord,
    multi_head_attention,
)
from attn_cli.records import Dims as Cols

LINEAR = "linear_attention"
INDICES = Kind(
    "a list of integers ≥ 0",
    lambda v: isinstance(v, list) and all(COUNT.test(x) for x in v),
)
L2_EPS = 1e-6  # transformers' l2norm (as the FLA kernels)
SOFTPLUS_THRESHOLD = 20.0  # torch's softplus is x itself above this
CHUNK = 64  # tokens per triangular solve (transformers' chunk_size)


@dataclass(frozen=True, kw_only=True)
class Qwen3NextArgs(DecoderArgs):
    """transformers' Qwen3NextConfig defaults."""

    vocab_size: int = arg(POSITIVE_INT, 151_936)
    hidden_size: int = arg(POSITIVE_INT, 2048)
    intermediate_size: int = arg(POSITIVE_INT, 5632)
    num_hidden_layers: int = arg(POSITIVE_INT, 48)
    num_attention_heads: int = arg(POSITIVE_INT, 16)
    num_key_value_heads: int | None = arg(POSITIVE_INT, 2, nullable=True)
    head_dim: int | None = arg(POSITIVE_INT, 256, nullable=True)
    max_position_embeddings: int | None = arg(POSITIVE_INT, 32_768, nullable=True)
    partial_rotary_factor: float | None = arg(FRACTION, 0.25, nullable=True)
    full_attention_interval: int = arg(POSITIVE_INT, 4)
    linear_conv_kernel_dim: int = arg(POSITIVE_INT, 4)
    linear_key_head_dim: int = arg(POSITIVE_INT, 128)
    linear_value_head_dim: int = arg(POSITIVE_INT, 128)
    linear_num_key_heads: int = arg(POSITIVE_INT, 16)
    linear_num_value_heads: int = arg(POSITIVE_INT, 32)
    decoder_sparse_step: int = arg(POSITIVE_INT, 1)
    moe_intermediate_size: int = arg(POSITIVE_INT, 512)
    shared_expert_intermediate_size: int = arg(POSITIVE_INT, 512)
    num_experts_per_tok: int = arg(POSITIVE_INT, 10)
    num_experts: int = arg(COUNT, 512)
    norm_topk_prob: bool = arg(FLAG, True)
    mlp_only_layers: list[int] | None = arg(INDICES, None)
    rms_norm_eps: float = arg(POSITIVE, 1e-6)

    @property
    def kinds(self) -> list[str]:
        """'linear_attention' or 'full_attention' per layer: layer_types, else every
        full_attention_interval-th layer is a softmax layer."""
        if self.layer_types:
            return list(self.layer_types)
        every = self.full_attention_interval
        return [FULL if (i + 1) % every == 0 else LINEAR for i in range(self.num_hidden_layers)]

    def moe_layer(self, i: int) -> bool:
        return (
            i not in (self.mlp_only_layers or [])
            and self.num_experts > 0
            and (i + 1) % self.decoder_sparse_step == 0
        )

    def validate(self, source: str) -> None:
        super().validate(source)
        kinds = self.layer_types  # without it every kind is valid (and no list is built yet)
        if kinds and (
            len(kinds) != self.num_hidden_layers or any(k not in (FULL, LINEAR) for k in kinds)
        ):
            raise InputError(
                f"{source}: layer_types must list {self.num_hidden_layers} entries of "
                f"{FULL!r} or {LINEAR!r}"
            )
        if self.linear_num_value_heads % self.linear_num_key_heads:
            raise InputError(
                f"{source}: linear_num_value_heads {self.linear_num_value_heads} is not a "
                f"multiple of linear_num_key_heads {self.linear_num_key_heads}"
            )
        if self.num_experts:
            _moe.check_top_k(source, self.num_experts_per_tok, self.num_experts, "num_experts")


SPECS = {"qwen3_next": Spec(args=Qwen3NextArgs, norm_offset=1.0, qk_norm=True)}
SPEC = SPECS["qwen3_next"]


def _args(cfg: Config) -> tuple[Qwen3NextArgs, str]:
    _, args, source = parsed(SPECS, cfg)
    assert isinstance(args, Qwen3NextArgs)
    return args, source


def _rotary(args: Qwen3NextArgs, source: str) -> rope.Rotary:
    return rope.rotary(args.as_config(), args.head_size, FULL, source=source)


def dims(cfg: Config) -> Dims:
    """Heads: the larger of the softmax layers' query heads and the linear layers' value
    heads (a layer shows the heads it has)."""
    args, _ = _args(cfg)
    return Dims(
        args.num_hidden_layers,
        max(args.num_attention_heads, args.linear_num_value_heads),
        args.kv_heads,
        args.hidden_size,
        args.head_size,
        args.vocab_size,
        None,
    )


def _expert_names(p: str, w: WeightSource) -> bool:
    """True when the checkpoint stores the experts stacked (experts.gate_up_proj)."""
    return p + "experts.gate_up_proj" in w


def check(w: WeightSource, cfg: Config) -> None:
    """Config options this code runs, and every tensor's shape against config.json."""
    args, source = _args(cfg)
    d, heads, kv, hd = args.hidden_size, args.num_attention_heads, args.kv_heads, args.head_size
    hk, hv = args.linear_num_key_heads, args.linear_num_value_heads
    dk, dv = args.linear_key_head_dim, args.linear_value_head_dim
    activation(args.hidden_act or "silu")  # refuses unknown activations by name
    _rotary(args, source)  # refuses unsupported rope types and bad rope values by name
    expect_shape(w, ANCHOR, (args.vocab_size, d))
    expect_layers(
        w, args.num_hidden_layers, f"{source}: num_hidden_layers {args.num_hidden_layers}"
    )
    conv = 2 * hk * dk + hv * dv
    for i, kind in enumerate(args.kinds):
        p = f"layers.{i}."
        shapes: dict[str, tuple[int, ...]] = {
            p + "input_layernorm.weight": (d,),
            p + "post_attention_layernorm.weight": (d,),
        }
        if kind == LINEAR:
            a = p + "linear_attn."
            shapes |= {
                a + "in_proj_qkvz.weight": (2 * hk * dk + 2 * hv * dv, d),
                a + "in_proj_ba.weight": (2 * hv, d),
                a + "conv1d.weight": (conv, 1, args.linear_conv_kernel_dim),
                a + "A_log": (hv,),
                a + "dt_bias": (hv,),
                a + "norm.weight": (dv,),
                a + "out_proj.weight": (d, hv * dv),
            }
        else:
            a = p + "self_attn."
            shapes |= {
                a + "q_proj.weight": (2 * heads * hd, d),
                a + "k_proj.weight": (kv * hd, d),
                a + "v_proj.weight": (kv * hd, d),
                a + "o_proj.weight": (d, heads * hd),
                a + "q_norm.weight": (hd,),
                a + "k_norm.weight": (hd,),
            }
            if args.attention_bias:
                shapes |= {
                    a + "q_proj.bias": (2 * heads * hd,),
                    a + "k_proj.bias": (kv * hd,),
                    a + "v_proj.bias": (kv * hd,),
                    a + "o_proj.bias": (d,),
                }
        m = p + "mlp."
        if args.moe_layer(i):
            e, inter, shared = (
                args.num_experts,
                args.moe_intermediate_size,
                args.shared_expert_intermediate_size,
            )
            expect_shape(w, m + "gate.weight", (e, d))  # the expert count, before the loop
            shapes |= {
                m + "shared_expert_gate.weight": (1, d),
                m + "shared_expert.gate_proj.weight": (shared, d),
                m + "shared_expert.up_proj.weight": (shared, d),
                m + "shared_expert.down_proj.weight": (d, shared),
            }
            if _expert_names(m, w):
                shapes |= {
                    m + "experts.gate_up_proj": (e, 2 * inter, d),
                    m + "experts.down_proj": (e, d, inter),
                }
            else:
                for x in range(e):
                    shapes |= {
                        m + f"experts.{x}.gate_proj.weight": (inter, d),
                        m + f"experts.{x}.up_proj.weight": (inter, d),
                        m + f"experts.{x}.down_proj.weight": (d, inter),
                    }
        else:
            inter = args.intermediate_size
            shapes |= {
                m + "gate_proj.weight": (inter, d),
                m + "up_proj.weight": (inter, d),
                m + "down_proj.weight": (d, inter),
            }
        for name, shape in shapes.items():
            expect_shape(w, name, shape)
    expect_shape(w, "norm.weight", (d,))
    if not tied(args, w):
        expect_shape(w, "lm_head.weight", (args.vocab_size, d))


# --- the linear (Gated DeltaNet) layers -------------------------------------------------------


def causal_conv(x: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """Depthwise causal convolution (transformers' torch causal_conv1d_fn before the
    activation): out[t, c] = Σ_j kernel[c, j]·x[t − K + 1 + j, c], zeros before the text.
    x (n, C), kernel (C, K)."""
    n, _ = x.shape
    size = kernel.shape[1]
    padded = np.concatenate([np.zeros((size - 1, x.shape[1]), x.dtype), x])
    out = np.zeros_like(x)
    for j in range(size):
        out += padded[j : j + n] * kernel[:, j]
    return out


def sigmoid(x: np.ndarray) -> np.ndarray:
    """σ(x) = 1/(1 + e^−x); e^−x overflows to inf for very negative x, giving the right 0."""
    with np.errstate(over="ignore"):
        return 1.0 / (1.0 + np.exp(-x))


def softplus(x: np.ndarray) -> np.ndarray:
    """torch's softplus (beta 1, threshold 20)."""
    with np.errstate(over="ignore"):
        return np.where(x > SOFTPLUS_THRESHOLD, x, np.log1p(np.exp(np.minimum(x, 50.0))))


def l2_normalise(x: np.ndarray) -> np.ndarray:
    """x / √(Σ x² + 1e-6) over the last axis (transformers' l2norm)."""
    return x / np.sqrt(np.sum(x * x, axis=-1, keepdims=True) + np.float32(L2_EPS))


def delta_rule_map(
    q: np.ndarray, k: np.ndarray, g: np.ndarray, beta: np.ndarray, chunk: int = CHUNK
) -> np.ndarray:
    """The gated delta rule as a mixing matrix per head: y = A·V for every V.

    q, k (H, n, d_k), already L2-normalised (q also scaled); g, beta (H, n). Returns A
    (H, n, n), lower-triangular:
        A = (Q·Kᵀ ⊙ D) · (I + strictly_lower(diag(β)·(K·Kᵀ ⊙ D)))⁻¹ · diag(β)
    with D[t, s] = exp(g_(s+1) + … + g_t) for s ≤ t. Evaluated as transformers'
    torch_chunk_gated_delta_rule runs the rule, on the values of the identity (token s's value
    is the one-hot e_s, so the output rows are A's rows): a `chunk`-token triangular solve, and
    a state S (d_k × n) carried between chunks: O(n²·d_k) per head, not the O(n³) of the
    inverse. float64 inside, float32 out."""
    heads, n, d_k = q.shape
    out = np.zeros((heads, n, n), dtype=np.float32)
    for h in range(heads):
        # Sᵀ: row s is what token s's one-hot value left in the memory (d_k numbers)
        state = np.zeros((n, d_k))
        for c0 in range(0, n, chunk):
            c1 = min(c0 + chunk, n)
            size = c1 - c0
            qc, kc = q[h, c0:c1].astype(np.float64), k[h, c0:c1].astype(np.float64)
            b = beta[h, c0:c1].astype(np.float64)
            cum = np.cumsum(g[h, c0:c1].astype(np.float64))  # log decay from the chunk's start
            with np.errstate(over="ignore"):
                decay = np.tril(np.exp(np.tril(cum[:, None] - cum[None, :])))  # D in the chunk
            system = np.tril(b[:, None] * (kc @ kc.T) * decay, -1) + np.eye(size)  # I + M
            rhs = np.concatenate([np.diag(b), (b * np.exp(cum))[:, None] * kc], axis=1)
            solved = np.linalg.solve(system, rhs)  # [size, size + d_k]
            writes, key_reads = solved[:, :size], solved[:, size:]
            s = state[:c1]  # only earlier tokens can have left anything
            new = -(key_reads @ s.T)  # [size, d_k] @ [d_k, c1]: what the memory already holds
            new[:, c0:c1] += writes
            inter = (qc * np.exp(cum)[:, None]) @ s.T  # the read of the memory before the chunk
            out[h, c0:c1, :c1] = inter + ((qc @ kc.T) * decay) @ new
            last = cum[-1]
            state[:c1] = s * np.exp(last) + new.T @ (kc * np.exp(last - cum)[:, None])
    return out


def gated_delta_net(
    x: np.ndarray, w: WeightSource, a: str, args: Qwen3NextArgs, resid: np.ndarray
) -> AttentionRecord:
    """One linear-attention layer (transformers' Qwen3NextGatedDeltaNet, torch path), every
    step recorded: X, Q, K (per key head), V (per value head), Q_conv, K_conv, V_conv, Q_norm,
    K_norm, gates (e^g and β), W (the mixing matrix A), Y = A·V_conv, gate (SiLU(z)), Y_gated."""
    n = len(x)
    hk, hv = args.linear_num_key_heads, args.linear_num_value_heads
    dk, dv = args.linear_key_head_dim, args.linear_value_head_dim
    group = hv // hk
    act = activation(args.hidden_act or "silu")
    rec = AttentionRecord("linear", TOKENS, TOKENS, hv, hk, resid=resid)
    rec.add("X", x)
    qkvz = (x @ w[a + "in_proj_qkvz.weight"].T).reshape(n, hk, 2 * dk + 2 * group * dv)
    ba = (x @ w[a + "in_proj_ba.weight"].T).reshape(n, hk, 2 * group)
    q, k, v, z = np.split(qkvz, [dk, 2 * dk, 2 * dk + group * dv], axis=-1)
    b, a_ = ba[..., :group].reshape(n, hv), ba[..., group:].reshape(n, hv)
    v, z = v.reshape(n, hv, dv), z.reshape(n, hv, dv)
    rec.add("Q", q.transpose(1, 0, 2), heads=KV_HEADS, cols=Cols("q"))
    rec.add("K", k.transpose(1, 0, 2), heads=KV_HEADS, rows=KEY, cols=Cols("k"))
    rec.add("V", v.transpose(1, 0, 2), heads=QUERY_HEADS, rows=KEY, cols=Cols("v"))
    mixed = np.concatenate([q.reshape(n, -1), k.reshape(n, -1), v.reshape(n, -1)], axis=1)
    mixed = act(causal_conv(mixed, w[a + "conv1d.weight"][:, 0, :]))  # [n, 2·hk·dk + hv·dv]
    qc, kc, vc = np.split(mixed, [hk * dk, 2 * hk * dk], axis=1)
    qc = rec.add("Q_conv", qc.reshape(n, hk, dk).transpose(1, 0, 2), heads=KV_HEADS, cols=Cols("q"))
    kc = rec.add(
        "K_conv", kc.reshape(n, hk, dk).transpose(1, 0, 2), heads=KV_HEADS, rows=KEY, cols=Cols("k")
    )
    vc = rec.add(
        "V_conv",
        vc.reshape(n, hv, dv).transpose(1, 0, 2),
        heads=QUERY_HEADS,
        rows=KEY,
        cols=Cols("v"),
    )
    qn = rec.add("Q_norm", l2_normalise(qc) * np.float32(dk**-0.5), heads=KV_HEADS, cols=Cols("q"))
    kn = rec.add("K_norm", l2_normalise(kc), heads=KV_HEADS, rows=KEY, cols=Cols("k"))
    beta = sigmoid(b.T)  # [hv, n]
    g = -np.exp(w[a + "A_log"])[:, None] * softplus(a_.T + w[a + "dt_bias"][:, None])  # [hv, n]
    gates = np.stack([np.exp(g), beta], axis=-1).astype(np.float32)  # [hv, n, 2]
    rec.add("gates", gates, "relevance", QUERY_HEADS, QUERY, ("decay", "beta"))
    mix = delta_rule_map(np.repeat(qn, group, axis=0), np.repeat(kn, group, axis=0), g, beta)
    rec.add("W", mix, "mixing", QUERY_HEADS, QUERY, KEY)
    y = rec.add("Y", mix @ vc, heads=QUERY_HEADS, cols=Cols("v"))  # [hv, n, n] @ [hv, n, dv]
    gate = rec.add("gate", silu(z.transpose(1, 0, 2)), heads=QUERY_HEADS, cols=Cols("v"))
    y_gated = rec.add(
        "Y_gated", rms_norm(y, w[a + "norm.weight"], args.rms_norm_eps) * gate,
        heads=QUERY_HEADS, cols=Cols("v"),
    )  # fmt: skip
    rec.output = att.merge_heads(y_gated) @ w[a + "out_proj.weight"].T  # [n, hv·dv] @ [hv·dv, d]
    rec.facts.update(
        d_k=dk, scale=dk**-0.5, kernel=args.linear_conv_kernel_dim, group=group, key_heads=hk
    )
    return rec


# --- the softmax layers ------------------------------------------------------------------------


def gated_attention(
    x: np.ndarray,
    w: WeightSource,
    a: str,
    args: Qwen3NextArgs,
    rot: rope.Rotary,
    tables: tuple[np.ndarray, np.ndarray],
    resid: np.ndarray,
) -> AttentionRecord:
    """One softmax layer (transformers' Qwen3NextAttention): the shared recipe's stages (Q_norm,
    K_norm with 1 + w, partial Q_rot, K_rot, W …, Y), then gate = σ(X·W_gate) and
    Y_gated = Y ⊙ gate; O = Y_gated_concat·W_o."""
    heads, kv, hd = args.num_attention_heads, args.kv_heads, args.head_size
    d = x.shape[1]
    bias = bool(args.attention_bias)
    # q_proj's rows, per head: hd query rows then hd gate rows
    q_rows = w[a + "q_proj.weight"].reshape(heads, 2, hd, d)
    wq, wg = (q_rows[:, j].reshape(heads * hd, d).T for j in (0, 1))
    bq = bg = None
    if bias:
        q_bias = w[a + "q_proj.bias"].reshape(heads, 2, hd)
        bq, bg = q_bias[:, 0].reshape(-1), q_bias[:, 1].reshape(-1)
    params = att.AttentionParams(
        wq,
        w[a + "k_proj.weight"].T,
        w[a + "v_proj.weight"].T,
        heads,
        kv,
        bq,
        w[a + "k_proj.bias"] if bias else None,
        w[a + "v_proj.bias"] if bias else None,
    )
    cos, sin = tables
    hook = qk_hook(SPEC, w, a, args.rms_norm_eps, rot, cos, sin)
    rec = multi_head_attention(x, params, att.causal_mask(len(x)), hook, resid=resid)
    gate_logits = att.linear(x, wg, bg)  # [n, d] @ [d, H·hd]
    gate = sigmoid(gate_logits)
    gate = rec.add("gate", att.split_heads(gate, heads), heads=QUERY_HEADS, cols=Cols("v"))
    y_gated = rec.add("Y_gated", rec["Y"] * gate, heads=QUERY_HEADS, cols=Cols("v"))
    rec.output = att.linear(
        att.merge_heads(y_gated), w[a + "o_proj.weight"].T, w[a + "o_proj.bias"] if bias else None
    )
    rec.facts["rope"] = True
    rec.facts["rotary_dim"] = rot.rotary_dim
    return rec


# --- the MLPs ----------------------------------------------------------------------------------


def _swiglu(x: np.ndarray, gate: np.ndarray, up: np.ndarray, down: np.ndarray) -> np.ndarray:
    """down(SiLU(x·gateᵀ) ⊙ x·upᵀ), torch Linear weights [out, in]."""
    return (silu(x @ gate.T) * (x @ up.T)) @ down.T


def _expert(w: WeightSource, m: str, e: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Expert e's gate, up and down weights ([inter, d], [inter, d], [d, inter]), read alone."""
    if _expert_names(m, w):
        gate_up = w.rows(m + "experts.gate_up_proj", [e])[0]  # [2·inter, d]
        gate, up = np.split(gate_up, 2, axis=0)
        return gate, up, w.rows(m + "experts.down_proj", [e])[0]
    p = m + f"experts.{e}."
    return w[p + "gate_proj.weight"], w[p + "up_proj.weight"], w[p + "down_proj.weight"]


def moe(
    w: WeightSource, m: str, x: np.ndarray, args: Qwen3NextArgs
) -> tuple[np.ndarray, np.ndarray]:
    """The sparse MoE block (transformers' Qwen3NextSparseMoeBlock): its output (n, d) and the
    routing (n, experts + 1): the weight each token's chosen experts get (zeros elsewhere), and
    in the last column the shared expert's gate σ(x·w_shared_gate). Each expert runs only on the
    tokens routed to it, its weights read only then."""
    probs = att.row_softmax(x @ w[m + "gate.weight"].T)  # [n, d] @ [d, E] -> [n, E]
    top = np.argsort(-probs, axis=-1, kind="stable")[:, : args.num_experts_per_tok]
    chosen = np.take_along_axis(probs, top, axis=-1)
    if args.norm_topk_prob:
        chosen = chosen / chosen.sum(axis=-1, keepdims=True)
    routing = np.zeros_like(probs)
    np.put_along_axis(routing, top, chosen, axis=-1)
    out = np.zeros_like(x)
    for e in (int(e) for e in np.flatnonzero((routing > 0).any(axis=0))):
        tokens = np.flatnonzero(routing[:, e] > 0)
        y = _swiglu(x[tokens], *_expert(w, m, e))
        out[tokens] += y * routing[tokens, e][:, None]
    s = m + "shared_expert."
    shared = _swiglu(
        x, w[s + "gate_proj.weight"], w[s + "up_proj.weight"], w[s + "down_proj.weight"]
    )
    shared_gate = sigmoid(x @ w[m + "shared_expert_gate.weight"].T)  # [n, d] @ [d, 1]
    return out + shared * shared_gate, np.concatenate([routing, shared_gate], axis=1)


def layers(w: WeightSource, x: np.ndarray, cfg: Config) -> Iterator[LayerRecord]:
    args, source = _args(cfg)
    eps = args.rms_norm_eps
    rot = _rotary(args, source)
    tables = rot.cos_sin(len(x))
    experts = (*(f"e{e}" for e in range(args.num_experts)), "shared")
    x = x.astype(np.float32, copy=False)
    for i, kind in enumerate(args.kinds):
        p = f"layers.{i}."
        a_in = rms_norm(x, w[p + "input_layernorm.weight"], eps, 1.0)
        if kind == LINEAR:
            record = gated_delta_net(a_in, w, p + "linear_attn.", args, x)
        else:
            record = gated_attention(a_in, w, p + "self_attn.", args, rot, tables, x)
        assert record.output is not None
        h = x + record.output
        m_in = rms_norm(h, w[p + "post_attention_layernorm.weight"], eps, 1.0)
        m = p + "mlp."
        if args.moe_layer(i):
            ff, routing = moe(w, m, m_in, args)
            record.add("router", routing, "relevance", None, QUERY, experts)
            record.facts["top_k"] = args.num_experts_per_tok
        else:
            ff = _swiglu(
                m_in, w[m + "gate_proj.weight"], w[m + "up_proj.weight"], w[m + "down_proj.weight"]
            )
        out = h + ff
        yield LayerRecord([record], out)
        x = out


def describe_qwen3_next(cfg: Config) -> dict[str, Any]:
    """The shared decoder description, with Qwen3-Next's layer kinds, linear layers and MLP."""
    args, _ = _args(cfg)
    kinds = args.kinds
    moe_layers = [i for i in range(args.num_hidden_layers) if args.moe_layer(i)]
    return {
        **describe(cfg),
        "layer_types": kinds,
        "linear_attention": {
            "layers": [i for i, k in enumerate(kinds) if k == LINEAR],
            "rule": "gated delta rule (Gated DeltaNet)",
            "key_heads": args.linear_num_key_heads,
            "value_heads": args.linear_num_value_heads,
            "key_head_dim": args.linear_key_head_dim,
            "value_head_dim": args.linear_value_head_dim,
            "conv_kernel": args.linear_conv_kernel_dim,
            "map": "mixing matrix A (signed; rows need not sum to 1): Y = A·V",
        },
        "output_gate": "softmax layers: Y ⊙ σ(gate), the gate from q_proj",
        "mlp": (
            f"mixture of {args.num_experts} experts, top {args.num_experts_per_tok}"
            f"{' (renormalised)' if args.norm_topk_prob else ''}, SwiGLU, plus a gated shared "
            f"expert, in layers {moe_layers}; dense SwiGLU elsewhere"
            if moe_layers
            else "SwiGLU (silu)"
        ),
    }


# --- words ---------------------------------------------------------------------------------------


def _linear(c: StageContext) -> bool:
    return c.record.kind == "linear"


def _catalogue(c: StageContext) -> tuple[str, str]:
    return CATALOGUE[c.stage.name](c)


def _projected(c: StageContext) -> tuple[str, str]:
    if not _linear(c):
        return _catalogue(c)
    letter = c.stage.name
    g, hk = c.record.facts["group"], c.record.facts["key_heads"]
    if letter == "V":
        return "X·W_v (from in_proj_qkvz)", (
            f"Values of head {c.h}: what each token writes into the layer's memory."
        )
    what = "what each token reads the memory with" if letter == "Q" else "where it writes"
    head = c.h // g if c.head is not None else 0
    share = f" Key head {head} serves value heads {head * g}–{(head + 1) * g - 1}." if g > 1 else ""
    return f"X·W_{letter.lower()} (from in_proj_qkvz)", (
        f"{'Queries' if letter == 'Q' else 'Keys'} of key head {head} (of {hk}): {what}.{share}"
    )


def _conv(c: StageContext) -> tuple[str, str]:
    letter = c.stage.name[0]
    size = c.record.facts["kernel"]
    return f"SiLU(causal_conv1d({letter}, {size} tokens))", (
        f"A short causal convolution: each token's {letter.lower()} becomes a learned mix of its "
        f"own and the {size - 1} tokens before it (per dimension), then SiLU."
    )


def _norm(c: StageContext) -> tuple[str, str]:
    if not _linear(c):
        return _catalogue(c)
    letter = c.stage.name[0]
    if letter == "Q":
        return "Q_conv/‖Q_conv‖ · 1/√d_k", (
            f"Queries scaled to length 1/√d_k = {c.record.facts['scale']:.3g}: a read of the "
            "memory never grows with the vector's size."
        )
    return "K_conv/‖K_conv‖", "Keys scaled to length 1, so a write replaces rather than piles up."


def _gates(c: StageContext) -> tuple[str, str]:
    decay, beta = c.data[:, 0], c.data[:, 1]
    return "[e^g, β] = [exp(−e^{A_log}·softplus(X·w_a + dt_bias)), σ(X·w_b)]", (
        f"Head {c.h}'s two gates per token. decay e^g (mean {decay.mean():.3g}) is how much of "
        f"its memory survives the token; β (mean {beta.mean():.3g}) how strongly the token "
        "overwrites what its key already holds. Both shape the mixing matrix W."
    )


def _mixing(c: StageContext) -> tuple[str, str]:
    if not _linear(c):
        return _catalogue(c)
    return "(Q·Kᵀ ⊙ D)·(I + tril₋₁(β·K·Kᵀ ⊙ D))⁻¹·diag(β)", (
        f"Mixing matrix of head {c.h} (linear attention: the gated delta rule has no softmax). "
        "Row i says how much of each earlier token's value (V_conv) makes up token i's output: "
        "Y = W·V exactly. The numbers can be negative and a row need not sum to 1 — they are "
        "not probabilities. D holds the decays between tokens; a later write with a similar key "
        "cancels part of an earlier one."
    )


def _mixed(c: StageContext) -> tuple[str, str]:
    if not _linear(c):
        return _catalogue(c)
    return "W·V_conv", (
        f"Head {c.h}'s output: each token's mix of the values by its row of the mixing matrix "
        "(what the recurrence S_t = e^{g_t}·S_{t−1} + k_t·β_t(v_t − e^{g_t}·S_{t−1}ᵀk_t)ᵀ, "
        "y_t = S_tᵀq_t gives)."
    )


def _gate(c: StageContext) -> tuple[str, str]:
    if _linear(c):
        return "SiLU(X·W_z)", (
            f"Output gate of head {c.h} (z from in_proj_qkvz): how much of each output dimension "
            "passes on."
        )
    return "σ(X·W_gate)", (
        f"Output gate of head {c.h}, made by q_proj next to the query: between 0 and 1 per "
        f"dimension, mean {c.data.mean():.3g}; it scales the head's output before W_o."
    )


def _gated(c: StageContext) -> tuple[str, str]:
    if _linear(c):
        return "RMSNorm(Y)·w ⊙ gate", (
            f"Head {c.h}'s output normalised (gated RMSNorm) and gated: what out_proj reads."
        )
    return "Y ⊙ gate", f"Head {c.h}'s output after its gate: what W_o reads."


def _rotated(c: StageContext) -> tuple[str, str]:
    letter = c.stage.name[0]
    r = c.record.facts["rotary_dim"]
    return f"RoPE({c.latest(letter)}[:{r}], position) ⧺ {c.latest(letter)}[{r}:]", (
        f"Rotary position embedding on the first {r} of {c.data.shape[-1]} dimensions only "
        "(partial rotary): those pairs turn with the token's position, the rest pass unrotated."
    )


def _qk_norm(c: StageContext) -> tuple[str, str]:
    if _linear(c):
        return _norm(c)
    letter = c.stage.name[0]
    return f"RMSNorm({c.latest(letter)})·(1 + w)", (
        f"Each {'query' if letter == 'Q' else 'key'} normalised to a fixed size (RMSNorm, its "
        "scale 1 + w) before positions are added."
    )


def _router(c: StageContext) -> tuple[str, str]:
    k = c.record.facts["top_k"]
    return f"top-{k}(softmax(post_attention_layernorm(h)·W_routerᵀ)) ⧺ σ(h·w_shared)", (
        f"The mixture-of-experts router: each token's weight on each of the "
        f"{c.data.shape[1] - 1} experts; only its top {k} run on it (their weights renormalised "
        "to sum to 1), the rest are 0. The last column is the shared expert's gate (0 to 1): "
        "every token goes through the shared expert, scaled by it."
    )


# The words of Qwen3-Next's own stages (the step catalogue in narrate.py has the shared ones).
STAGE_TEXTS = {
    "Q": _projected,
    "K": _projected,
    "V": _projected,
    "Q_conv": _conv,
    "K_conv": _conv,
    "V_conv": _conv,
    "Q_norm": _qk_norm,
    "K_norm": _qk_norm,
    "Q_rot": _rotated,
    "K_rot": _rotated,
    "gates": _gates,
    "W": _mixing,
    "Y": _mixed,
    "gate": _gate,
    "Y_gated": _gated,
    "router": _router,
}


FAMILY = dataclasses.replace(
    decoder_family(
        "qwen3_next",
        SPECS,
        multiplies="the projections (in_proj_qkvz and in_proj_ba in a linear layer)",
        stage_texts=STAGE_TEXTS,
        mask=(
            "The model reads left to right: a token may not look at later tokens, so their "
            "scores are −∞."
        ),
    ),
    dims=dims,
    check=check,
    layers=layers,
    describe=describe_qwen3_next,
    linear_values=False,
)
