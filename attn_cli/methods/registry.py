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

from attn_cli.errors import InputError, opt
from attn_cli.methods import METHODS
from attn_cli.methods.alti import PostNorm, alti_layer, alti_step
from attn_cli.methods.detectors import detect, detector_steps, repeated_random_tokens
from attn_cli.methods.flow import MAX_FLOW_TOKENS, attention_flow, flow_steps
from attn_cli.methods.lens import LensResult, lens_steps, logit_lens
from attn_cli.methods.norms import attention_norms, norms_steps, summed_attention_norms
from attn_cli.methods.rollout import residual_attention, rollout_step
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


def method_options(**kwargs: Any) -> MethodOptions:
    """MethodOptions from keyword arguments, an unknown one named in an InputError."""
    known = [f for f in MethodOptions.__dataclass_fields__ if f != "extra"]
    for k in kwargs:
        if k not in known:
            raise InputError(f"{opt(k)}: not a method option ({', '.join(known)})")
    return MethodOptions(**kwargs)


def step_names(methods: str | Sequence[str]) -> list[str]:
    """The step names the methods produce (for --steps / export defaults)."""
    names = {
        "rollout": ["rollout"],
        "flow": ["flow"],
        "norms": ["norms", "norms_sum"],
        "alti": ["alti", "alti_rollout"],
        "lens": ["lens", "prediction"],
        "detectors": ["prev_token", "duplicate_token", "induction"],
    }
    return [n for m in parse_methods(methods) for n in names[m]]


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
        raise InputError(
            f"{opt('methods', spec, '--method')}: unknown method {unknown[0]!r} "
            f"(known: {', '.join(METHODS)}, all)"
        )
    return [m for m in METHODS if m in names]


def attention_stack(layer_steps: Sequence[LayerSteps]) -> np.ndarray:
    """(L, H, n, n) attention weights."""
    return np.stack([ls.attn.attn.W for ls in layer_steps])


def post_norm(parts: ModelParts, i: int) -> PostNorm | None:
    """Layer i's norm after the attention, or None for a pre-norm layer.

    A family whose `norm` placement is not "pre" provides it as `Family.attn_out_norm(w, i, cfg)`,
    returning (γ, β, ε) for a LayerNorm on (residual + O) (BERT), (γ, β, ε, rms, applies_to)
    otherwise (Gemma 2/3's RMSNorm on O alone: (1 + w, None, ε, True, "attn")), a `PostNorm`,
    or None for a layer without one."""
    fam = parts.family
    if fam.norm == "pre":
        return None
    hook = parts.attn_out_norm or fam.attn_out_norm
    if hook is None:
        raise InputError(
            f"ALTI: the {fam.name} family does not expose its post-attention norm (attn_out_norm)"
        )
    got = hook(parts.weights, i, parts.config)
    if got is None or isinstance(got, PostNorm):  # None: this layer (model) has none
        return got
    # a plain tuple, so families need not import this package: (γ, β, ε[, rms, applies_to])
    return PostNorm(got[0], got[1], float(got[2]), *got[3:])


class MethodRun:
    """The methods' state while a model runs, fed one layer at a time, so a trace never has to
    keep every layer's intermediates: per layer it keeps one (n, n) rollout, the ALTI
    contributions, the rows of the residual stream the lens reads, and (flow only, ≤ 32
    tokens) the attention weights.

        run = MethodRun(["rollout", "alti"], labels, ids, parts)
        for i, layer in enumerate(family.layers(w, x, cfg)):
            run.add(i, layer)
        steps, notes = run.finish()

    Options are checked here, when the run is made. `layers`/`heads` choose which layers and
    heads get steps; rollouts and flow always run through every earlier layer, so every layer
    must be added, in order.
    """

    def __init__(
        self,
        methods: str | Sequence[str],
        labels: Sequence[str],
        ids: Sequence[int],
        parts: ModelParts | None = None,
        layers: Sequence[int] | None = None,
        heads: Sequence[int] | None = None,
        options: MethodOptions | None = None,
    ) -> None:
        self.methods = parse_methods(methods)
        self.labels, self.ids, self.parts = list(labels), list(ids), parts
        self.opt = options or MethodOptions()
        self.heads = None if heads is None else list(heads)
        self.layers = None if layers is None else list(layers)
        n = len(self.labels)
        m = set(self.methods)
        if self.opt.top_k < 1:
            raise InputError(f"{opt('top_k', self.opt.top_k)}: takes a number ≥ 1")
        if m & {"alti", "lens", "detectors"} and parts is None:
            raise InputError(
                f"{', '.join(sorted(m & {'alti', 'lens', 'detectors'}))}: needs a model"
            )
        if m & {"norms", "alti"} and parts is not None and not parts.family.linear_values:
            raise InputError(
                f"{', '.join(sorted(m & {'norms', 'alti'}))}: the {parts.family.name} family's "
                "attention output is not a linear mix of its value vectors"
            )
        if "alti" in m:
            assert parts is not None
            post_norm(parts, 0)  # a post-norm family without its norm: refused now, not mid-run
        if "lens" in m:
            assert parts is not None
            if not parts.family.lm_head:
                raise InputError(
                    f"the logit lens needs a language-model head, which the {parts.family.name} "
                    "family has not"
                )
            for pos in self.opt.positions or ():
                if not -n <= pos < n:
                    raise InputError(
                        f"position {pos}: the input has {n} tokens (0 … {n - 1}, or −1 for the last)"
                    )
        if "flow" in m and n > self.opt.flow_max_tokens:
            raise InputError(
                f"attention flow solves {n}² max-flow problems and is limited to "
                f"{self.opt.flow_max_tokens} tokens (this input has {n}); use rollout for longer inputs"
            )
        self._norms: list[PostNorm | None] | None = None
        self._rolled: np.ndarray | None = None
        self._alti: np.ndarray | None = None
        self._weights: list[np.ndarray] = []
        self._hidden: list[np.ndarray] = []
        self._steps: list[TraceStep] = []
        self._count = 0

    def _shown(self, i: int) -> bool:
        return self.layers is None or i in self.layers

    def add(self, i: int, ls: LayerSteps) -> None:
        """Layer i's results; layers must come in order 0, 1, 2 …"""
        if i != self._count:
            raise ValueError(f"layer {i} added after {self._count} layers")
        self._count += 1
        a = ls.attn
        w = a.attn.W
        m = self.methods
        if "rollout" in m:
            a_hat = residual_attention(w)
            self._rolled = a_hat if self._rolled is None else a_hat @ self._rolled
            if self._shown(i):
                self._steps.append(rollout_step(self._rolled, self.labels, i))
        if "flow" in m:
            self._weights.append(w)
        if "norms" in m and self._shown(i):
            self._steps += norms_steps(
                attention_norms(w, a.V, a.params),
                summed_attention_norms(w, a.V, a.params),
                self.labels,
                i,
                self.heads,
            )
        if "alti" in m:
            assert self.parts is not None and a.O is not None
            norm = post_norm(self.parts, i)
            c = alti_layer(w, a.V, a.params, ls.resid, a.O, norm)
            self._alti = c if self._alti is None else c @ self._alti
            if self._shown(i):
                self._steps.append(alti_step("alti", c, self.labels, i))
                self._steps.append(alti_step("alti_rollout", self._alti, self.labels, i))
        if "lens" in m:
            n = len(self.labels)
            pos = [n - 1] if self.opt.positions is None else [p % n for p in self.opt.positions]
            self._hidden.append(ls.out[pos])

    def finish(self) -> tuple[list[TraceStep], list[str]]:
        """Every step, in method order then layer order, and notes for the trace."""
        steps: list[TraceStep] = []
        notes: list[str] = []
        by_method = {
            name: [s for s in self._steps if _method_of(s.name) == name] for name in self.methods
        }
        for m in self.methods:
            steps += by_method.get(m, [])
            if m == "flow" and self._weights:
                top = self._count - 1 if self.layers is None else max(self.layers)
                f = attention_flow(self._weights[: top + 1], max_tokens=self.opt.flow_max_tokens)
                steps += flow_steps(f, self.labels, top)
            elif m == "lens" and self._hidden:
                steps += self._lens()
            elif m == "detectors":
                d_steps, note = self._detectors()
                steps += d_steps
                notes.append(note)
        return steps, notes

    def _lens(self) -> list[TraceStep]:
        assert self.parts is not None
        fam, w, cfg = self.parts.family, self.parts.weights, self.parts.config
        logits = fam.logits
        assert logits is not None
        n = len(self.labels)
        pos = [n - 1] if self.opt.positions is None else [p % n for p in self.opt.positions]
        result = logit_lens(
            self._hidden,  # already only the asked positions' rows
            lambda h: fam.final(w, h, cfg),
            lambda h: logits(w, h, cfg),
            list(range(len(pos))),
            self.opt.top_k,
        )
        return lens_steps(
            LensResult(pos, result.ids, result.probs), self.labels, self.parts.decode, self.layers
        )

    def _detectors(self) -> tuple[list[TraceStep], str]:
        parts = self.parts
        assert parts is not None
        prefix, suffix = parts.special_wrap()
        dims = parts.family.dims(parts.config)
        length = self.opt.induction_length
        if dims.max_positions is not None:  # the repeated sequence must fit the positions
            length = min(length, (dims.max_positions - len(prefix) - len(suffix)) // 2)
        if length < 2:
            raise InputError(
                "head detectors: the model has too few positions for a repeated sequence"
            )
        seq = repeated_random_tokens(length, dims.vocab, self.opt.seed, prefix=prefix) + suffix
        scores = detect(
            attention_stack(forward(parts, seq)),
            seq,
            exclude_bos=self.opt.exclude_bos,
            exclude_current_token=self.opt.exclude_current_token,
        )
        note = (
            f"Head detectors ran on {length} random tokens repeated twice (seed {self.opt.seed}), "
            "not on the text."
        )
        return detector_steps(scores), note


# Which method made a step (lens@3 -> lens).
_STEP_METHOD = {
    "norms_sum": "norms",
    "alti_rollout": "alti",
    "prediction": "lens",
    "prev_token": "detectors",
    "duplicate_token": "detectors",
    "induction": "detectors",
}


def _method_of(step_name: str) -> str:
    base = step_name.split("@")[0]
    return _STEP_METHOD.get(base, base)


def method_steps(
    methods: str | Sequence[str],
    layer_steps: Sequence[LayerSteps],
    labels: Sequence[str],
    ids: Sequence[int],
    parts: ModelParts | None = None,
    layers: Sequence[int] | None = None,
    heads: Sequence[int] | None = None,
    options: MethodOptions | None = None,
) -> tuple[list[TraceStep], list[str]]:
    """The steps of every asked method for layers already computed, and notes for the trace."""
    run = MethodRun(methods, labels, ids, parts, layers, heads, options)
    for i, ls in enumerate(layer_steps):
        run.add(i, ls)
    return run.finish()
