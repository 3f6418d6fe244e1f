"""The encoder–decoder families against transformers, without torch: tests/fixtures/tiny_seq2seq
holds five tiny random checkpoints (T5, FLAN-T5-style, BART, mBART, Marian) and what
transformers computed for one source and target (scripts/make_seq2seq_fixtures.py).

Every encoder, decoder and cross-attention map within 1e-5, logits within 1e-4, greedy
generation token for token as transformers' generate()."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import attn_cli
from attn_cli.models.registry import family_for
from attn_cli.seq2seq import decode, encode

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "tiny_seq2seq"
MODELS = ["t5", "flan_t5", "bart", "mbart", "marian"]
SOURCE = "w10 w11 w12 w13 w14 w15 w16 w17 w18"  # as in scripts/make_seq2seq_fixtures.py
TARGET = "w20 w21 w22 w23 w24"


@pytest.mark.parametrize("name", MODELS)
def test_maps_and_logits_match_the_fixture(name):
    expected = np.load(FIXTURES / name / "expected.npz")
    m = attn_cli.load_model(FIXTURES / name)
    t = m.trace(SOURCE, target=TARGET)
    assert t.config["source_ids"] == expected["source_ids"].tolist()
    assert t.token_ids == expected["target_ids"].tolist()
    for block in ("encoder", "decoder", "cross"):
        maps = t.attention(block=block)
        assert maps.shape == expected[block].shape, block
        assert np.abs(maps - expected[block]).max() < 1e-5, block
    s2s = m.family.seq2seq
    assert s2s is not None
    enc, _ = encode(m.family, m.weights, t.config["source_ids"], m.config)
    out, _ = decode(s2s, m.weights, t.token_ids, enc, m.config)
    assert np.abs(s2s.logits(m.weights, out, m.config) - expected["logits"]).max() < 1e-4
    # the trace's prediction after the last target token is the logits' best
    (prediction,) = t.steps_named("prediction")
    best = m._candidate_text(int(expected["logits"][-1].argmax()))
    assert prediction.rows[0].strip("“”") == best


@pytest.mark.parametrize("name", MODELS)
def test_greedy_generation_matches_the_fixture(name):
    expected = np.load(FIXTURES / name / "expected.npz")
    t = attn_cli.load_model(FIXTURES / name).trace(SOURCE, generate=True)
    assert t.token_ids == expected["generated"].tolist()
    assert t.config["generated"]["max_length"] == 12
    n_source = len(expected["source_ids"])
    assert t.attention(block="cross").shape[2:] == (len(t.token_ids), n_source)


def test_each_fixture_is_its_family():
    names = {
        name: family_for(attn_cli.load_model(FIXTURES / name).config["model_type"])
        for name in MODELS
    }
    assert {n: f.name for n, f in names.items() if f is not None} == {
        "t5": "t5",
        "flan_t5": "t5",
        "bart": "bart",
        "mbart": "mbart",
        "marian": "marian",
    }


def copy_of(tmp_path: Path, name: str) -> Path:
    import shutil

    d = tmp_path / name
    shutil.copytree(FIXTURES / name, d)
    return d


@pytest.mark.parametrize(
    "change, message",
    [
        ({"max_length": "12"}, "generation config: max_length must be an integer ≥ 0, got '12'"),
        ({"min_length": -1}, "generation config: min_length must be an integer ≥ 0, got -1"),
        ({"eos_token_id": 999}, "token id 999 is outside the vocabulary (64)"),
        ({"suppress_tokens": [64]}, "token id 64 is outside the vocabulary (64)"),
        ({"forced_decoder_ids": [[1]]}, "forced_decoder_ids holds [1], not [index, id]"),
        ({"forced_decoder_ids": [["a", 5]]}, "a forced_decoder_ids index must be an integer"),
        ({"decoder_start_token_id": "x"}, "expected a token id or a list of ids, got 'x'"),
    ],
)
def test_a_bad_generation_config_is_one_line(tmp_path, change, message):
    import json

    from tests.conftest import invoke

    d = copy_of(tmp_path, "bart")
    gen = json.loads((d / "generation_config.json").read_text())
    (d / "generation_config.json").write_text(json.dumps(gen | change))
    r = invoke(["explain", SOURCE, "--model", str(d), "--generate"])
    assert r.exit_code != 0
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], r.stderr


def test_forced_decoder_ids_and_a_null_slot(tmp_path):
    import json

    d = copy_of(tmp_path, "t5")
    gen = json.loads((d / "generation_config.json").read_text())
    forced = {"forced_decoder_ids": [[1, 33], [2, None], [3, 44]], "max_length": 6}
    (d / "generation_config.json").write_text(json.dumps(gen | forced))
    t = attn_cli.load_model(d).trace(SOURCE, generate=True)
    assert t.token_ids[1] == 33 and t.token_ids[3] == 44 and len(t.token_ids) <= 6


@pytest.mark.parametrize(
    "files, message",
    [
        (["spiece.model"], "make tokenizer.json once with transformers"),
        (["source.spm", "target.spm"], "attn-cli reads a tokenizer.json"),
    ],
)
def test_sentencepiece_only_checkpoints_say_what_to_do(tmp_path, files, message):
    from tests.conftest import invoke

    d = copy_of(tmp_path, "marian")
    (d / "tokenizer.json").unlink()
    for f in files:
        (d / f).write_bytes(b"\x00")
    r = invoke(["explain", SOURCE, "--model", str(d), "--generate"])
    assert r.exit_code != 0 and "has no tokenizer.json" in r.stderr and message in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_a_decoder_only_model_refuses_a_target():
    from tests.conftest import invoke

    gpt2 = Path(__file__).resolve().parent / "fixtures" / "tiny_gpt2"
    r = invoke(["explain", "the cat", "--model", str(gpt2), "--target", "le chat"])
    assert r.exit_code != 0 and "is not an encoder–decoder model" in r.stderr


def test_compare_refuses_an_encoder_decoder_model_and_heads_reads_its_encoder(tmp_path):
    from tests.conftest import invoke

    t5 = str(FIXTURES / "t5")
    r = invoke(["compare", "w10 w11", "w12 w11", "--model", t5])
    assert r.exit_code != 0 and "is an encoder–decoder model (t5): compare takes" in r.stderr
    corpus = tmp_path / "lines.txt"
    corpus.write_text("w10 w11 w12\nw13 w14 w15 w16\n")
    r = invoke(["heads", str(corpus), "--model", t5])
    assert r.exit_code == 0, r.stderr


def test_only_the_decoder_map_is_causal_in_relative_entropy():
    """The trace is 'causal' (its decoder), but an encoder row sees every source token and a
    cross row every source position: 'vs uniform' / rel. divides by log(n_source) there, by
    log(i + 1) only in the decoder's own map."""
    from attn_cli.attention import entropy
    from attn_cli.render.statistics import relative_entropy, visible_counts

    t = attn_cli.load_model(FIXTURES / "t5").trace(SOURCE, target=TARGET)
    assert t.config["causal"]
    n_src, n_tgt = len(t.config["source_ids"]), len(t.token_ids)
    for block, seen in (
        ("encoder", [n_src] * n_src),
        ("cross", [n_src] * n_tgt),
        ("decoder", list(range(1, n_tgt + 1))),
    ):
        step = next(s for s in t.steps_named("W") if s.block == block)
        assert visible_counts(t, step).tolist() == seen, block
        rel = relative_entropy(step.data, visible_counts(t, step))
        want = entropy(step.data) / np.log(np.maximum(seen, 2))
        np.testing.assert_allclose(rel[np.array(seen) > 1], want[np.array(seen) > 1], atol=1e-12)


def test_max_length_beyond_the_position_table(tmp_path):
    """BART's decoder has 32 learned positions: --max-length 5000 is refused at once, naming
    the flag (not after 32 tokens were generated); a generation config asking for more stops
    at the table's end, and a note says so."""
    import json

    from tests.conftest import invoke

    r = invoke(
        ["explain", SOURCE, "--model", str(FIXTURES / "bart"), "--generate", "--max-length", "5000"]
    )
    lines = r.stderr.strip().splitlines()
    assert r.exit_code != 0 and len(lines) == 1, r.stderr
    assert "--max-length 5000" in lines[0] and "32" in lines[0], lines[0]
    d = copy_of(tmp_path, "bart")
    gen = json.loads((d / "generation_config.json").read_text())
    (d / "generation_config.json").write_text(json.dumps(gen | {"max_length": 100}))
    t = attn_cli.load_model(d).trace(SOURCE, generate=True)
    assert len(t.token_ids) <= 32 and t.config["generated"]["max_length"] == 32
    assert any("32 positions" in n for n in t.notes), t.notes
