"""Exports that scale: the default model export of a 380-token input stays under 100 MB,
`--steps` picks steps, and several inputs stream (memory does not grow with the line count)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import orjson
import pytest

from attn_cli.tokenizer import load_tokenizer
from tests.conftest import SAMPLES, invoke, minilm_dir


def text_of(tokens: int) -> str:
    """A sample text that the bundled tokenizer cuts into at most `tokens` tokens (+ 2 specials)."""
    tok = load_tokenizer()
    words = (SAMPLES / "long.txt").read_text().split()
    lo, hi = 1, len(words)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if len(tok.encode(" ".join(words[:mid])).ids) <= tokens:
            lo = mid
        else:
            hi = mid - 1
    return " ".join(words[:lo])


@pytest.mark.reference
def test_default_model_export_of_380_tokens_is_under_100_mb(tmp_path):
    minilm_dir()
    out = tmp_path / "x.json"
    r = invoke(
        ["explain", text_of(378), "--model", "minilm", "--json", str(out), "--view", "summary"]
    )
    assert r.exit_code == 0, r.stderr
    size = out.stat().st_size
    assert size < 100_000_000, size
    doc = orjson.loads(out.read_bytes())
    assert len(doc["tokens"]) >= 375
    assert {s["name"] for s in doc["steps"]} == {"W"}
    assert len(doc["steps"]) == 72
    # Rounded to 6 decimals, still rows of probabilities.
    w = np.array(doc["steps"][0]["data"])
    np.testing.assert_allclose(w.sum(axis=1), 1.0, atol=380 * 5e-7)
    assert np.all(np.round(w, 6) == w)


def test_steps_option_selects_the_exported_steps():
    r = invoke(["explain", "the cat sat", "--qkv", "--heads", "2", "--json", "-", "--steps", "W,Y"])
    assert r.exit_code == 0, r.stderr
    names = [(s["name"], s.get("head")) for s in orjson.loads(r.stdout)["steps"]]
    assert names == [("W", 0), ("Y", 0), ("W", 1), ("Y", 1)]
    default = orjson.loads(
        invoke(["explain", "the cat sat", "--qkv", "--heads", "2", "--json", "-"]).stdout
    )
    assert not {"W_q", "W_k", "W_v", "W_o"} & {s["name"] for s in default["steps"]}
    bad = invoke(["explain", "hi", "--json", "-", "--steps", "W,Q2"])
    assert bad.exit_code == 2
    assert bad.stderr.startswith("attn-cli: error: --steps W,Q2: 'Q2' is not a step (steps: X,")


def peak_rss_kb(lines: int, tmp_path) -> int:
    text = "\n".join([text_of(120)] * lines) + "\n"
    code = (
        "import resource, subprocess, sys; "
        "subprocess.run([sys.executable, '-m', 'attn_cli', 'explain', '-', '--json', sys.argv[1]], "
        "input=sys.stdin.buffer.read(), stdout=subprocess.DEVNULL, check=True); "
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"
    )
    out = tmp_path / f"{lines}.jsonl"
    r = subprocess.run(
        [sys.executable, "-c", code, str(out)], input=text.encode(), capture_output=True, check=True
    )
    assert len(out.read_bytes().splitlines()) == lines
    return int(r.stdout)


def test_several_inputs_stream_memory_does_not_grow_with_lines(tmp_path):
    small, large = peak_rss_kb(5, tmp_path), peak_rss_kb(100, tmp_path)
    assert large < 1.25 * small, (small, large)
