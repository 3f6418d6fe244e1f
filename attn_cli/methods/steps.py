"""One entry point for the API and the CLI: method names + a model run -> TraceSteps.

parts = ModelParts(family, weights, config, tokenizer)
layer_steps = forward(parts, ids)
steps, notes = method_steps(["rollout", "alti"], layer_steps, labels, ids, parts)
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from attn_cli.errors import InputError
from attn_cli.methods import METHODS
from attn_cli.methods.alti import PostNorm, alti_layer, alti_rollout, alti_steps
from attn_cli.methods.detectors import detect, detector_steps, repeated_random_tokens
from attn_cli.methods.flow import MAX_FLOW_TOKENS, attention_flow, flow_steps
from attn_cli.methods.lens import lens_steps, logit_lens
from attn_cli.methods.norms import attention_norms, norms_steps, summed_attention_norms
from attn_cli.methods.rollout import rollout, rollout_steps
from attn_cli.models.registry import Config, Family, LayerSteps, WeightSource
from attn_cli.trace import TraceStep


@dataclass(frozen=True)
class ModelParts:
    """What the methods need from a loaded model."""

    family: Family
    weights: WeightSource
    config: Config
    tokenizer: Any = None  # a `tokenizers.Tokenizer`: decodes lens candidates, special tokens
    # Post-norm families: layer i's norm on (residual + attention output) as (γ, β, ε); taken
    # from `Family.attn_out_norm` when not given here.
    attn_out_norm: Callable[[WeightSource, int, Config], Any] | None = None

    def decode(self, token_id: int) -> str:
        if self.tokenizer is None:
            return f"#{token_id}"
        return str(self.tokenizer.decode([int(token_id)], skip_special_tokens=False))

    def special_wrap(self) -> tuple[list[int], list[int]]:
        """The special ids the tokenizer puts before and after a text ([CLS] … [SEP]). A decoder
        whose tokenizer adds nothing gets its config's BOS in front, as TransformerLens does."""
        prefix: list[int] = []
        suffix: list[int] = []
        if self.tokenizer is not None:
            enc = self.tokenizer.encode("a", add_special_tokens=True)
            mask = list(enc.special_tokens_mask)
            first = mask.index(0) if 0 in mask else len(mask)
            last = len(mask) - mask[::-1].index(0) if 0 in mask else len(mask)
            prefix, suffix = list(enc.ids[:first]), list(enc.ids[last:])
        bos = self.config.get("bos_token_id")
        if not prefix and self.family.causal and isinstance(bos, int):
            prefix = [bos]
        return prefix, suffix


@dataclass(frozen=True)
class MethodOptions:
    top_k: int = 5  # lens: candidates per layer
    positions: Sequence[int] | None = None  # lens: positions (default: the last token)
    flow_max_tokens: int = MAX_FLOW_TOKENS
    induction_length: int = 25  # detectors: length of the random sequence that is repeated
    seed: int = 0
    exclude_bos: bool = False
    exclude_current_token: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


def forward(parts: ModelParts, ids: list[int]) -> list[LayerSteps]:
    """Every layer of the model on `ids`."""
    x = parts.family.embed(parts.weights, ids, parts.config)
    return list(parts.family.layers(parts.weights, x, parts.config))


def parse_methods(spec: str | Iterable[str]) -> list[str]:
    """'rollout,norms' or ['rollout', 'norms'] -> checked names in catalogue order; 'all'."""
    names = [s.strip() for s in spec.split(",")] if isinstance(spec, str) else list(spec)
    names = [n for n in names if n]
    if names == ["all"]:
        return [m for m in METHODS if m != "flow"]
    unknown = [n for n in names if n not in METHODS]
    if unknown:
        raise InputError(f"unknown method {unknown[0]!r} (known: {', '.join(METHODS)}, all)")
    return [m for m in METHODS if m in names]


def attention_stack(layer_steps: Sequence[LayerSteps]) -> np.ndarray:
    """(L, H, n, n) attention weights."""
    return np.stack([ls.attn.attn.W for ls in layer_steps])


def post_norms(parts: ModelParts, n_layers: int) -> list[PostNorm | None]:
    """Each layer's norm after the attention, or None for pre-norm layers.

    A family whose `norm` mentions "post" provides it as `Family.attn_out_norm(w, i, cfg)`,
    returning (γ, β, ε) for a LayerNorm on (residual + O) (BERT), or a `PostNorm` (e.g. Gemma's
    RMSNorm on O alone: PostNorm(1 + w, None, ε, rms=True, applies_to="attn"))."""
    fam = parts.family
    if "post" not in fam.norm.lower():
        return [None] * n_layers
    hook = parts.attn_out_norm or getattr(fam, "attn_out_norm", None)
    if hook is None:
        raise InputError(
            f"ALTI: the {fam.name} family does not expose its post-attention norm (attn_out_norm)"
        )
    out: list[PostNorm | None] = []
    for i in range(n_layers):
        got = hook(parts.weights, i, parts.config)
        out.append(got if isinstance(got, PostNorm) else PostNorm(got[0], got[1], float(got[2])))
    return out


def method_steps(
    methods: Sequence[str],
    layer_steps: Sequence[LayerSteps],
    labels: Sequence[str],
    ids: Sequence[int],
    parts: ModelParts | None = None,
    layers: Sequence[int] | None = None,
    heads: Sequence[int] | None = None,
    options: MethodOptions | None = None,
) -> tuple[list[TraceStep], list[str]]:
    """The steps of every asked method, and notes for the trace. `layers`/`heads` choose which
    layers/heads get steps (rollouts always run through every earlier layer)."""
    opt = options or MethodOptions()
    n_layers = len(layer_steps)
    shown = list(range(n_layers)) if layers is None else list(layers)
    steps: list[TraceStep] = []
    notes: list[str] = []
    for m in parse_methods(methods):
        if m == "rollout":
            steps += rollout_steps(rollout(ls.attn.attn.W for ls in layer_steps), labels, shown)
        elif m == "flow":
            top = max(shown)
            f = attention_flow(
                (ls.attn.attn.W for ls in layer_steps[: top + 1]), max_tokens=opt.flow_max_tokens
            )
            steps += flow_steps(f, labels, top)
        elif m == "norms":
            for i in shown:
                a = layer_steps[i].attn
                steps += norms_steps(
                    attention_norms(a.attn.W, a.V, a.params),
                    summed_attention_norms(a.attn.W, a.V, a.params),
                    labels,
                    i,
                    heads,
                )
        elif m == "alti":
            if parts is None:
                raise InputError("ALTI needs a model")
            norms = post_norms(parts, n_layers)
            per_layer = []
            for ls, norm in zip(layer_steps, norms, strict=True):
                a = ls.attn
                assert a.O is not None
                per_layer.append(alti_layer(a.attn.W, a.V, a.params, ls.resid, a.O, norm))
            steps += alti_steps(per_layer, alti_rollout(per_layer), labels, shown)
        elif m == "lens":
            steps += _lens(parts, layer_steps, labels, opt, shown)
        elif m == "detectors":
            if parts is None:
                raise InputError("head detectors need a model")
            prefix, suffix = parts.special_wrap()
            dims = parts.family.dims(parts.config)
            length = opt.induction_length
            if dims.max_positions is not None:  # the repeated sequence must fit the positions
                length = min(length, (dims.max_positions - len(prefix) - len(suffix)) // 2)
            if length < 2:
                raise InputError(
                    "head detectors: the model has too few positions for a repeated sequence"
                )
            seq = repeated_random_tokens(length, dims.vocab, opt.seed, prefix=prefix)
            seq += suffix
            attn = attention_stack(forward(parts, seq))
            steps += detector_steps(
                detect(
                    attn,
                    seq,
                    exclude_bos=opt.exclude_bos,
                    exclude_current_token=opt.exclude_current_token,
                )
            )
            notes.append(
                f"Head detectors ran on {length} random tokens repeated twice "
                f"(seed {opt.seed}), not on the text."
            )
    return steps, notes


def _lens(
    parts: ModelParts | None,
    layer_steps: Sequence[LayerSteps],
    labels: Sequence[str],
    opt: MethodOptions,
    shown: Sequence[int],
) -> list[TraceStep]:
    logits = None if parts is None else parts.family.logits
    if parts is None or logits is None:
        name = "this model" if parts is None else f"the {parts.family.name} family"
        raise InputError(f"the logit lens needs a language-model head, which {name} has not")
    fam, w, cfg = parts.family, parts.weights, parts.config
    result = logit_lens(
        [ls.out for ls in layer_steps],
        lambda h: fam.final(w, h, cfg),
        lambda h: logits(w, h, cfg),
        opt.positions,
        opt.top_k,
    )
    return lens_steps(result, labels, parts.decode, shown)
