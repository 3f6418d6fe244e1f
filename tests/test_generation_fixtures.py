"""Torch-free: generation on the golden fixtures of every decoder family (tests/fixtures/tiny_*,
made by scripts/make_decoder_fixtures.py). The new rows equal the rows of our own full pass over
prompt + answer, the key/value cache equals re-running the full pass, greedy picks the argmax of
the full pass's logits; Ctrl-C in `attn-cli generate` keeps what was generated."""

from __future__ import annotations

import numpy as np
import pytest

import attn_cli
from attn_cli.generation import Generation
from tests.conftest import ROOT, invoke
from tests.decoder_utils import attention_maps, run

FIXTURES = ROOT / "tests" / "fixtures"
DECODERS = ["tiny_gemma3", "tiny_gpt2", "tiny_gpt_oss", "tiny_llama", "tiny_olmo2", "tiny_phi3"]
DECODERS += ["tiny_qwen2", "tiny_smollm3"]
PROMPT = "the cat sat\non the café mat"
NEW = 12


@pytest.mark.parametrize("name", DECODERS)
def test_new_rows_are_a_full_pass_and_the_cache_changes_nothing(name):
    d = FIXTURES / name
    m = attn_cli.load_model(d)
    g = Generation.start(m, PROMPT, NEW, stop=None)
    g.end_ids = lambda: set()  # type: ignore[method-assign]  # 12 tokens whatever they are
    t = g.run()
    n_p, n_new = len(g.prompt_ids), len(t.generated.ids)
    assert n_new == NEW and t.token_ids == g.prompt_ids + t.generated.ids
    full = run(d, t.token_ids)
    maps = attention_maps(full)  # (layers, heads, n, n) of prompt + answer at once
    np.testing.assert_allclose(t.attention(), maps[:, :, n_p - 1 : -1, :], atol=1e-5)
    chosen = full["logits"][n_p - 1 : -1].argmax(-1)  # greedy: each pass's argmax
    assert t.generated.ids == chosen.tolist()
    slow = Generation.start(m, PROMPT, NEW)
    slow.cache = False
    slow.end_ids = lambda: set()  # type: ignore[method-assign]
    np.testing.assert_allclose(slow.run().attention(), t.attention(), atol=1e-5)
    assert g.cached == (name != "tiny_gpt2")


def test_ctrl_c_stops_and_keeps_what_was_generated(tmp_path, monkeypatch):
    calls = {"n": 0}
    real = Generation._pass

    def interrupted(self, *args):
        calls["n"] += 1
        if calls["n"] == 4:  # during the pass for the fourth new token
            raise KeyboardInterrupt
        return real(self, *args)

    monkeypatch.setattr(Generation, "_pass", interrupted)
    path = tmp_path / "a.json"
    model = str(FIXTURES / "tiny_llama")
    r = invoke(["generate", PROMPT, "--model", model, "-n", "10", "--json", str(path)])
    assert r.exit_code == 0, r.output
    t = attn_cli.load(path)
    assert len(t.generated.ids) == 3 and t.attention().shape[2] == 3
    assert t.config["generation"]["stopped"] == "interrupted"
    assert any(n.startswith("interrupted after 3 new tokens") for n in t.notes)


@pytest.mark.parametrize("view", ["heatmap", "top", "grid", "summary", "overview", "steps"])
def test_every_view_shows_the_new_rows(view):
    import io

    from rich.console import Console

    t = attn_cli.load_model(FIXTURES / "tiny_qwen2").generate(PROMPT, max_new_tokens=4)
    buf = io.StringIO()
    t.show(view=view, console=Console(file=buf, width=120, color_system=None))
    out = buf.getvalue()
    assert out.strip()
    if view in ("heatmap", "top", "steps"):
        for label in t.step("W", 0, 0).rows:  # the new tokens are the rows
            assert label in out


def test_the_interactive_page_carries_the_generated_rows():
    from attn_cli.render.interactive import interactive_html

    t = attn_cli.load_model(FIXTURES / "tiny_llama").generate(PROMPT, max_new_tokens=3)
    page = interactive_html([t])
    words = [label for label in t.step("W", 0, 0).rows if label.isalnum()]
    assert words and all(f'"{w}"' in page for w in words)  # the rows' labels of the map
