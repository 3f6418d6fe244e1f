"""Arbitrary text through the CLI, in-process: exit code 0 or 2, never a traceback, and on
success a schema-valid trace whose W rows sum to 1.

The suite runs a small budget. The long run (documented in the README):

    ATTN_CLI_FUZZ_EXAMPLES=10000 python -m pytest tests/test_fuzz.py -q
"""

from __future__ import annotations

import json
import os

import jsonschema
import numpy as np
import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from attn_cli.cli import app
from attn_cli.export import SCHEMA_PATH

EXAMPLES = int(os.environ.get("ATTN_CLI_FUZZ_EXAMPLES", "75"))
VALIDATOR = jsonschema.Draft202012Validator(json.loads(SCHEMA_PATH.read_text()))
RUNNER = CliRunner()

pieces = st.sampled_from(
    [
        "[red]",
        "[/red]",
        "[link=https://e.invalid]",
        "[bold]x[/]",
        "\x1b[31m",
        "\x1b]8;;x\x07",
        "\x00",
        "\u200b",
        "\u200f",
        "\u202e",
        "🙂",
        "👩‍👩‍👧",
        "שלום",
        "مرحبا",
        "猫",
        "e\u0301",
        "\t",
        "\r\n",
        "\n",
        " ",
        "the",
        "cat",
        "##ing",
        "[CLS]",
        "[SEP]",
        "[PAD]",
        "\ufeff",
        "\udcff",
    ]
)
texts = st.lists(st.one_of(pieces, st.text(max_size=12)), max_size=12).map("".join)
modes = st.sampled_from(
    [
        [],
        ["-e", "random", "--dim", "3"],
        ["--scale", "--special"],
        ["--qkv", "--heads", "2", "--causal", "-e", "random", "--dim", "4"],
    ]
)


def check(result) -> None:
    assert result.exit_code in (0, 2), (result.exit_code, result.stderr)
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(
        result.exception
    )
    assert "Traceback" not in result.stdout + result.stderr
    if result.exit_code == 2:
        assert result.stderr.startswith("attn-cli: error: ") and result.stderr.count("\n") == 1
        return
    for line in result.stdout.split("\n")[:-1]:  # JSON Lines split on \n only, not on U+0085
        doc = orjson.loads(line)
        VALIDATOR.validate(doc)
        for step in doc["steps"]:
            if step["name"] == "W":
                np.testing.assert_allclose(np.array(step["data"]).sum(axis=1), 1.0, atol=1e-9)


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
@given(text=texts, mode=modes)
def test_fuzz_text_argument(text, mode):
    check(RUNNER.invoke(app, ["explain", *mode, "--json", "-", "--", text]))


@settings(
    max_examples=max(10, EXAMPLES // 3), deadline=None, suppress_health_check=list(HealthCheck)
)
@given(data=st.binary(max_size=80) | texts.map(lambda t: t.encode("utf-8", "surrogatepass")))
def test_fuzz_stdin_bytes(data):
    check(RUNNER.invoke(app, ["explain", "-e", "random", "--dim", "2", "--json", "-"], input=data))


@settings(
    max_examples=max(10, EXAMPLES // 5), deadline=None, suppress_health_check=list(HealthCheck)
)
@given(text=texts)
def test_fuzz_tables(text):
    """The table renderer too, with colour forced: exit 0 or 2, nothing raw from the input."""
    r = RUNNER.invoke(
        app, ["explain", "-e", "random", "--dim", "2", "--color", "--view", "steps,top", "--", text]
    )
    assert r.exit_code in (0, 2), r.stderr
    assert r.exception is None or isinstance(r.exception, SystemExit), repr(r.exception)
    assert "\x1b]8;" not in r.stdout  # the input's hyperlink escape never reaches the terminal
