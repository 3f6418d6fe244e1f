"""The CLI reaches every feature through the API: the interactive page, and its errors."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import attn_cli
from attn_cli.render.interactive import trace_repr_html
from tests.conftest import invoke, minilm_dir, run_with_stderr_on_a_terminal


def test_explain_writes_the_interactive_page(tmp_path):
    page = tmp_path / "hi.html"
    r = invoke(
        ["explain", "the cat sat", "--qkv", "--heads", "2", "--html", str(page), "--interactive"]
    )
    assert r.exit_code == 0, r.stderr
    html = page.read_text(encoding="utf-8")
    assert html.startswith("<!DOCTYPE html>") or html.lower().startswith("<!doctype html>")
    assert not re.search(r"(src|href)=[\"']?(https?:)?//", html)
    assert "the cat sat" in html
    saved = tmp_path / "t.json"
    assert invoke(["explain", "the cat sat", "--json", str(saved)]).exit_code == 0
    again = tmp_path / "again.html"
    r = invoke(["show", str(saved), "--html", str(again), "--interactive"])
    assert r.exit_code == 0, r.stderr
    assert again.read_text(encoding="utf-8").count("<script") == html.count("<script")


def test_interactive_needs_an_html_path_and_writes_nothing_else(tmp_path):
    r = invoke(["explain", "hi", "--interactive"])
    assert r.exit_code == 2
    assert (
        r.stderr
        == "attn-cli: error: --interactive writes the page to --html PATH: add --html PATH\n"
    )


def test_a_trace_shows_itself_in_jupyter_as_the_page():
    t = attn_cli.explain("hi how are you")
    assert t._repr_html_() == trace_repr_html(t)
    assert "<iframe" in t._repr_html_()


def test_models_lists_gguf_files_from_an_ollama_store(tmp_path, monkeypatch):
    """A GGUF blob in an Ollama store shows with family, size and quantisation, and runs."""
    import json
    import shutil
    from pathlib import Path

    fixture = Path(__file__).parent / "fixtures" / "gguf" / "tiny-llama.gguf"
    store = tmp_path / "ollama"
    blobs = store / "blobs"
    blobs.mkdir(parents=True)
    digest = "ab" * 32
    shutil.copy(fixture, blobs / f"sha256-{digest}")
    manifest = store / "manifests" / "registry.ollama.ai" / "library" / "tiny" / "latest"
    manifest.parent.mkdir(parents=True)
    manifest.write_text(
        json.dumps(
            {
                "layers": [
                    {
                        "mediaType": "application/vnd.ollama.image.model",
                        "digest": f"sha256:{digest}",
                    }
                ]
            }
        )
    )
    monkeypatch.setenv("OLLAMA_MODELS", str(store))
    r = invoke(["models", "--json"])
    assert r.exit_code == 0, r.stderr
    found = next(m for m in json.loads(r.stdout)["models"] if m["name"].startswith("ollama:tiny"))
    assert (found["family"], found["format"], found["ready"]) == ("llama", "gguf", True)
    name = found["name"]
    r = invoke(["explain", "I(1)!", "--model", name, "--layer", "0", "--head", "0"])
    assert r.exit_code == 0, r.stderr
    assert "W = softmax(W_masked) per row" in r.stdout


def test_alti_runs_on_a_gemma_checkpoint_with_its_post_attention_norm():
    """Gemma 2/3 expose their norm on the attention output (Family.attn_out_norm): ALTI runs,
    and its rolled-out rows are shares that sum to 1."""
    import numpy as np

    m = attn_cli.load_model(Path(__file__).parent / "fixtures" / "tiny_gemma3")
    t = m.trace("hello world", methods="alti", steps=["alti_rollout"])
    last = t.step("alti_rollout", layer=m.dims.layers - 1).data
    np.testing.assert_allclose(last.sum(axis=1), 1.0, atol=1e-5)
    assert np.all(last >= 0)
    assert np.all(np.triu(last, 1) == 0)  # causal: no share from later tokens


@pytest.mark.reference
def test_model_runs_show_progress_on_a_terminal_only():
    """A model run reports each layer on a terminal's stderr; with stderr a pipe, nothing."""
    import os
    import subprocess
    import sys

    minilm_dir()
    text = " ".join(["the bank of the river"] * 100)  # 502 tokens: long enough to be seen
    cmd = [sys.executable, "-m", "attn_cli", "explain", text, "--model", "minilm", "--json", "-"]
    env = {**os.environ, "ATTN_CLI_PROGRESS_DELAY": "0", "TERM": "xterm-256color"}
    piped = subprocess.run(cmd, capture_output=True, env=env, check=True)
    assert piped.stderr == b""
    code, out, seen = run_with_stderr_on_a_terminal(cmd, env)
    assert code == 0
    assert b"minilm" in seen and b"layer" in seen and b"of 6" in seen, seen[-300:]
    assert out == piped.stdout  # stdout: the same JSON, no bar


def test_the_console_entry_exits_with_mains_code_and_main_leaves_the_collector_alone():
    """run() (the console script, python -m attn_cli) freezes the objects before the exit;
    main(), which tests and embedders call in-process, must not: frozen cycles are never
    collected."""
    import gc
    import subprocess
    import sys

    from attn_cli.cli import main

    frozen = gc.get_freeze_count()
    assert main(["explain", "hi how are you", "--steps", "W", "--json", "/dev/null"]) == 0
    assert gc.get_freeze_count() == frozen
    ok = subprocess.run(
        [sys.executable, "-m", "attn_cli", "explain", "hi how are you", "--steps", "W"],
        capture_output=True,
        text=True,
    )
    assert ok.returncode == 0 and ok.stderr == ""
    assert ok.stdout.splitlines()[-2].split() == ["you", "you", "0.42", "are", "0.21"]
    bad = subprocess.run(
        [sys.executable, "-m", "attn_cli", "explain", "hi", "--layer", "9"],
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 2 and bad.stdout == ""
    assert bad.stderr == "attn-cli: error: --layer applies to --model\n"
