"""One entry point for the API and the CLI: method names + a model run -> TraceSteps. What each
method needs is declared in the catalogue (methods/__init__.py); a method asked for by name where
that is missing is refused in one line, and "all" leaves it out with a note.

parts = ModelParts(family, weights, config, tokenizer)
layers = forward(parts, ids)          # a LayerRecord per layer (attn_cli.records)
steps, notes = method_steps(["rollout", "alti"], layers, labels, ids, parts)
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from attn_cli.errors import InputError, opt
from attn_cli.methods import BY_NAME, CATALOGUE, METHODS, NEEDS, Method
from attn_cli.methods.alti import PostNorm, alti_layer, alti_step
from attn_cli.methods.detectors import detect, detector_steps, repeated_random_tokens
from attn_cli.methods.flow import MAX_FLOW_TOKENS, attention_flow, flow_steps
from attn_cli.methods.lens import LensResult, lens_steps, logit_lens
from attn_cli.methods.norms import attention_norms, norms_steps, summed_attention_norms
from attn_cli.methods.rollout import residual_attention, rollout_step
from attn_cli.models.registry import Config, Family, WeightSource
from attn_cli.records import AttentionRecord, LayerRecord
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
    return [n for m in parse_methods(methods) for n in BY_NAME[m].steps]


def forward(parts: ModelParts, ids: list[int]) -> list[LayerRecord]:
    """Every layer of the model on `ids`."""
    x = parts.family.embed(parts.weights, ids, parts.config)
    return list(parts.family.layers(parts.weights, x, parts.config))


def _names(spec: str | Iterable[str]) -> list[str]:
    names = [s.strip() for s in spec.split(",")] if isinstance(spec, str) else list(spec)
    return [n for n in names if n]


def parse_methods(spec: str | Iterable[str]) -> list[str]:
    """'rollout,norms' or ['rollout', 'norms'] -> checked names in catalogue order; 'all': every
    method `in_all` (`select_methods` leaves out those a model cannot run)."""
    names = _names(spec)
    if names == ["all"]:
        return [m.name for m in CATALOGUE if m.in_all]
    unknown = [n for n in names if n not in METHODS]
    if unknown:
        raise InputError(
            f"{opt('methods', spec, '--method')}: unknown method {unknown[0]!r} "
            f"(known: {', '.join(METHODS)}, all)"
        )
    return [m for m in METHODS if m in names]


def family_capabilities(family: Family) -> dict[str, bool]:
    """What a family offers the methods, by the keys of `NEEDS`: its declared capabilities."""
    return {
        "lm_head": family.lm_head,
        "linear_values": family.linear_values,
        # a norm after the attention: BERT's post-LN, Gemma 2/3's sandwich
        "post_norm": family.norm != "pre",
        "text": family.vision is None,
    }


def _missing(need: str, parts: ModelParts | None) -> bool:
    if need == "model":
        return parts is None
    if need == "scipy":
        return importlib.util.find_spec("scipy") is None
    if parts is None:  # what a model would have to offer: nothing to check without one
        return False
    offers = family_capabilities(parts.family)
    if need == "post_norm":  # needed only by a post-norm family, which must expose it
        hook = parts.attn_out_norm or parts.family.attn_out_norm
        return offers["post_norm"] and hook is None
    return not offers[need]


def refusal(method: Method, parts: ModelParts | None) -> str | None:
    """Why `method` cannot run with this model, in one line naming what is missing; None when
    it can."""
    for need in method.needs:
        if _missing(need, parts):
            if parts is None or need in ("model", "scipy"):
                return f"{method.name} needs {NEEDS[need]}"
            return (
                f"{method.name} needs {NEEDS[need]}, which the {parts.family.name} family has not"
            )
    return None


def select_methods(
    spec: str | Iterable[str], parts: ModelParts | None
) -> tuple[list[str], str | None]:
    """The methods to run and a note on those 'all' left out (None if none). A method asked
    for by name that cannot run here is an InputError; 'all' means every method that can."""
    names = parse_methods(spec)
    if _names(spec) != ["all"]:
        for name in names:
            why = refusal(BY_NAME[name], parts)
            if why is not None:
                raise InputError(why)
        return names, None
    run: list[str] = []
    left_out: list[str] = []
    for method in CATALOGUE:
        why = method.not_in_all if not method.in_all else refusal(method, parts)
        if why is None:
            run.append(method.name)
        else:
            left_out.append(f"{method.name} ({why.removeprefix(method.name + ' ')})")
    note = None
    if left_out:
        note = f"{opt('methods', 'all', '--method')} left out: {'; '.join(left_out)}"
    return run, note


def attention_shares(record: AttentionRecord) -> np.ndarray:
    """A block's map as shares of attention, for rollout, flow and the head detectors: the
    weights themselves, or for a signed mixing map (linear attention) each value's share of its
    row's absolute total, as the summary's entropy and patterns read it."""
    w = record.weights
    if record.map_kind != "mixing":
        return w
    a = np.abs(w)
    total = a.sum(axis=-1, keepdims=True)
    return np.divide(a, total, out=np.zeros_like(a), where=total > 0)


def attention_stack(layers: Sequence[LayerRecord]) -> np.ndarray:
    """(L, H, n, n) attention shares (`attention_shares`): each layer's map. A layer with fewer
    heads than the widest (Qwen3-Next's softmax layers beside its linear ones) has NaN for the
    heads it does not have."""
    maps = [attention_shares(layer.attention) for layer in layers]
    widest = max(len(a) for a in maps)
    if all(len(a) == widest for a in maps):
        return np.stack(maps)
    out = np.full((len(maps), widest, *maps[0].shape[1:]), np.nan, dtype=maps[0].dtype)
    for i, a in enumerate(maps):
        out[i, : len(a)] = a
    return out


def post_norm(parts: ModelParts, i: int) -> PostNorm | None:
    """Layer i's norm after the attention, or None for a pre-norm layer.

    A family with a norm after the attention (`family_capabilities`) provides it as
    `Family.attn_out_norm(w, i, cfg)`, returning (γ, β, ε) for a LayerNorm on (residual + O)
    (BERT), (γ, β, ε, rms, applies_to) otherwise (Gemma 2/3's RMSNorm on O alone: (1 + w, None,
    ε, True, "attn")), a `PostNorm`, or None for a layer without one."""
    fam = parts.family
    if not family_capabilities(fam)["post_norm"]:
        return None
    hook = parts.attn_out_norm or fam.attn_out_norm
    if hook is None:  # select_methods refuses alti here before a run starts
        raise InputError(str(refusal(BY_NAME["alti"], parts)))
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
        self.methods, self._left_out = select_methods(methods, parts)
        self.labels, self.ids, self.parts = list(labels), list(ids), parts
        self.opt = options or MethodOptions()
        self.heads = None if heads is None else list(heads)
        self.layers = None if layers is None else list(layers)
        n = len(self.labels)
        m = set(self.methods)
        if self.opt.top_k < 1:
            raise InputError(f"{opt('top_k', self.opt.top_k)}: takes a number ≥ 1")
        if "lens" in m:
            for pos in self.opt.positions or ():
                if not -n <= pos < n:
                    raise InputError(
                        f"{opt('positions', pos, '--position')}: the input has {n} tokens (0 … {n - 1}, "
                        "or −1 for the last)"
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

    def add(self, i: int, layer: LayerRecord) -> None:
        """Layer i's records; layers must come in order 0, 1, 2 …"""
        if i != self._count:
            raise ValueError(f"layer {i} added after {self._count} layers")
        self._count += 1
        a = layer.attention
        w = a.weights
        m = self.methods
        if "rollout" in m:
            a_hat = residual_attention(attention_shares(a))
            self._rolled = a_hat if self._rolled is None else a_hat @ self._rolled
            if self._shown(i):
                self._steps.append(rollout_step(self._rolled, self.labels, i))
        if "flow" in m:
            self._weights.append(attention_shares(a))
        if "norms" in m and self._shown(i):
            assert a.params is not None
            self._steps += norms_steps(
                attention_norms(w, a["V"], a.params),
                summed_attention_norms(w, a["V"], a.params),
                self.labels,
                i,
                self.heads,
            )
        if "alti" in m:
            assert self.parts is not None and a.params is not None
            assert a.output is not None and a.resid is not None
            norm = post_norm(self.parts, i)
            c = alti_layer(w, a["V"], a.params, a.resid, a.output, norm)
            self._alti = c if self._alti is None else c @ self._alti
            if self._shown(i):
                self._steps.append(alti_step("alti", c, self.labels, i))
                self._steps.append(alti_step("alti_rollout", self._alti, self.labels, i))
        if "lens" in m:
            n = len(self.labels)
            pos = [n - 1] if self.opt.positions is None else [p % n for p in self.opt.positions]
            self._hidden.append(layer.out[pos])

    def finish(self) -> tuple[list[TraceStep], list[str]]:
        """Every step, in method order then layer order, and notes for the trace."""
        steps: list[TraceStep] = []
        notes: list[str] = [] if self._left_out is None else [self._left_out]
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
_STEP_METHOD = {step: m.name for m in CATALOGUE for step in m.steps}


def _method_of(step_name: str) -> str:
    return _STEP_METHOD[step_name.split("@")[0]]


def method_steps(
    methods: str | Sequence[str],
    layer_records: Sequence[LayerRecord],
    labels: Sequence[str],
    ids: Sequence[int],
    parts: ModelParts | None = None,
    layers: Sequence[int] | None = None,
    heads: Sequence[int] | None = None,
    options: MethodOptions | None = None,
) -> tuple[list[TraceStep], list[str]]:
    """The steps of every asked method for layers already computed, and notes for the trace."""
    run = MethodRun(methods, labels, ids, parts, layers, heads, options)
    for i, layer in enumerate(layer_records):
        run.add(i, layer)
    return run.finish()
