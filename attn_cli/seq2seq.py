"""An encoder–decoder model's run as a Trace: a source in, a target decoded against it.

Family-agnostic (the family's `Seq2Seq` hook does the maths): the source is tokenised (or read
by the family's `read_source`: audio) and encoded once; the target is either given (teacher
forcing: the decoder reads the decoder's start token(s) then the target's tokens) or generated
greedily from the model's generation config; then the decoder runs over the whole target and
every encoder, decoder and cross-attention map is kept.

The trace's tokens ("tokens" axis) are the DECODER's: the start token(s) then the target. The
source is `Trace.axes["source"]` (kind "text", or "frames" for audio). Encoder steps have
block "encoder" (source × source), decoder self-attention "decoder" (tokens × tokens, causal),
cross-attention "cross" (rows: target tokens, columns: source positions).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from attn_cli import memory, narrate
from attn_cli.errors import InputError, opt
from attn_cli.methods.lens import lens_steps, logit_lens
from attn_cli.models.args import COUNT, check
from attn_cli.models.registry import Family, Seq2Seq
from attn_cli.readable import readable_tokens
from attn_cli.records import TOKENS, LayerRecord, maps_only
from attn_cli.tokenizer import tokenize
from attn_cli.trace import MODEL, Axis, Trace, TraceStep, dim_labels, token_labels

SOURCE = "source"  # the axis of the encoder's positions
PREDICTION_TOP_K = 5
DEFAULT_MAX_LENGTH = 20  # transformers' GenerationConfig.max_length


@dataclass
class Plan:
    """How greedy decoding runs, from generation_config.json (config.json's values when the
    directory has none), as transformers' generate() reads them."""

    start: list[int]  # the decoder's first tokens (decoder_start_token_id; a family's prompt)
    eos: set[int]  # generation stops after one of these
    max_length: int  # the decoder sequence's length at most, start tokens included
    forced: dict[int, int] = field(default_factory=dict)  # position -> the token put there
    forced_eos: int | None = None  # put at the last position (max_length − 1)
    min_length: int = 0  # eos is not chosen before the sequence is this long
    suppress: tuple[int, ...] = ()  # never chosen (suppress_tokens, one-token bad_words_ids)
    begin_suppress: tuple[int, ...] = ()  # not chosen at the first generated position
    no_repeat_ngram: int = 0  # an n-gram is never repeated (BART's no_repeat_ngram_size)
    notes: list[str] = field(default_factory=list)
    # position -> the only tokens that may be chosen there (Whisper's language detection: the
    # likeliest language token after the start token, from the raw logits)
    choose_among: dict[int, tuple[int, ...]] = field(default_factory=dict)
    # The decoder's prompt, when it runs past `start` (forced or chosen positions): its length.
    # It is decoded first for a teacher-forced target too; the first generated position (for
    # begin_suppress) follows it. None: the prompt is `start`.
    prompt: int | None = None


def _ids(value: Any) -> list[int]:
    if value is None:
        return []
    if isinstance(value, int) and not isinstance(value, bool):
        return [value]
    if isinstance(value, list) and all(
        isinstance(v, int) and not isinstance(v, bool) for v in value
    ):
        return list(value)
    raise InputError(f"generation config: expected a token id or a list of ids, got {value!r}")


def generation_config(path: Path | None, cfg: Mapping[str, Any]) -> dict[str, Any]:
    """generation_config.json of the model's directory, else config.json's generation keys
    (transformers' GenerationConfig.from_model_config)."""
    if path is not None and (path / "generation_config.json").is_file():
        try:
            gen = json.loads((path / "generation_config.json").read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise InputError(
                f"{path / 'generation_config.json'}: not readable JSON ({exc})"
            ) from None
        if not isinstance(gen, dict):
            raise InputError(f"{path / 'generation_config.json'}: not a JSON object")
        return gen
    return dict(cfg)


def make_plan(
    gen: Mapping[str, Any], cfg: Mapping[str, Any], vocab: int, max_length: int | None
) -> Plan:
    """The standard generation fields as a Plan."""

    def get(key: str, default: Any = None) -> Any:
        """A generation setting: the generation config's alone (transformers ignores
        config.json's once generation_config.json exists)."""
        return gen.get(key, default)

    def token(key: str) -> Any:
        """A special token id: the generation config's, else config.json's."""
        return gen.get(key, cfg.get(key))

    def count(key: str) -> int | None:
        """A length setting: an integer ≥ 0, or None when the config leaves it out."""
        return check(COUNT, get(key), f"generation config: {key}", nullable=True)

    start = _ids(token("decoder_start_token_id")) or _ids(token("bos_token_id"))
    if not start:
        raise InputError(
            "the model's config has no decoder_start_token_id (nor bos_token_id): the decoder's "
            "first token is unknown"
        )
    if max_length is not None:
        length = max_length
    elif (new := count("max_new_tokens")) is not None:
        length = len(start) + new
    elif (most := count("max_length")) is not None:
        length = most
    else:  # transformers' default: 20 new tokens (within the position table)
        length = len(start) + DEFAULT_MAX_LENGTH
        if isinstance(cfg.get("max_position_embeddings"), int):
            length = min(length, cfg["max_position_embeddings"])
    if not isinstance(length, int) or length < 1:
        raise InputError(f"max_length must be a positive integer, got {length!r}")
    plan = Plan(start, set(_ids(token("eos_token_id"))), int(length))
    bos = get("forced_bos_token_id")
    if bos is not None:
        plan.forced[1] = _ids(bos)[0]
    for pair in get("forced_decoder_ids") or []:
        if not (isinstance(pair, list) and len(pair) == 2):
            raise InputError(
                f"generation config: forced_decoder_ids holds {pair!r}, not [index, id]"
            )
        where = check(COUNT, pair[0], "generation config: a forced_decoder_ids index")
        if pair[1] is not None:  # null: nothing forced there (Whisper's language slot)
            plan.forced[where] = _ids(pair[1])[0]
    eos = get("forced_eos_token_id")
    plan.forced_eos = None if eos is None else _ids(eos)[0]
    plan.min_length = count("min_length") or 0
    # one-token bad words are never chosen (longer ones are not applied); eos is never one
    bad = [
        b[0]
        for b in get("bad_words_ids") or []
        if isinstance(b, list) and len(b) == 1 and b[0] not in plan.eos
    ]
    if any(isinstance(b, list) and len(b) > 1 for b in get("bad_words_ids") or []):
        plan.notes.append("bad_words_ids of several tokens are not applied (one-token ones are)")
    plan.suppress = tuple(_ids(get("suppress_tokens"))) + tuple(bad)
    plan.begin_suppress = tuple(_ids(get("begin_suppress_tokens")))
    plan.no_repeat_ngram = count("no_repeat_ngram_size") or 0
    beams = get("num_beams", 1)
    if isinstance(beams, int) and beams > 1:
        plan.notes.append(
            f"the model's generation config asks for beam search ({beams} beams); attn-cli "
            "decodes greedily (one beam), as generate(num_beams=1) does"
        )
    chosen = [*plan.start, *plan.forced.values(), *plan.eos, *plan.suppress, *plan.begin_suppress]
    for ids in chosen + ([] if plan.forced_eos is None else [plan.forced_eos]):
        if not 0 <= ids < vocab:
            raise InputError(
                f"generation config: token id {ids} is outside the vocabulary ({vocab})"
            )
    return plan


def choose(logits: np.ndarray, seq: list[int], plan: Plan, first: int) -> int:
    """The next token after `seq` from the last position's logits, as transformers' logits
    processors then argmax pick it (`first`: the index of the first generated position)."""
    cur = len(seq)
    if cur in plan.forced:
        return plan.forced[cur]
    if cur in plan.choose_among:
        among = sorted(plan.choose_among[cur])
        return among[int(np.argmax(logits[among]))]
    if plan.forced_eos is not None and cur == plan.max_length - 1:
        return plan.forced_eos
    scores = logits.astype(np.float64, copy=True)
    if cur < plan.min_length:
        scores[list(plan.eos)] = -np.inf
    if plan.suppress:
        scores[list(plan.suppress)] = -np.inf
    if cur == first and plan.begin_suppress:
        scores[list(plan.begin_suppress)] = -np.inf
    n = plan.no_repeat_ngram
    if n and cur + 1 >= n:
        prefix = tuple(seq[cur - n + 1 :])
        for i in range(cur - n + 1):
            if tuple(seq[i : i + n - 1]) == prefix:
                scores[seq[i + n - 1]] = -np.inf
    return int(np.argmax(scores))


def encode(
    family: Family,
    w: Any,
    inputs: Any,
    cfg: Mapping[str, Any],
    each: Callable[[int, LayerRecord], None] | None = None,
) -> tuple[np.ndarray, list]:
    """The encoder's output (n_source, d) and its LayerRecords; with `each`, every layer's
    record is handed to it as it is made and not kept (so the stages nobody keeps are freed
    layer by layer: a 30-s Whisper encoder's scores are 1,500² per head)."""
    h = family.embed(w, inputs, cfg)
    records = []
    for i, layer in enumerate(family.layers(w, h, cfg)):
        if each is None:
            records.append(layer)
        else:
            each(i, layer)
        h = layer.out
    return family.final(w, h, cfg), records


def decode(
    s2s: Seq2Seq, w: Any, ids: list[int], enc: np.ndarray, cfg: Mapping[str, Any]
) -> tuple[np.ndarray, list]:
    """The decoder over target `ids` against encoder output `enc`: its final hidden states
    (n_target, d) and its LayerRecords (each: the "decoder" block, then the "cross" block)."""
    h = s2s.embed_target(w, ids, cfg)
    records = []
    for layer in s2s.decoder(w, h, enc, cfg):
        records.append(layer)
        h = layer.out
    return s2s.decoder_final(w, h, cfg), records


def greedy(
    s2s: Seq2Seq,
    w: Any,
    enc: np.ndarray,
    cfg: Mapping[str, Any],
    plan: Plan,
    bar: Any = None,
    stop: int | None = None,
) -> tuple[list[int], str]:
    """Greedy decoding: the start tokens, then the best next token until an eos or
    max_length; returns the whole sequence and why it stopped ("eos" or "max_length").
    `stop`: generate only this many tokens (the prompt of a teacher-forced target)."""
    seq = list(plan.start)
    first = len(seq) if plan.prompt is None else plan.prompt
    end = plan.max_length if stop is None else stop
    while len(seq) < end:
        if bar is not None:
            bar.phase(f"generating token {len(seq) - first + 1}")
        if len(seq) in plan.forced:  # put there by the plan: no forward pass needed
            seq.append(plan.forced[len(seq)])
        else:
            out, _ = decode(s2s, w, seq, enc, cfg)
            logits = s2s.logits(w, out[-1:], cfg)[0]
            seq.append(choose(logits, seq, plan, first))
        if seq[-1] in plan.eos:
            return seq, "eos"
    return seq, "max_length"


def _text_source(model: Any, text: Any) -> tuple[list[int], Axis, list[int]]:
    if not isinstance(text, str):
        raise InputError(f"{opt('text')}: {model.name} translates text; got {type(text).__name__}")
    raw, ids = tokenize(model.tokenizer, text, special=True)
    labels = token_labels(readable_tokens(raw, model._token_style))
    return ids, Axis(SOURCE, "text", labels), ids


def seq2seq_trace(
    model: Any,
    source: Any,
    layers: list[int],
    heads: list[int],
    keep: narrate.StepFilter,
    target: str | None,
    generate: bool,
    max_length: int | None = None,
    bar: Any = None,
    timestamps: bool = False,
) -> Trace:
    """`model` (a pretrained.Model of an encoder–decoder family) on `source`, with `target`
    teacher-forced or a greedily generated one. `timestamps`: the family's word times
    (Whisper) as a step."""

    family, cfg, d, w = model.family, model.config, model.dims, model.weights
    s2s = family.seq2seq
    assert s2s is not None
    source_ids: list[int] | None = None
    source_notes: list[str] = []
    if s2s.read_source is None:
        inputs, src_axis, source_ids = _text_source(model, source)
        name = source
    else:
        inputs, src_axis, source_notes, name = s2s.read_source(model, source)
    if source_ids is not None:
        if d.max_positions is not None and len(source_ids) > d.max_positions:
            raise InputError(
                f"the source is {len(source_ids)} tokens but {model.name} takes at most "
                f"{d.max_positions}; shorten it"
            )
        if max(source_ids) >= d.vocab:
            raise InputError(f"token id {max(source_ids)} is outside {model.name}'s vocabulary")
    gen = generation_config(model.path, cfg)
    plan = make_plan(gen, cfg, d.vocab, max_length)
    if s2s.plan is not None:
        plan = s2s.plan(cfg, gen, plan)
    if generate and d.max_positions is not None and plan.max_length > d.max_positions:
        if max_length is not None:  # the user's: refused now, not after the table's end
            raise InputError(
                f"{opt('max_length', max_length)}: more than the {d.max_positions} target "
                f"positions of {model.name}"
            )
        plan = replace(plan, max_length=d.max_positions)
        plan.notes.append(
            f"the generation config's max_length is beyond the model's {d.max_positions} "
            f"positions: generating at most {d.max_positions} tokens"
        )
    n_src = len(src_axis.labels)
    n_dec = s2s.decoder_layers(cfg)
    target_ids: list[int] = []
    if target is not None:
        _, target_ids = tokenize(model.tokenizer, target, special=True)
        if max(target_ids, default=0) >= d.vocab:
            raise InputError(f"token id {max(target_ids)} is outside {model.name}'s vocabulary")
    if plan.prompt is not None:  # a tokenizer whose template writes the prompt (Whisper's):
        # its copy is dropped, the plan's prompt (detected language …) comes first instead
        ours = {*plan.start, *plan.forced.values()}
        ours.update(t for among in plan.choose_among.values() for t in among)
        while target_ids and target_ids[0] in ours:
            target_ids = target_ids[1:]
    prompt = len(plan.start) if plan.prompt is None else plan.prompt
    seq = list(plan.start) + [0] * (prompt - len(plan.start)) + target_ids  # its length
    n_max = max(n_src, len(seq), plan.max_length if generate else 0)
    kinds = sum(keep(k) for k in ("W_raw", "W_scaled", "W_biased", "W_masked", "W"))
    need = memory.model_bytes(
        n_max,
        d.heads,
        len(layers) * 3,
        kinds,
        d.layers + 2 * n_dec,
        model.weights.parameters(),
        False,
    )
    memory.check_fits(
        need,
        f"the source is {n_src:,} positions and the target up to {n_max:,} tokens",
        f"choose fewer layers ({opt('layer')}), fewer steps ({opt('steps')}) or a shorter text",
    )
    if bar is not None:
        bar.phase("encoding the source")
    voice = narrate.Voice(teaching=False)
    texts = {
        **family.stage_texts,
        "X": narrate.layer_input(family.wording.x_formula, family.wording.x_description),
    }
    wanted, all_heads = set(layers), len(heads) == d.heads
    enc_steps: list[TraceStep] = []

    def narrate_layer(i: int, layer: LayerRecord, axes: Mapping[str, Axis]) -> list[TraceStep]:
        if i not in wanted:
            return []
        n_heads = min(b.heads for b in layer.blocks)  # the decoder's may differ
        chosen = list(range(n_heads)) if all_heads else [h for h in heads if h < n_heads]
        return narrate.model_layer_steps(layer, i, chosen, axes, voice, texts, keep=keep)

    def encoder_steps(i: int, layer: LayerRecord) -> None:
        enc_steps.extend(narrate_layer(i, layer, {SOURCE: src_axis}))

    if any(keep(k) for k in ("W_raw", "W_scaled", "W_biased", "W_capped", "W_masked")):
        enc, _ = encode(family, w, inputs, cfg, encoder_steps)
    else:  # the scores are in no step: each layer's taken in place in its maps (1,500² a head)
        with maps_only():
            enc, _ = encode(family, w, inputs, cfg, encoder_steps)
    stopped = None
    if generate:
        seq, stopped = greedy(s2s, w, enc, cfg, plan, bar)
    else:  # the prompt's forced or chosen tokens, then the target
        seq = greedy(s2s, w, enc, cfg, plan, bar, stop=prompt)[0] + target_ids
    out, dec_records = decode(s2s, w, seq, enc, cfg)

    raw = [model.tokenizer.id_to_token(int(i)) or f"<{i}>" for i in seq]
    tokens = readable_tokens(raw, model._token_style)
    labels = token_labels(tokens)
    every = len(layers) == model.layer_count
    config: dict[str, Any] = {
        "pipeline": MODEL,
        "model": model.name,
        "model_path": str(model.path),
        "model_type": cfg.get("model_type", family.name),
        "tokenizer": model.tokenizer_label,
        "special_tokens": True,
        "encoder_decoder": True,
        "layers": d.layers,
        "decoder_layers": n_dec,
        "heads": d.heads,
        "hidden": d.hidden,
        "d_k": d.head_dim,
        "layer": "all" if every else (layers[0] if len(layers) == 1 else layers),
        "head": "all" if len(heads) == d.heads else (heads[0] if len(heads) == 1 else heads),
        "causal": True,
        "source": name,
        "decoder_start": plan.start,
    }
    if source_ids is not None:
        config["source_ids"] = source_ids
    if target is not None:
        config["target"] = target
    else:
        config["generated"] = {"stopped": stopped, "max_length": plan.max_length}
    if family.describe is not None:
        config["architecture"] = family.describe(cfg)
    trace = Trace(config["source"], tokens, seq, config, raw_tokens=raw if raw != tokens else None)
    trace.notes += source_notes + plan.notes
    trace.axes[TOKENS] = Axis(TOKENS, "text", labels)
    trace.axes[SOURCE] = src_axis
    trace.steps += enc_steps
    for i, layer in enumerate(dec_records):
        trace.steps += narrate_layer(i, layer, trace.axes)
    if every and keep("H"):
        final = narrate.final_step(out, labels, family.wording.final)
        trace.steps.append(replace(final, block="decoder"))
        trace.steps.append(
            TraceStep(
                "H",
                "encoder output",
                f"The encoder's output: one vector per {s2s.source_words}, what every "
                "cross-attention reads its keys and values from.",
                enc,
                src_axis.labels,
                dim_labels(enc.shape[1]),
                "vectors",
                block="encoder",
                row_axis=SOURCE,
            )
        )
    if timestamps:
        assert s2s.words is not None
        steps, extra = s2s.words(model, inputs, seq, prompt, dec_records, gen)
        trace.steps += steps
        config.update(extra)
    if keep("prediction"):
        trace.steps += _prediction(model, s2s, out, labels)
    return trace


def _prediction(model: Any, s2s: Seq2Seq, out: np.ndarray, labels: list[str]) -> list[TraceStep]:
    """The next-token prediction after the last target token: top-k tokens, probabilities."""
    result = logit_lens(
        [out], lambda x: x, lambda x: s2s.logits(model.weights, x, model.config), k=PREDICTION_TOP_K
    )
    return lens_steps(result, labels, model._candidate_text, layers=[], prediction=True)
