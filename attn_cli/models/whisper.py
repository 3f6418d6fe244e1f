"""Whisper (tiny … large-v3, .en): speech in, words out. An encoder over the log-mel
spectrogram of 30 s of audio, a text decoder attending to it.

Encoder (audio.py makes its input: (mel bins, 3000) log-mel frames, 10 ms apart):
  h = GELU(conv1(mel))             kernel 3, stride 1: (d, 3000)
  h = GELU(conv2(h))               kernel 3, stride 2: (d, 1500), one frame per 20 ms
  h = hᵀ + P                       P: fixed sinusoids (stored in the checkpoint), 1,500 frames
  per layer, pre-LayerNorm:  h = h + SelfAttn(LN(h));  h = h + FF(LN(h)),  FF = fc2(GELU(fc1))
  then a final LayerNorm. Attention: Q = X·W_q + b_q, K = X·W_k (no bias), V = X·W_v + b_v,
  softmax(Q·Kᵀ / √d_k).
Decoder: token embeddings + learned positions; per layer, pre-LayerNorm: causal
self-attention, cross-attention (queries from the text, keys and values from the encoder's
output), FF; a final LayerNorm; logits = h · Eᵀ (the embeddings, tied; proj_out when stored).

The source axis is the encoder's 1,500 frames (kind "frames"), each labelled with its start
time ("0.02 s"). Generation follows WhisperGenerationMixin for one 30-s window without
timestamps: the prompt is <|startoftranscript|>, the language (the config's, else detected:
the likeliest language token after the start token), the task when asked (or already forced),
<|notimestamps|>; suppress_tokens always, begin_suppress_tokens at the first generated token;
greedy until <|endoftext|> or max_length (+ the prompt, within max_target_positions).
"""

from __future__ import annotations

import weakref
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from attn_cli import audio, timestamps
from attn_cli.attention import AttentionParams, causal_mask
from attn_cli.blas import matmul
from attn_cli.errors import InputError, opt
from attn_cli.models._bart import attention_params, check_attention, check_heads, ln
from attn_cli.models.args import COUNT, FLAG, POSITIVE_INT, TEXT, Args, arg
from attn_cli.models.layers import gelu_erf
from attn_cli.models.registry import Config, Dims, Family, Seq2Seq, WeightSource, Wording
from attn_cli.models.weights import expect_shape
from attn_cli.narrate import StageContext
from attn_cli.records import LayerRecord, memory_projections, multi_head_attention
from attn_cli.trace import Axis, TraceStep

ANCHOR = "encoder.conv1.weight"
SOURCE = "source"
SECONDS_PER_FRAME = 0.02  # one encoder frame: two 10-ms mel frames


@dataclass(frozen=True, kw_only=True)
class WhisperArgs(Args):
    """What this file reads of a Whisper config.json (transformers' WhisperConfig defaults)."""

    vocab_size: int = arg(POSITIVE_INT, 51865)
    num_mel_bins: int = arg(POSITIVE_INT, 80)
    d_model: int = arg(POSITIVE_INT, 384)
    encoder_layers: int = arg(POSITIVE_INT, 4)
    encoder_attention_heads: int = arg(POSITIVE_INT, 6)
    decoder_layers: int = arg(POSITIVE_INT, 4)
    decoder_attention_heads: int = arg(POSITIVE_INT, 6)
    encoder_ffn_dim: int = arg(POSITIVE_INT, 1536)
    decoder_ffn_dim: int = arg(POSITIVE_INT, 1536)
    max_source_positions: int = arg(POSITIVE_INT, 1500)
    max_target_positions: int = arg(POSITIVE_INT, 448)
    activation_function: str = arg(TEXT, "gelu")
    scale_embedding: bool = arg(FLAG, False)
    decoder_start_token_id: int = arg(COUNT, 50257)
    median_filter_width: int = arg(POSITIVE_INT, 7)

    def validate(self, source: str) -> None:
        check_heads(
            source, self.d_model, self.encoder_attention_heads, self.decoder_attention_heads
        )
        if self.activation_function != "gelu":
            raise InputError(
                f"{source}: activation_function {self.activation_function!r}: Whisper uses gelu"
            )
        if self.median_filter_width % 2 != 1:
            raise InputError(f"{source}: median_filter_width must be odd")


def dims(cfg: Config) -> Dims:
    a = WhisperArgs.parse(cfg)
    heads = a.encoder_attention_heads
    return Dims(
        a.encoder_layers,
        heads,
        heads,
        a.d_model,
        a.d_model // heads,
        a.vocab_size,
        a.max_target_positions,
    )


def check(w: WeightSource, cfg: Config) -> None:
    a = WhisperArgs.parse(cfg)
    d = a.d_model
    expect_shape(w, ANCHOR, (d, a.num_mel_bins, 3))
    expect_shape(w, "encoder.conv2.weight", (d, d, 3))
    expect_shape(w, "encoder.embed_positions.weight", (a.max_source_positions, d))
    expect_shape(w, "decoder.embed_tokens.weight", (a.vocab_size, d))
    expect_shape(w, "decoder.embed_positions.weight", (a.max_target_positions, d))
    for stack, n, ffn, blocks in (
        ("encoder", a.encoder_layers, a.encoder_ffn_dim, ("self_attn",)),
        ("decoder", a.decoder_layers, a.decoder_ffn_dim, ("self_attn", "encoder_attn")),
    ):
        for i in range(n):
            p = f"{stack}.layers.{i}."
            for block in blocks:
                check_attention(w, p + block, d, key_bias=False)
                expect_shape(w, f"{p}{block}_layer_norm.weight", (d,))
            expect_shape(w, p + "fc1.weight", (ffn, d))
            expect_shape(w, p + "fc2.weight", (d, ffn))
            expect_shape(w, p + "final_layer_norm.weight", (d,))
        expect_shape(w, f"{stack}.layer_norm.weight", (d,))
    if "proj_out.weight" in w:
        expect_shape(w, "proj_out.weight", (a.vocab_size, d))


# ------------------------------------------------------------------------------ the encoder


def conv1d(x: np.ndarray, weight: np.ndarray, bias: np.ndarray, stride: int) -> np.ndarray:
    """nn.Conv1d(kernel 3, padding 1): x (C_in, T) -> (C_out, ⌈T / stride⌉)."""
    c_out, c_in, k = weight.shape
    padded = np.pad(x, ((0, 0), (1, 1)))
    t_out = (padded.shape[1] - k) // stride + 1
    cols = np.stack(
        [padded[:, j : j + stride * (t_out - 1) + 1 : stride] for j in range(k)], axis=1
    )  # (C_in, k, T_out)
    w2 = weight.reshape(c_out, c_in * k)  # [C_out, C_in·k] @ [C_in·k, T_out]
    return matmul(w2, cols.reshape(c_in * k, t_out)) + bias[:, None]


def embed(w: WeightSource, mel: np.ndarray, cfg: Config) -> np.ndarray:
    """Log-mel (mel bins, 3000) -> the encoder's first hidden states (1500, d)."""
    h = gelu_erf(conv1d(mel, w["encoder.conv1.weight"], w["encoder.conv1.bias"], 1))
    h = gelu_erf(conv1d(h, w["encoder.conv2.weight"], w["encoder.conv2.bias"], 2))
    return (h.T + w["encoder.embed_positions.weight"][: h.shape[1]]).astype(np.float32, copy=False)


def _params(w: WeightSource, p: str, heads: int) -> AttentionParams:
    return attention_params(w, p, heads, key_bias=False)


def _ff(w: WeightSource, p: str, x: np.ndarray) -> np.ndarray:
    m = ln(w, p + "final_layer_norm", x)
    hidden = matmul(m, w[p + "fc1.weight"].T)  # [n, d] -> [n, ffn]; the biases added in place
    hidden += w[p + "fc1.bias"]
    out = matmul(gelu_erf(hidden), w[p + "fc2.weight"].T)  # -> [n, d]
    out += x
    out += w[p + "fc2.bias"]
    return out


def layers(w: WeightSource, x: np.ndarray, cfg: Config) -> Iterator[LayerRecord]:
    a = WhisperArgs.parse(cfg)
    for i in range(a.encoder_layers):
        p = f"encoder.layers.{i}."
        params = _params(w, p + "self_attn", a.encoder_attention_heads)
        rec = multi_head_attention(
            ln(w, p + "self_attn_layer_norm", x), params, axis=SOURCE, block="encoder", resid=x
        )
        assert rec.output is not None
        out = _ff(w, p, x + rec.output)
        yield LayerRecord([rec], out)
        x = out


def final(w: WeightSource, h: np.ndarray, cfg: Config) -> np.ndarray:
    return ln(w, "encoder.layer_norm", h)


# ------------------------------------------------------------------------------ the decoder


def embed_target(w: WeightSource, ids: list[int], cfg: Config) -> np.ndarray:
    a = WhisperArgs.parse(cfg)
    if len(ids) > a.max_target_positions:
        raise InputError(
            f"the transcript is {len(ids)} tokens; Whisper's decoder takes at most "
            f"{a.max_target_positions}"
        )
    scale = np.float32(np.sqrt(a.d_model)) if a.scale_embedding else np.float32(1.0)
    tokens = w.rows("decoder.embed_tokens.weight", ids) * scale
    return tokens + w["decoder.embed_positions.weight"][: len(ids)]


class MemoryKV:
    """Each decoder layer's cross-attention keys and values for one encoder output. Greedy
    decoding runs the decoder once per token against the same output (1,500 frames for 30 s),
    so they are made once, and dropped when that output (or the weights) goes away."""

    def __init__(self) -> None:
        self._enc: weakref.ref | None = None
        self._w: weakref.ref | None = None
        self._kv: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def get(
        self, w: WeightSource, enc: np.ndarray, layer: int, p: AttentionParams
    ) -> tuple[np.ndarray, np.ndarray]:
        if self._enc is None or self._enc() is not enc or self._w is None or self._w() is not w:
            self._kv = {}
            self._enc = weakref.ref(enc, lambda _: self._kv.clear())
            self._w = weakref.ref(w)
        if layer not in self._kv:
            self._kv[layer] = memory_projections(enc, p)
        return self._kv[layer]


MEMORY_KV = MemoryKV()


def decoder(w: WeightSource, x: np.ndarray, enc: np.ndarray, cfg: Config) -> Iterator[LayerRecord]:
    a = WhisperArgs.parse(cfg)
    heads = a.decoder_attention_heads
    mask = causal_mask(len(x))
    for i in range(a.decoder_layers):
        p = f"decoder.layers.{i}."
        self_rec = multi_head_attention(
            ln(w, p + "self_attn_layer_norm", x),
            _params(w, p + "self_attn", heads),
            mask,
            block="decoder",
            resid=x,
        )
        assert self_rec.output is not None
        h = x + self_rec.output
        cross_params = _params(w, p + "encoder_attn", heads)
        cross = multi_head_attention(
            ln(w, p + "encoder_attn_layer_norm", h),
            cross_params,
            block="cross",
            resid=h,
            memory=enc,
            key_axis=SOURCE,
            memory_kv=MEMORY_KV.get(w, enc, i, cross_params),
        )
        assert cross.output is not None
        out = _ff(w, p, h + cross.output)
        yield LayerRecord([self_rec, cross], out)
        x = out


def decoder_final(w: WeightSource, h: np.ndarray, cfg: Config) -> np.ndarray:
    return ln(w, "decoder.layer_norm", h)


def logits(w: WeightSource, h: np.ndarray, cfg: Config) -> np.ndarray:
    name = "proj_out.weight" if "proj_out.weight" in w else "decoder.embed_tokens.weight"
    return h @ w[name].T  # [n, d] @ [d, vocab]


# ---------------------------------------------------------------------------------- audio in


@dataclass(frozen=True)
class Sound:
    """The encoder's input and what the trace says about the audio."""

    mel: np.ndarray  # (mel bins, 3000) float32
    audio: audio.Audio


def frame_axis(frames: int, seconds: float = SECONDS_PER_FRAME) -> Axis:
    """The encoder's frames (`seconds` apart) as a trace axis: start times, labelled '0.02 s'."""
    times = [round(i * seconds, 4) for i in range(frames)]
    return Axis(SOURCE, "frames", [f"{t:.2f} s" for t in times], [(t,) for t in times])


def read_source(model: Any, given: Any) -> tuple[Sound, Axis, list[str], str]:
    """What the user gave (a file's path, or (samples, sampling_rate)) -> the log-mel
    spectrogram of one 30-s window, the frame axis, a note when the audio was windowed, and
    its name."""
    feats = audio.load_features(Path(model.path))
    a = WhisperArgs.parse(model.config)
    if feats.feature_size != a.num_mel_bins:
        raise InputError(
            f"{model.name}: preprocessor_config.json makes {feats.feature_size} mel bins, the "
            f"model reads {a.num_mel_bins}"
        )
    if isinstance(given, tuple) and len(given) == 2:
        sound = audio.load(given[0], feats, given[1])
    else:
        sound = audio.load(given, feats)
    mel = audio.log_mel(sound.samples, feats)
    if mel.shape[1] != 2 * a.max_source_positions:
        raise InputError(
            f"{model.name}: a {feats.chunk_length}-s window makes {mel.shape[1]} mel frames; the "
            f"encoder reads {2 * a.max_source_positions}"
        )
    notes = [] if sound.note is None else [sound.note]
    step = 2 * feats.hop_length / feats.sampling_rate  # the second convolution's stride is 2
    return Sound(mel, sound), frame_axis(a.max_source_positions, step), notes, sound.name


def embed_sound(w: WeightSource, inputs: Any, cfg: Config) -> np.ndarray:
    if not isinstance(inputs, Sound):
        raise InputError(f"{opt('audio')}: Whisper reads audio, not token ids")
    return embed(w, inputs.mel, cfg)


def describe(cfg: Config) -> dict[str, Any]:
    a = WhisperArgs.parse(cfg)
    return {
        "encoder": f"2 × conv1d (GELU) over {a.num_mel_bins} mel bins, "
        f"{a.max_source_positions} frames of {SECONDS_PER_FRAME} s, sinusoidal positions",
        "decoder": f"{a.decoder_layers} layers × {a.decoder_attention_heads} heads, "
        "learned positions, causal self-attention + cross-attention",
    }


def _source_text(c: StageContext) -> tuple[str, str]:
    n, d = c.data.shape
    return "encoder output", (
        f"The encoder's output, one {d}-number vector per 20 ms of audio ({n} frames): the keys "
        "and values of this cross-attention are made from it, the queries from the transcript's "
        "tokens."
    )


# ------------------------------------------------------------------------------- generation

DETECT = -1  # the prompt's language slot when the language is detected


def _mapping(value: Any, key: str) -> Mapping[str, int]:
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(
        isinstance(v, int) and not isinstance(v, bool) for v in value.values()
    ):
        raise InputError(f"generation config: {key} must map names to token ids")
    return value


def _token(value: Any, key: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InputError(f"generation config: {key} must be a token id, got {value!r}")
    return value


def prompt(cfg: Config, gen: Mapping[str, Any]) -> list[int]:
    """The decoder's first tokens, as WhisperGenerationMixin._retrieve_init_tokens makes them
    for generation without timestamps: DETECT where the language is to be detected."""
    start = _token(gen.get("decoder_start_token_id", cfg.get("decoder_start_token_id")), "start")
    init: list[int | None] = [start]
    language, task = gen.get("language"), gen.get("task")
    lang_to_id = _mapping(gen.get("lang_to_id"), "lang_to_id")
    task_to_id = _mapping(gen.get("task_to_id"), "task_to_id")
    if task is None and language is None:
        forced = gen.get("forced_decoder_ids") or cfg.get("forced_decoder_ids") or []
        if not isinstance(forced, list) or not all(
            isinstance(f, list) and len(f) == 2 and isinstance(f[0], int) for f in forced
        ):
            raise InputError("generation config: forced_decoder_ids must be [index, id] pairs")
        i = 1
        while forced and forced[0][0] == i:  # positions 1, 2 … in order: the old prompt form
            init.append(None if forced[0][1] is None else _token(forced[0][1], "forced id"))
            forced, i = forced[1:], i + 1
        if forced:
            raise InputError(
                f"generation config: forced_decoder_ids {forced!r} do not follow Whisper's "
                "prompt (indices 1, 2, … in order)"
            )
    undefined = len(init) <= 1 or init[1] is None
    lang: int | None = None
    if language is not None:
        code = str(language).lower()
        name = code if code in lang_to_id else f"<|{code}|>"
        if name not in lang_to_id:
            raise InputError(
                f"generation config: language {language!r} is not one of the model's "
                f"({', '.join(sorted(lang_to_id)) or 'none'})"
            )
        lang = lang_to_id[name]
    elif lang_to_id and undefined:
        lang = DETECT
    if lang is not None:
        if len(init) > 1:
            init[1] = lang
        else:
            init.append(lang)
    if task is not None:
        if task not in task_to_id:
            raise InputError(f"generation config: task {task!r} is not one of {list(task_to_id)}")
        task_ids = set(task_to_id.values())
        if any(t in task_ids for t in init):
            init = [task_to_id[task] if t in task_ids else t for t in init]
        else:
            init.append(task_to_id[task])
    elif (
        language is not None
        and "transcribe" in task_to_id
        and not any(t in task_to_id.values() for t in init)
    ):
        init.append(task_to_id["transcribe"])
    no_ts = gen.get("no_timestamps_token_id")
    if no_ts is not None and init[-1] != no_ts:
        init.append(_token(no_ts, "no_timestamps_token_id"))
    return [t for t in init if t is not None]


def plan(cfg: Config, gen: Mapping[str, Any], base: Any) -> Any:
    """The standard plan (seq2seq.make_plan) with Whisper's prompt: the start token, then the
    prompt's tokens forced (the language chosen among lang_to_id's tokens when detected);
    begin_suppress_tokens at the first token after the prompt; max_length counts the tokens
    after the prompt (within max_target_positions), as WhisperGenerationMixin does."""
    a = WhisperArgs.parse(cfg)
    tokens = prompt(cfg, gen)
    n_init = min(a.max_target_positions // 2 - 1, len(tokens))
    new = gen.get("max_new_tokens")
    if new is not None:
        length = min(len(tokens) + int(new), a.max_target_positions)
    else:
        length = min(base.max_length + n_init, a.max_target_positions)
    langs = tuple(_mapping(gen.get("lang_to_id"), "lang_to_id").values())
    return replace(
        base,
        start=tokens[:1],
        forced={i: t for i, t in enumerate(tokens) if i and t != DETECT},
        choose_among={i: langs for i, t in enumerate(tokens) if t == DETECT},
        prompt=len(tokens),
        max_length=length,
    )


# --------------------------------------------------------------------------- word timestamps


def alignment_heads(model: Any, gen: Mapping[str, Any]) -> list[tuple[int, int]]:
    heads = gen.get("alignment_heads")
    a = WhisperArgs.parse(model.config)
    if heads is None:
        raise InputError(
            f"{opt('timestamps')}: {model.name}'s generation config has no alignment_heads "
            "(the cross-attention heads that follow the audio); word times need them"
        )
    ok = isinstance(heads, list) and all(
        isinstance(h, list)
        and len(h) == 2
        and all(isinstance(v, int) and not isinstance(v, bool) for v in h)
        and 0 <= h[0] < a.decoder_layers
        and 0 <= h[1] < a.decoder_attention_heads
        for h in heads
    )
    if not ok or not heads:
        raise InputError(
            f"generation config: alignment_heads must be [layer, head] pairs within "
            f"{a.decoder_layers} layers × {a.decoder_attention_heads} heads"
        )
    return [(h[0], h[1]) for h in heads]


def word_times(
    model: Any,
    sound: Sound,
    seq: list[int],
    start_tokens: int,
    records: list[LayerRecord],
    gen: Mapping[str, Any],
) -> tuple[list[timestamps.Word], np.ndarray]:
    """The words of the transcript `seq` with their times (and every token's start time),
    from the cross-attention of the alignment heads (timestamps.token_times)."""
    heads = alignment_heads(model, gen)
    a = WhisperArgs.parse(model.config)
    cross = np.stack([layer.blocks[1].weights for layer in records])  # (layers, H, n, frames)
    feats = audio.load_features(Path(model.path))
    mel_frames = min(feats.frames, -(-len(sound.audio.samples) // feats.hop_length))
    times = timestamps.token_times(cross, heads, start_tokens, mel_frames, a.median_filter_width)
    eos = _ids_of(gen.get("eos_token_id", model.config.get("eos_token_id")))
    eos_id = min(eos) if eos else a.vocab_size
    text = [p for p in range(start_tokens, len(seq)) if seq[p] < eos_id]
    if not text:
        return [], times

    def decode(ids: list[int]) -> str:
        return str(model.tokenizer.decode(ids, skip_special_tokens=False))

    # the language token of the prompt ("<|ja|>"), else the configured language, else English
    langs = {v: k for k, v in _mapping(gen.get("lang_to_id"), "lang_to_id").items()}
    spoken = next((langs[t] for t in seq[:start_tokens] if t in langs), gen.get("language"))
    return timestamps.words(seq, times, text, decode, eos_id, spoken), times


def _ids_of(value: Any) -> list[int]:
    if isinstance(value, int) and not isinstance(value, bool):
        return [value]
    if isinstance(value, list):
        return [v for v in value if isinstance(v, int) and not isinstance(v, bool)]
    return []


def words(
    model: Any,
    inputs: Sound,
    seq: list[int],
    start_tokens: int,
    records: list[LayerRecord],
    gen: Mapping[str, Any],
) -> tuple[list[TraceStep], dict[str, Any]]:
    """The Seq2Seq.words hook: the word_times step and the words in the trace's config."""
    found, times = word_times(model, inputs, seq, start_tokens, records, gen)
    return [word_step(found)], {
        "words": [{"text": w.text, "start": w.start, "end": w.end} for w in found],
        "token_times": [round(float(t), 2) for t in times],
    }


def word_step(words: list[timestamps.Word]) -> TraceStep:
    data = np.array([[w.start, w.end] for w in words], dtype=np.float32).reshape(-1, 2)
    return TraceStep(
        "word_times",
        "DTW(median(cross-attention of the alignment heads))",
        "When each word is spoken: the cross-attention of the model's alignment heads, "
        "standardised over the tokens, median-filtered along time and averaged, then the "
        "cheapest monotonic path from the first token and frame to the last (dynamic time "
        "warping); a word runs from where the path reaches its first token to where it "
        "reaches the token after its last.",
        data,
        [w.text for w in words],
        ["start (s)", "end (s)"],
        "vectors",
        block="cross",
    )


FAMILY = Family(
    name="whisper",
    model_types=("whisper",),
    anchor=ANCHOR,
    causal=False,
    norm="pre",
    linear_values=True,
    sentence_pairs=False,
    dims=dims,
    check=check,
    embed=embed_sound,
    layers=layers,
    final=final,
    wording=Wording(
        x_formula="LN(hidden states)",
        x_description=lambda i: (
            " after the layer's first LayerNorm (Whisper normalises before attention)."
        ),
        mask="The decoder reads left to right: a token may not look at later tokens.",
        final="The decoder's output: one vector per token after every layer and the final "
        "LayerNorm.",
    ),
    describe=describe,
    stage_texts={"X_source": _source_text},
    seq2seq=Seq2Seq(
        decoder_layers=lambda cfg: WhisperArgs.parse(cfg).decoder_layers,
        embed_target=embed_target,
        decoder=decoder,
        decoder_final=decoder_final,
        logits=logits,
        read_source=read_source,
        plan=plan,
        words=words,
        source_words="audio frame",
    ),
)
