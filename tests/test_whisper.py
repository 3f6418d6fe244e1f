"""Whisper: word-timestamp maths against transformers on the same arrays, and the tiny random
model built in the test against transformers end to end (maps, logits, greedy tokens, token
timestamps)."""

from __future__ import annotations

import types

import numpy as np
import pytest

from attn_cli import timestamps as ts
from tests.conftest import require


def softmax_maps(rng, shape):
    raw = rng.standard_normal(shape).astype(np.float32) * 3
    w = np.exp(raw)
    return w / w.sum(-1, keepdims=True)


@pytest.mark.reference
def test_median_filter_and_dtw_equal_transformers():
    torch = require("torch")
    gw = require("transformers.models.whisper.generation_whisper")
    rng = np.random.default_rng(0)
    for width, frames in ((7, 40), (3, 9), (7, 3), (1, 5)):
        x = rng.standard_normal((2, 3, 5, frames)).astype(np.float32)
        ref = gw._median_filter(torch.tensor(x), width).numpy()
        np.testing.assert_array_equal(ts.median_filter(x, width), ref)
    for shape in ((9, 60), (1, 7), (12, 12), (30, 200)):
        m = rng.standard_normal(shape)
        for mine, ref in zip(ts.dynamic_time_warping(m), gw._dynamic_time_warping(m), strict=True):
            np.testing.assert_array_equal(mine, ref)
    # ties: a constant matrix (every path costs the same) takes transformers' tie-breaks
    flat = np.zeros((4, 6))
    for mine, ref in zip(
        ts.dynamic_time_warping(flat), gw._dynamic_time_warping(flat), strict=True
    ):
        np.testing.assert_array_equal(mine, ref)


class _Generated(dict):
    def __getattr__(self, key):
        return self[key]


@pytest.mark.reference
@pytest.mark.parametrize("frames", [None, 700, 3000])
def test_token_times_equal_extract_token_timestamps(frames):
    """transformers' _extract_token_timestamps on cross-attention as generate() returns it
    (the prompt's rows in the first step, one row per later step, none for the last token)."""
    torch = require("torch")
    gw = require("transformers.models.whisper.generation_whisper")
    rng = np.random.default_rng(1)
    layers, heads, n, start = 3, 4, 14, 4
    cross = softmax_maps(rng, (layers, heads, n, 1500))
    steps = [cross[:, :, :start]] + [cross[:, :, i : i + 1] for i in range(start, n - 1)]
    generated = _Generated(
        cross_attentions=tuple(
            tuple(torch.tensor(s[layer])[None] for layer in range(layers)) for s in steps
        ),
        sequences=torch.zeros(1, n, dtype=torch.long),
    )
    model = types.SimpleNamespace(
        config=types.SimpleNamespace(decoder_layers=layers, median_filter_width=7)
    )
    alignment = [(0, 1), (2, 3), (1, 0)]
    ref = gw.WhisperGenerationMixin._extract_token_timestamps(
        model,
        generated,
        alignment,
        num_frames=None if frames is None else torch.tensor([frames]),
        num_input_ids=start,
    )[0].numpy()
    mine = ts.token_times(cross, alignment, start, frames, 7)
    np.testing.assert_array_equal(mine, ref)
    assert mine[start:].max() > 0  # not vacuous
    if frames is not None:
        assert mine.max() < frames / 100


class _Tokenizer:
    """What transformers' word grouping asks of a tokenizer, over a tokenizers.Tokenizer."""

    def __init__(self, tok, language=None):
        self.tok = tok
        self.eos_token_id = tok.token_to_id("<|endoftext|>")
        self.language = language

    def decode(self, ids, decode_with_timestamps=False):
        return self.tok.decode(ids, skip_special_tokens=False)


@pytest.mark.reference
def test_words_equal_transformers_grouping():
    """_combine_tokens_into_words and the ASR pipeline's word times ((ts[p − 1], ts[p]) per
    token), over a byte-level tokenizer: spaces, punctuation on either side, a split
    multi-byte character."""
    tw = require("transformers.models.whisper.tokenization_whisper")
    from tests.whisper_utils import tokenizer

    tok = tokenizer()
    texts = [
        ' Hello world, how are "you"? (fine) — 寿司!',
        " the cat sat on the mat.",
        "speech in, words out",
    ]
    for text, language in zip(texts, ("english", None, "japanese"), strict=True):
        ids = tok.encode(text).ids
        seq = [301, 302, 305, 306, *ids, 300]
        times = np.round(np.linspace(0, 3, len(seq)), 2).astype(np.float32)
        text_pos = list(range(4, 4 + len(ids)))
        words = ts.words(seq, times, text_pos, lambda t: tok.decode(t), 300, language)
        shim = _Tokenizer(tok)
        pairs = [(float(times[p - 1]), float(times[p])) for p in text_pos]
        ref = tw._collate_word_timestamps(shim, ids, pairs, language, False)
        assert [w.text for w in words] == [r["text"] for r in ref]
        for w, r in zip(words, ref, strict=True):
            assert (w.start, w.end) == pytest.approx(r["timestamp"], abs=1e-6)
        assert "".join(w.text for w in words) == tok.decode(ids)
    assert len(words) > 1


# ----------------------------------------------------------------- the tiny model, end to end


def _run(directory, source, **kwargs):
    """Our trace, plus the logits of every position (the trace keeps the last one's)."""
    import attn_cli
    from attn_cli import seq2seq

    m = attn_cli.load_model(str(directory))
    t = m.trace(source, **kwargs)
    s2s = m.family.seq2seq
    inputs = s2s.read_source(m, source)[0]
    enc, _ = seq2seq.encode(m.family, m.weights, inputs, m.config)
    out, _ = seq2seq.decode(s2s, m.weights, t.token_ids, enc, m.config)
    return t, s2s.logits(m.weights, out, m.config), inputs


@pytest.mark.reference
def test_tiny_whisper_equals_transformers(tmp_path):
    """Greedy tokens identical to generate() (language detected, forced task and
    <|notimestamps|>, suppressed tokens), every encoder/decoder/cross map within 1e-5,
    logits within 1e-4, token timestamps equal to return_token_timestamps, on a synthetic
    signal read from a WAV file."""
    require("torch")
    from tests import whisper_utils as wu

    wu.build(tmp_path)
    wav = wu.write_wav(tmp_path / "speech.wav", wu.signal())
    ref = wu.reference(tmp_path, wu.read_wav(wav))
    t, logits, inputs = _run(tmp_path, str(wav), generate=True, timestamps=True)
    assert np.abs(inputs.mel - ref["features"]).max() < 1e-4
    assert t.token_ids == ref["sequence"]
    assert t.token_ids[1] in (302, 303)  # the language token was detected
    for block in ("encoder", "decoder", "cross"):
        a = t.attention(block=block)
        assert a.shape == ref[block].shape
        assert np.abs(a - ref[block]).max() < 1e-5, block
    assert np.abs(logits - ref["logits"]).max() < 1e-4
    np.testing.assert_array_equal(
        np.asarray(t.config["token_times"], np.float32), ref["token_timestamps"]
    )
    assert max(t.config["token_times"]) > 0 and max(t.config["token_times"]) <= 4.0
    words = t.config["words"]
    assert words and all(w["start"] <= w["end"] for w in words)
    step = next(s for s in t.steps if s.name == "word_times")
    assert step.rows == [w["text"] for w in words] and step.data.shape == (len(words), 2)
    src = t.axes["source"]
    assert src.kind == "frames" and src.labels[:3] == ["0.00 s", "0.02 s", "0.04 s"]
    assert src.coords is not None and src.coords[1499] == (29.98,)


@pytest.mark.reference
@pytest.mark.parametrize(
    ("generation", "kwargs"),
    [
        ({"language": "de", "task": "translate"}, {}),  # the config's language and task
        ({"forced_decoder_ids": None, "lang_to_id": None, "task_to_id": None}, {}),  # .en
        ({}, {"max_new_tokens": 3}),
    ],
)
def test_prompts_and_lengths_equal_generate(tmp_path, generation, kwargs):
    require("torch")
    from tests import whisper_utils as wu

    wu.build(tmp_path, generation=generation, chunk_seconds=2)
    if kwargs:  # as the generation config's own value
        import json

        path = tmp_path / "generation_config.json"
        path.write_text(json.dumps({**json.loads(path.read_text()), **kwargs}))
    x = wu.signal(2.0)
    ref = wu.reference(tmp_path, x)
    t, _, _ = _run(tmp_path, (x, 16000), generate=True)
    assert t.token_ids == ref["sequence"]
    assert np.abs(t.attention(block="cross") - ref["cross"]).max() < 1e-5


@pytest.mark.reference
def test_teacher_forced_target_after_the_prompt(tmp_path):
    """--target: the prompt (language detected, forced tokens), then the target's tokens;
    maps as transformers' forward pass over that sequence."""
    torch = require("torch")
    transformers = require("transformers")
    from tests import whisper_utils as wu

    wu.build(tmp_path, chunk_seconds=2)
    x = wu.signal(2.0)
    t, logits, _ = _run(tmp_path, (x, 16000), target=" the cat sat")
    ids = wu.tokenizer().encode(" the cat sat").ids
    assert t.token_ids[4:] == ids and t.token_ids[2:4] == [305, 306]
    fe = transformers.WhisperFeatureExtractor.from_pretrained(tmp_path)
    model = transformers.WhisperForConditionalGeneration.from_pretrained(
        tmp_path, attn_implementation="eager"
    ).eval()
    with torch.no_grad():
        lang = model.detect_language(fe(x, sampling_rate=16000, return_tensors="pt").input_features)
        assert int(lang[0]) == t.token_ids[1]
        out = model(
            input_features=fe(x, sampling_rate=16000, return_tensors="pt").input_features,
            decoder_input_ids=torch.tensor([t.token_ids]),
            output_attentions=True,
        )
    cross = np.stack([a[0].numpy() for a in out.cross_attentions])
    assert np.abs(t.attention(block="cross") - cross).max() < 1e-5
    assert np.abs(logits - out.logits[0].numpy()).max() < 1e-4


# ---------------------------------------------------------------- the torch-free fixture

FIXTURE = __import__("pathlib").Path(__file__).parent / "fixtures" / "tiny_whisper"


def test_fixture_without_torch():
    """The committed tiny Whisper and its 8-kHz WAV: our run (our WAV reader, resampler,
    log-mel, forward pass, greedy decoding, DTW) against what transformers computed."""
    expected = np.load(FIXTURE / "expected.npz")
    t, logits, _ = _run(FIXTURE, str(FIXTURE / "speech.wav"), generate=True, timestamps=True)
    assert t.token_ids == expected["sequence"].tolist()
    rows = expected["encoder_rows"]
    assert np.abs(t.attention(block="encoder")[:, :, rows] - expected["encoder"]).max() < 1e-5
    for block in ("decoder", "cross"):
        assert np.abs(t.attention(block=block) - expected[block]).max() < 1e-5
    assert np.abs(logits[-3:] - expected["logits"]).max() < 1e-4
    np.testing.assert_array_equal(
        np.asarray(t.config["token_times"], np.float32), expected["token_timestamps"]
    )
    assert t.axes["source"].labels[-1] == "1.98 s"


def test_maps_only_run_keeps_the_same_maps():
    """A trace keeping only W takes the encoder's scores in place (records.maps_only): its W
    steps equal, number for number and word for word, those of a run keeping the scores."""
    import attn_cli

    m = attn_cli.load_model(str(FIXTURE))
    wav = str(FIXTURE / "speech.wav")
    only = [s for s in m.trace(wav, generate=True, steps="W").steps if s.name == "W"]
    full = m.trace(wav, generate=True, steps="W_raw,W_scaled,W").steps
    assert any(s.name == "W_scaled" and s.block == "encoder" for s in full)
    full = [s for s in full if s.name == "W"]
    assert len(only) == len(full) > 0
    for a, b in zip(only, full, strict=True):
        assert (a.block, a.formula, a.description) == (b.block, b.formula, b.description)
        np.testing.assert_array_equal(a.data, b.data)


def test_fixture_through_the_cli(tmp_path):
    from tests.conftest import invoke, plain

    wav = str(FIXTURE / "speech.wav")
    r = invoke(["explain", wav, "--model", str(FIXTURE), "--generate", "--timestamps",
                "--layer", "1", "--head", "2", "--steps", "W", "--width", "100"])  # fmt: skip
    assert r.exit_code == 0, r.output
    out = plain(r.output)
    assert "source: 100 frames" in out and "words: " in out
    assert "cross · layer 1 · head 2" in out and "0.02 s" in out
    saved = tmp_path / "t.json"
    j = invoke(["explain", wav, "--model", str(FIXTURE), "--generate", "--timestamps",
                "--json", str(saved)])  # fmt: skip
    assert j.exit_code == 0, j.output
    import json

    doc = json.loads(saved.read_text())
    assert doc["axes"]["source"]["kind"] == "frames" and doc["axes"]["source"]["coords"][1] == [
        0.02
    ]
    shown = invoke(["show", str(saved), "--view", "heatmap", "--width", "100"])
    assert shown.exit_code == 0, shown.output
    words = next(line for line in out.splitlines() if line.startswith("words: "))
    assert words in plain(shown.output)  # the saved trace keeps the words and their times


def test_hostile_audio_through_the_cli(tmp_path):
    from tests.conftest import invoke
    from tests.hostile_audio import make_all

    for name, path in make_all(tmp_path).items():
        r = invoke(["explain", str(path), "--model", str(FIXTURE), "--generate"])
        if name == "three_hours":  # windowed: a result, and a note saying so
            assert r.exit_code == 0 and "windowed to its first 2 s" in r.output, r.output
            continue
        assert r.exit_code == 2, (name, r.output)
        assert len(r.output.strip().splitlines()) == 1 and "Traceback" not in r.output, name


def test_audio_options_are_checked():
    import attn_cli
    from attn_cli.errors import InputError

    m = attn_cli.load_model(str(FIXTURE))
    with pytest.raises(InputError, match="sampling_rate"):
        m.trace(audio=np.zeros(16000, np.float32), generate=True)
    with pytest.raises(InputError, match="sampling_rate applies with audio"):
        m.trace(str(FIXTURE / "speech.wav"), sampling_rate=16000, generate=True)
    t = m.trace(audio=np.zeros(8000, np.float32), sampling_rate=8000, generate=True)
    assert t.attention(block="cross").shape[-1] == 100
    other = attn_cli.load_model(str(FIXTURE.parent / "tiny_gpt2"))
    with pytest.raises(InputError, match="timestamps"):
        other.trace("hi", timestamps=True)


def test_whisper_export_validates_against_the_trace_schema():
    from tests.test_schemas import SCHEMA_PATH, json_of, validator

    wav = str(FIXTURE / "speech.wav")
    v = validator(SCHEMA_PATH)
    for doc in json_of(
        ["explain", wav, "--model", str(FIXTURE), "--generate", "--timestamps", "--json", "-"]
    ):
        v.validate(doc)
        assert doc["config"]["words"] and doc["axes"]["source"]["kind"] == "frames"


def test_target_with_whisper_tokenizer_template(tmp_path):
    """Whisper's tokenizer.json writes <|startoftranscript|><|notimestamps|> … <|endoftext|>
    around a text: a --target's copy of the prompt is dropped (the plan's prompt, with the
    detected language, comes first), its <|endoftext|> kept."""
    import shutil

    from tokenizers import Tokenizer, processors

    import attn_cli

    d = tmp_path / "m"
    shutil.copytree(FIXTURE, d)
    tok = Tokenizer.from_file(str(d / "tokenizer.json"))
    tok.post_processor = processors.TemplateProcessing(
        single="<|startoftranscript|> <|de|> <|transcribe|> <|notimestamps|> $A <|endoftext|>",
        special_tokens=[(s, tok.token_to_id(s)) for s in
                        ("<|startoftranscript|>", "<|de|>", "<|transcribe|>", "<|notimestamps|>",
                         "<|endoftext|>")],
    )  # fmt: skip
    tok.save(str(d / "tokenizer.json"))
    t = attn_cli.load_model(str(d)).trace(str(d / "speech.wav"), target=" the cat")
    text = tok.encode(" the cat", add_special_tokens=False).ids
    assert t.token_ids[1] in (302, 303)  # detected, not the template's
    assert t.token_ids == [301, t.token_ids[1], 305, 306, *text, 300]


def test_cross_keys_and_values_are_made_once_per_encoder_output():
    """Greedy decoding reuses each layer's cross-attention keys and values (one projection of
    the encoder output per layer, not one per token); a new input gets its own."""
    import attn_cli
    from attn_cli.models import whisper
    from attn_cli.records import memory_projections

    m = attn_cli.load_model(str(FIXTURE))
    calls = []

    def counting(memory, p):
        calls.append(memory.shape)
        return memory_projections(memory, p)

    mp = pytest.MonkeyPatch()
    mp.setattr(whisper, "memory_projections", counting)
    try:
        quiet = m.trace(audio=np.zeros(16000, np.float32), sampling_rate=16000, generate=True)
        assert len(calls) == 2  # two decoder layers, however many tokens were generated
        assert len(quiet.token_ids) > 5
        loud = m.trace(str(FIXTURE / "speech.wav"), generate=True)
        assert len(calls) == 4
    finally:
        mp.undo()
    fresh = attn_cli.load_model(str(FIXTURE)).trace(str(FIXTURE / "speech.wav"), generate=True)
    assert loud.token_ids == fresh.token_ids
    np.testing.assert_array_equal(loud.attention(block="cross"), fresh.attention(block="cross"))
    assert not np.allclose(
        quiet.attention(block="cross")[:, :, :5], loud.attention(block="cross")[:, :, :5]
    )


def test_timestamps_need_alignment_heads(tmp_path):
    import json
    import shutil

    import attn_cli
    from attn_cli.errors import InputError

    d = tmp_path / "m"
    shutil.copytree(FIXTURE, d)
    gen = json.loads((d / "generation_config.json").read_text())
    for heads, match in ((None, "has no alignment_heads"), ([[5, 0]], "within 2 layers")):
        if heads is None:
            gen.pop("alignment_heads", None)
        else:
            gen["alignment_heads"] = heads
        (d / "generation_config.json").write_text(json.dumps(gen))
        with pytest.raises(InputError, match=match):
            attn_cli.load_model(str(d)).trace(str(d / "speech.wav"), generate=True, timestamps=True)
