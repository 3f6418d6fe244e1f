"""The mixture-of-experts MLP shared by the MoE decoders (Mixtral, Qwen3-MoE, OLMoE, Llama 4).

A router (a linear map, no bias) scores every expert for each token; the token's top-k experts
run on it and their outputs are summed with the router's weights:

  softmax_topk (Qwen3-MoE, OLMoE; Mixtral with renormalize): p = softmax(x·W_routerᵀ) over all
      experts, the top k of p kept (÷ their sum when norm_topk_prob says so, always for Mixtral)
  sigmoid_top1 (Llama 4): the top k router logits, each through a sigmoid; the token is scaled
      by its weight before it enters the expert (not the expert's output), and a shared expert
      runs on every token and is added.

Each expert is a SwiGLU MLP, down(act(gate(x)) ⊙ up(x)). An expert's matrices are read (and
dequantised, from GGUF) only when some token routes to it, and it runs only on those tokens.
The `router` stage (tokens × experts) holds the weight each token's chosen experts get, zeros
elsewhere. A family file says where its tensors are (`Experts`) and reads its config.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from attn_cli.attention import row_softmax
from attn_cli.errors import InputError
from attn_cli.models._decoder import GGUF_LAYER_TENSORS, DecoderArgs
from attn_cli.models.args import FLAG, POSITIVE_INT, arg
from attn_cli.models.layers import activation
from attn_cli.models.registry import ABSENT, GGUFSources, WeightSource
from attn_cli.models.weights import expect_shape
from attn_cli.records import QUERY, AttentionRecord

if TYPE_CHECKING:
    from attn_cli.narrate import StageContext

Routing = Literal["softmax_topk", "sigmoid_topk"]


@dataclass(frozen=True)
class Experts:
    """Where one family keeps a MoE layer's tensors, under layers.{i}.: the router's [E, d]
    weight, and each expert's gate, up and down projections ({e}: the expert's number),
    torch Linear [out, in]."""

    router: str  # "mlp.gate.weight"
    gate: str  # "mlp.experts.{e}.gate_proj.weight"
    up: str
    down: str


# transformers' names in Qwen3-MoE and OLMoE: mlp.gate, mlp.experts.{e}.gate_proj/up_proj/down_proj
MLP_EXPERTS = Experts(
    router="mlp.gate.weight",
    gate="mlp.experts.{e}.gate_proj.weight",
    up="mlp.experts.{e}.up_proj.weight",
    down="mlp.experts.{e}.down_proj.weight",
)


def check_top_k(source: str, top_k: int, experts: int, experts_key: str) -> None:
    """Refuse a config whose tokens would each pick more experts (num_experts_per_tok) than
    there are (`experts`, the config's `experts_key`)."""
    if top_k > experts:
        raise InputError(
            f"{source}: num_experts_per_tok {top_k} is more than {experts_key} {experts}"
        )


@dataclass(frozen=True)
class MoE:
    """One MoE layer's settings, read from the family's config."""

    experts: int
    top_k: int
    inter: int  # each expert's intermediate size
    routing: Routing = "softmax_topk"
    normalize: bool = False  # divide the top-k probabilities by their sum
    act: str = "silu"


@dataclass(frozen=True, kw_only=True)
class SoftmaxExpertsArgs(DecoderArgs):
    """The MoE keys of Qwen3-MoE's and OLMoE's configs (a family changes the defaults): the
    expert count as num_experts (hub checkpoints) or num_local_experts (transformers 5 writes
    it; it wins when given), the top k, and whether the top k's weights are renormalised."""

    num_experts_per_tok: int = arg(POSITIVE_INT, 8)
    num_experts: int = arg(POSITIVE_INT, 64)
    num_local_experts: int | None = arg(POSITIVE_INT, None, nullable=True)
    norm_topk_prob: bool | None = arg(FLAG, False, nullable=True)

    @property
    def experts(self) -> int:
        return self.num_local_experts or self.num_experts

    def validate(self, source: str) -> None:
        super().validate(source)
        check_top_k(source, self.num_experts_per_tok, self.experts, "num_experts")

    def moe(self, inter: int) -> MoE:
        """The MoE layers' settings, each expert a SwiGLU MLP `inter` wide."""
        return MoE(
            experts=self.experts,
            top_k=self.num_experts_per_tok,
            inter=inter,
            normalize=bool(self.norm_topk_prob),
            act=str(self.hidden_act or "silu"),
        )


def route(logits: np.ndarray, moe: MoE) -> np.ndarray:
    """(n, E) router logits -> (n, E) weights: each token's top-k experts' weights, 0 elsewhere
    (ties go to the lower expert number, as torch.topk on CPU)."""
    scores = row_softmax(logits) if moe.routing == "softmax_topk" else logits
    top = np.argsort(-scores, axis=-1, kind="stable")[:, : moe.top_k]
    chosen = np.take_along_axis(scores, top, axis=-1)
    if moe.routing == "sigmoid_topk":
        chosen = np.float32(1.0) / (np.float32(1.0) + np.exp(-chosen))
    elif moe.normalize:
        chosen = chosen / chosen.sum(axis=-1, keepdims=True)
    routing = np.zeros_like(logits)
    np.put_along_axis(routing, top, chosen.astype(logits.dtype), axis=-1)
    return routing


def swiglu(
    x: np.ndarray,
    gate: np.ndarray,
    up: np.ndarray,
    down: np.ndarray,
    act: Callable[[np.ndarray], np.ndarray],
) -> np.ndarray:
    """down(act(x·gateᵀ) ⊙ x·upᵀ), torch Linear weights [out, in]."""
    return (act(x @ gate.T) * (x @ up.T)) @ down.T  # [t, d] @ [d, I] … [t, I] @ [I, d]


def moe_mlp(
    w: WeightSource, p: str, x: np.ndarray, moe: MoE, names: Experts
) -> tuple[np.ndarray, np.ndarray]:
    """The MoE MLP of the layer under prefix `p` ("layers.{i}."): its output (n, d) and the
    routing (n, E)."""
    routing = route(x @ w[p + names.router].T, moe)  # [n, d] @ [d, E] -> [n, E]

    def load(e: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        gate, up, down = (w[p + n.format(e=e)] for n in (names.gate, names.up, names.down))
        return gate, up, down

    return run_experts(x, routing, moe, load), routing


def layer_mlp(
    w: WeightSource, i: int, x: np.ndarray, moe: MoE, names: Experts, record: AttentionRecord
) -> np.ndarray:
    """Layer i's MoE MLP; its `router` stage goes into the layer's record."""
    out, routing = moe_mlp(w, f"layers.{i}.", x, moe, names)
    add_router(record, routing, moe)
    return out


def decoder_mlp(
    moe_of: Callable[[Any], MoE], names: Experts
) -> tuple[Callable[..., np.ndarray], Callable[[WeightSource, int, Any], None]]:
    """A decoder Spec's `mlp` and `mlp_check` for a family whose every layer is a MoE layer
    (`moe_of(args)`: its settings; `names`: where its tensors are)."""

    def mlp(
        w: WeightSource, i: int, x: np.ndarray, args: Any, record: AttentionRecord
    ) -> np.ndarray:
        return layer_mlp(w, i, x, moe_of(args), names, record)

    def mlp_check(w: WeightSource, i: int, args: Any) -> None:
        check_experts(w, f"layers.{i}.", args.hidden_size, moe_of(args), names)

    return mlp, mlp_check


def run_experts(
    x: np.ndarray,
    routing: np.ndarray,
    moe: MoE,
    load: Callable[[int], tuple[np.ndarray, np.ndarray, np.ndarray]],
) -> np.ndarray:
    """Σ over each token's chosen experts of weight × expert(x) (Llama 4: expert(weight × x)).
    `load(e)` reads expert e's gate, up and down matrices (torch Linear [out, in]): called only
    for experts some token routes to, and each runs on those tokens only."""
    act = activation(moe.act)
    out = np.zeros_like(x)
    for e in (int(e) for e in np.flatnonzero((routing > 0).any(axis=0))):
        tokens = np.flatnonzero(routing[:, e] > 0)
        gate, up, down = load(e)
        weight = routing[tokens, e][:, None]
        if moe.routing == "sigmoid_topk":  # Llama 4 scales the token before the expert
            out[tokens] += swiglu(x[tokens] * weight, gate, up, down, act)
        else:
            out[tokens] += swiglu(x[tokens], gate, up, down, act) * weight
    return out


def check_experts(w: WeightSource, p: str, d: int, moe: MoE, names: Experts) -> None:
    """Every MoE tensor's shape under prefix `p`."""
    expect_shape(w, p + names.router, (moe.experts, d))
    for e in range(moe.experts):
        expect_shape(w, p + names.gate.format(e=e), (moe.inter, d))
        expect_shape(w, p + names.up.format(e=e), (moe.inter, d))
        expect_shape(w, p + names.down.format(e=e), (d, moe.inter))


def dense_mlp(w: WeightSource, p: str, x: np.ndarray, act: str) -> np.ndarray:
    """A dense SwiGLU MLP under prefix `p` ("layers.{i}.mlp.")."""
    return swiglu(
        x, w[p + "gate_proj.weight"], w[p + "up_proj.weight"], w[p + "down_proj.weight"],
        activation(act),
    )  # fmt: skip


def check_dense(w: WeightSource, p: str, d: int, inter: int) -> None:
    expect_shape(w, p + "gate_proj.weight", (inter, d))
    expect_shape(w, p + "up_proj.weight", (inter, d))
    expect_shape(w, p + "down_proj.weight", (d, inter))


def add_router(record: AttentionRecord, routing: np.ndarray, moe: MoE) -> None:
    """The `router` stage of a MoE layer (tokens × experts) and what the words need."""
    experts = tuple(f"e{e}" for e in range(moe.experts))
    record.add("router", routing, "relevance", None, QUERY, experts)
    record.facts.update(top_k=moe.top_k, routing=moe.routing, normalize=moe.normalize)


def router_text(c: StageContext) -> tuple[str, str]:
    """The words of the `router` stage."""
    k, facts = c.record.facts["top_k"], c.record.facts
    n = c.data.shape[1]
    if facts["routing"] == "sigmoid_topk":
        return f"σ(top-{k}(post_attention_layernorm(h)·W_routerᵀ))", (
            f"The mixture-of-experts router: each token's weight on each of the {n} experts. "
            f"Only its top {k} run on it, each on the token scaled by its weight (a sigmoid of "
            "its router logit, so they need not sum to 1); a shared expert runs on every token."
        )
    norm = (
        "renormalised to sum to 1"
        if facts["normalize"]
        else "not renormalised: they sum to less than 1"
    )
    return f"top-{k}(softmax(post_attention_layernorm(h)·W_routerᵀ))", (
        f"The mixture-of-experts router: each token's weight on each of the {n} experts "
        f"(a softmax over all of them). Only its top {k} run on it, their outputs weighted by "
        f"these numbers ({norm}); the rest are 0 and are never computed."
    )


def describe_moe(moe: MoE, dense: list[int] | None = None) -> str:
    """The `mlp` entry of a MoE family's description."""
    kind = (
        f"sigmoid of the top {moe.top_k}, input scaled, plus a shared expert"
        if moe.routing == "sigmoid_topk"
        else f"softmax, top {moe.top_k}{', renormalised' if moe.normalize else ''}"
    )
    text = f"mixture of {moe.experts} SwiGLU experts ({moe.act}), {kind}"
    return text if not dense else f"{text}; dense SwiGLU MLP on layers {dense}"


def gguf_layer_tensors(
    names: Experts, extra: Mapping[str, GGUFSources] | None = None
) -> dict[str, GGUFSources]:
    """A MoE layer's GGUF tensors besides the experts: the decoder's attention and norms (not
    its dense MLP), `extra`, and the router (ffn_gate_inp)."""
    attention = {k: v for k, v in GGUF_LAYER_TENSORS.items() if not k.startswith("mlp.")}
    return {**attention, **(extra or {}), names.router: "ffn_gate_inp.weight"}


def gguf_experts(names: Experts) -> dict[str, str]:
    """llama.cpp's stacked experts ([experts, out, in]) for each expert matrix."""
    return {
        names.gate: "ffn_gate_exps.weight",
        names.up: "ffn_up_exps.weight",
        names.down: "ffn_down_exps.weight",
    }


def gguf_metadata(experts_key: str) -> dict[str, tuple[str, object]]:
    """The GGUF metadata keys that give the expert count (into the config's `experts_key`) and
    num_experts_per_tok."""
    return {
        "expert_count": (experts_key, ABSENT),
        "expert_used_count": ("num_experts_per_tok", ABSENT),
    }
