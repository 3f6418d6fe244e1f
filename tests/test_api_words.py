"""Errors raised through the Python API speak Python: every public function of `attn_cli.__all__`
(and the methods of what they return) called with bad arguments raises InputError naming the
parameter the caller passed, never a CLI flag; the CLI says the flag for the same mistake."""

from __future__ import annotations

import functools
import re
from pathlib import Path

import numpy as np
import pytest

import attn_cli
from attn_cli.errors import InputError
from tests.conftest import invoke

FIXTURES = Path(__file__).resolve().parent / "fixtures"
BERT, GPT2 = str(FIXTURES / "tiny_bert"), str(FIXTURES / "tiny_gpt2")


def explain(**kw):
    return lambda: attn_cli.explain("the cat", **kw)


def model_call(path, method, *args, **kw):
    return lambda: getattr(attn_cli.load_model(path), method)(*args, **kw)


def trace_call(method, *args, **kw):
    return lambda: getattr(attn_cli.explain("the cat", qkv=True, heads=2), method)(*args, **kw)


# (what is called, the parameter it names, a word of the message). Each public name of
# attn_cli.__all__ that takes arguments is here; COVERED checks that none is forgotten.
CASES = [
    ("explain", explain(layer=2), "layer", "applies to model"),
    ("explain", explain(seed=-1), "seed", "must be 0 or more"),
    ("explain", explain(qkv=True, heads=0), "heads", "between 1 and 1024"),
    ("explain", explain(qkv=True, heads=5), "heads=5", "give d_k"),
    ("explain", explain(qkv=True, d_k=0), "d_k", "between 1 and 65536"),
    ("explain", explain(qkv=True, temperature=-1), "temperature", "positive number"),
    ("explain", explain(qkv=True, temperature="hot"), "temperature", "positive number"),
    ("explain", explain(qkv=True, heads=2.5), "heads=2.5", "integer"),
    ("explain", explain(embeddings="random", dim=0), "dim", "between 1 and"),
    ("explain", explain(dim=4), "dim", "applies only to embeddings='random'"),
    ("explain", explain(embeddings="/nonexistent.npy"), "embeddings", "does not exist"),
    ("explain", explain(tokenizer="/nonexistent"), "tokenizer", "does not exist"),
    ("explain", explain(qkv=True, weights="/nonexistent.npz"), "weights", "does not exist"),
    ("explain", explain(steps="W,Z"), "steps='W,Z'", "is not a step"),
    ("explain", explain(model="/nonexistent"), "model='/nonexistent'", "not found"),
    ("explain", explain(model="/nonexistent.gguf"), "model='/nonexistent.gguf'", "no such file"),
    ("explain", explain(model="ollama:a/b/c/d"), "model='ollama:a/b/c/d'", "not an Ollama"),
    ("explain", explain(model=BERT, layer=9), "layer=9", "has 2 layers"),
    ("explain", explain(model=BERT, head=[0, 7]), "head=7", "heads"),
    ("explain", explain(model=BERT, pair="  "), "pair", "empty"),
    ("explain", explain(model=GPT2, pair="b"), "pair", "no segment"),
    ("explain", explain(model=BERT, qkv=True), "qkv", "does not apply with model"),
    ("explain_all", lambda: attn_cli.explain_all(["a"], heads=3), "heads", "qkv=True"),
    (
        "load_model",
        lambda: attn_cli.load_model("/nonexistent"),
        "model='/nonexistent'",
        "not found",
    ),
    ("Model", model_call(BERT, "trace", "x", layers=9), "layers=9", "has 2 layers"),
    ("Model", model_call(BERT, "trace", "x", heads="x"), "heads='x'", "a number"),
    ("Model", model_call(BERT, "trace", "x", steps="Q,Z"), "steps='Q,Z'", "is not a step"),
    ("Model", model_call(BERT, "trace", "x", pair=3), "pair=3", "string"),
    ("Model", model_call(BERT, "trace", "x", methods="nope"), "methods='nope'", "unknown"),
    ("Model", model_call(BERT, "trace", "x", top_k=3), "top_k", "applies with methods"),
    ("Model", model_call(GPT2, "trace", "x", methods="lens", top_k=0), "top_k=0", "≥ 1"),
    (
        "Model",
        model_call(GPT2, "trace", "x", methods="lens", positions=[9]),
        "positions=9",
        "tokens",
    ),
    ("Model", model_call(GPT2, "traces", ["x"], layers=[0, 5]), "layers=5", "layers"),
    ("Trace", trace_call("step", "Q_typo"), "name='Q_typo'", "no such step"),
    ("Trace", trace_call("step", "W", head=5), "head=5", "head"),
    ("Trace", trace_call("show", view="nope"), "view 'nope'", "not a view"),
    ("Trace", trace_call("show", precision=-1), "precision=-1", "between 0 and 12"),
    ("Trace", trace_call("show", top_k=0), "top_k=0", "1 or more"),
    ("Trace", trace_call("show", pool="median"), "pool", "max or mean"),
    (
        "Trace",
        lambda: attn_cli.Trace.from_attentions(["a", "b"], np.ones((1, 1, 3, 3)) / 3),
        "attentions",
        "expected",
    ),
    ("load", lambda: attn_cli.load("/nonexistent.json"), "/nonexistent.json", "does not exist"),
    ("load_all", lambda: attn_cli.load_all("/nonexistent.json"), "/nonexistent.json", "exist"),
    (
        "load_comparison",
        lambda: attn_cli.load_comparison("/nonexistent.json"),
        "/nonexistent.json",
        "does not exist",
    ),
    ("compare", lambda: attn_cli.compare("a", "b", steps="W"), "steps", "keeps the steps"),
    ("compare", lambda: attn_cli.compare("a", "b", model=BERT, pair="c"), "pair", "two texts"),
    ("compare", lambda: attn_cli.compare("a", "b", seed=-2), "seed", "0 or more"),
    ("compare", lambda: attn_cli.compare("a", "b", model=BERT, layer=9), "layer=9", "layers"),
    (
        "compare",
        lambda: attn_cli.compare("a", "b", model=BERT, head=[0, 1]),
        "head=[0, 1]",
        "one attention map",
    ),
]

# Public names that take no arguments a caller could get wrong.
NOTHING_TO_CHECK = {"AttnError", "InputError", "Options", "TraceStep", "Comparison", "__version__"}


def test_every_public_function_has_bad_argument_cases():
    covered = {name for name, *_ in CASES}
    assert covered | NOTHING_TO_CHECK == set(attn_cli.__all__)


@pytest.mark.parametrize(
    "call,param,words", [c[1:] for c in CASES], ids=[f"{c[0]}-{c[2]}" for c in CASES]
)
def test_api_errors_name_the_parameter_and_no_flag(call, param, words):
    with pytest.raises(InputError) as err:
        result = call()
        if not isinstance(result, attn_cli.Trace | attn_cli.Comparison | None):
            next(iter(result))  # explain_all / traces: the error is raised before the first
    message = str(err.value)
    assert param in message and words in message, message
    flags = [f for f in cli_flags() if re.search(rf"(?<![\w-]){re.escape(f)}(?![\w-])", message)]
    assert not flags, message


@functools.cache
def cli_flags() -> set[str]:
    """Every option of every attn-cli command (pip's own --no-deps is not one)."""
    import typer.main

    from attn_cli.cli import app

    group = typer.main.get_group(app)
    return {
        o
        for command in group.commands.values()
        for p in command.params
        for o in [*p.opts, *p.secondary_opts]
        if o.startswith("--")
    }


@pytest.mark.parametrize(
    "args,message",
    [
        (["--seed", "-1", "-e", "random"], "--seed must be 0 or more, got -1"),
        (["--qkv", "--heads", "5"], "--heads 5 does not divide d = 384: give --d-k"),
        (["--model", BERT, "--layer", "9"], "--layer 9: "),
        (["--model", "/nonexistent.gguf"], "--model /nonexistent.gguf: no such file"),
        (["--dim", "4"], "--dim applies only to --embeddings random"),
    ],
)
def test_the_cli_says_the_flag_for_the_same_mistakes(args, message):
    r = invoke(["explain", "the cat", *args])
    assert r.exit_code == 2 and message in r.stderr, r.stderr


def test_numpy_numbers_are_valid_values_and_bools_are_not_numbers():
    t = attn_cli.explain("the cat", qkv=True, heads=np.int64(2), temperature=np.float32(0.5))
    assert t.config["heads"] == 2 and t.config["temperature"] == 0.5
    assert type(t.config["temperature"]) is float  # stored as Python's, for JSON
    t2 = attn_cli.explain("the cat", qkv=True, heads=2, temperature=0.5)
    np.testing.assert_array_equal(t.attention(), t2.attention())
    with pytest.raises(InputError, match="temperature must be a positive number, got True"):
        attn_cli.explain("the cat", qkv=True, temperature=True)
    with pytest.raises(InputError, match="heads=True: must be an integer"):
        attn_cli.explain("the cat", qkv=True, heads=True)
