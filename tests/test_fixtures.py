"""The numpy forward pass of every architecture against transformers, without torch.

tests/fixtures/tiny_bert and tiny_gpt2 are random d = 8, 2-layer, 2-head checkpoints; their
expected.npz holds what transformers computed for a few sample texts (attention maps, hidden
states, token ids). Both were written once by scripts/make_fixtures.py (see its docstring for
every array). tiny_gpt2/fp16 is the same checkpoint stored in float16 (its weights are
float16-representable, so it shares tiny_gpt2's expected values).

Tolerances: every attention map within 1e-5, hidden states within 1e-4 (absolute).

Everything attn-cli-specific is in `run_model` below: re-point it when the CLI or API changes.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import numpy as np
import pytest

FIXTURES = Path(__file__).resolve().parent / "fixtures"
ATTENTION_TOL = 1e-5
HIDDEN_TOL = 1e-4


# ---------------------------------------------------------------------------------------------
# Adapter: the only code that knows how attn-cli is driven.


@functools.cache
def _explain_options() -> str:
    from typer.testing import CliRunner

    from attn_cli.cli import app

    return CliRunner().invoke(app, ["explain", "--help"], env={"COLUMNS": "200"}).output


def run_model(model_dir: Path, text: str) -> dict[str, np.ndarray]:
    """Run TEXT through the checkpoint in MODEL_DIR with attn-cli and return
    token_ids (n,), attentions (layers, heads, n, n), layer_inputs (layers, n, d): what each
    layer's Q/K/V projections multiply (step "X"), and last_hidden_state (n, d) (step "H")."""
    from typer.testing import CliRunner

    from attn_cli.cli import app

    args = ["explain", text, "--model", str(model_dir), "--layer", "all", "--head", "all"]
    args += ["--json", "-"]
    if "--steps" in _explain_options():  # exports may default to attention maps only
        args += ["--steps", "X,W,H"]
    result = CliRunner().invoke(app, args)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    steps = doc["steps"]
    layers = 1 + max(s["layer"] for s in steps if s["name"] == "W")
    heads = 1 + max(s["head"] for s in steps if s["name"] == "W")
    att: list[list[np.ndarray | None]] = [[None] * heads for _ in range(layers)]
    x: list[np.ndarray | None] = [None] * layers
    final = None
    for s in steps:
        if s["name"] == "W":
            att[s["layer"]][s["head"]] = np.array(s["data"], dtype=np.float64)
        elif s["name"] == "X":
            x[s["layer"]] = np.array(s["data"], dtype=np.float64)
        elif s["name"] == "H":
            final = np.array(s["data"], dtype=np.float64)
    assert all(a is not None for row in att for a in row), "an attention map is missing"
    assert all(v is not None for v in x), "a layer's X step is missing"
    assert final is not None, "the final hidden states (step H) are missing"
    return {
        "token_ids": np.array(doc["token_ids"], dtype=np.int64),
        "attentions": np.array(att),
        "layer_inputs": np.array(x),
        "last_hidden_state": final,
    }


# ---------------------------------------------------------------------------------------------

CASES = [
    ("tiny_bert", "tiny_bert"),
    ("tiny_gpt2", "tiny_gpt2"),
    ("tiny_gpt2/fp16", "tiny_gpt2"),  # (checkpoint directory, whose expected.npz)
]


@functools.cache
def expected(name: str) -> dict[str, np.ndarray]:
    with np.load(FIXTURES / name / "expected.npz", allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def samples(name: str) -> list[int]:
    return sorted(int(k.split("_")[-1]) for k in expected(name) if k.startswith("text_"))


def compare(actual: dict[str, np.ndarray], exp: dict[str, np.ndarray], k: int) -> dict:
    """Assert that one run matches sample k of an expected.npz; return the max abs diffs."""
    ids = exp[f"ids_{k}"]
    assert actual["token_ids"].tolist() == ids.tolist(), "token ids differ"
    diffs = {}
    for key, tol in (
        ("attentions", ATTENTION_TOL),
        ("layer_inputs", HIDDEN_TOL),
        ("last_hidden_state", HIDDEN_TOL),
    ):
        want = exp[f"{key}_{k}"].astype(np.float64)
        got = actual[key]
        assert got.shape == want.shape, f"{key}: shape {got.shape}, expected {want.shape}"
        diffs[key] = float(np.max(np.abs(got - want)))
        assert diffs[key] <= tol, f"{key}: max abs diff {diffs[key]:.3g} > {tol:g}"
    return diffs


@pytest.mark.parametrize(
    ("model", "reference", "k"),
    [(m, r, k) for m, r in CASES for k in samples(r)],
    ids=lambda v: str(v),
)
def test_matches_transformers(model: str, reference: str, k: int) -> None:
    exp = expected(reference)
    actual = run_model(FIXTURES / model, str(exp[f"text_{k}"]))
    diffs = compare(actual, exp, k)
    print(f"{model} sample {k}: " + ", ".join(f"{n} {d:.2g}" for n, d in diffs.items()))


def test_expected_values_are_discriminating() -> None:
    """The fixtures can catch a wrong scale, mask or softmax: their attention is far from
    uniform, rows sum to 1, and GPT-2's maps are zero above the diagonal."""
    for name in ("tiny_bert", "tiny_gpt2"):
        for k in samples(name):
            a = expected(name)[f"attentions_{k}"].astype(np.float64)
            n = a.shape[-1]
            assert a.shape[:2] == (2, 2) and n >= 5
            np.testing.assert_allclose(a.sum(-1), 1.0, atol=1e-6)
            assert a.max(-1).mean() > 3 / n  # uniform would be 1/n
            assert np.abs(a - 1 / n).max() > 0.3
            upper = a[..., np.triu_indices(n, 1)[0], np.triu_indices(n, 1)[1]]
            if name == "tiny_gpt2":
                assert np.all(upper == 0)
            else:
                assert upper.min() > 0  # BERT looks both ways
    assert any("[UNK]" in t for t in expected("tiny_bert")["tokens_2"].tolist())
    assert any(t.startswith("##") for t in expected("tiny_bert")["tokens_2"].tolist())


def test_a_wrong_expectation_fails() -> None:
    """The comparison has teeth: a nudge just over each tolerance is caught."""
    exp = expected("tiny_bert")
    actual = run_model(FIXTURES / "tiny_bert", str(exp["text_0"]))
    compare(actual, exp, 0)
    for key, delta in (
        ("attentions", 3 * ATTENTION_TOL),
        ("layer_inputs", 3 * HIDDEN_TOL),
        ("last_hidden_state", 3 * HIDDEN_TOL),
    ):
        bad = dict(exp)
        bad[f"{key}_0"] = exp[f"{key}_0"].copy()
        bad[f"{key}_0"].flat[7] += delta
        with pytest.raises(AssertionError, match=key):
            compare(actual, bad, 0)
    bad = dict(exp)
    bad["ids_0"] = exp["ids_0"][::-1].copy()
    with pytest.raises(AssertionError, match="token ids"):
        compare(actual, bad, 0)


def test_the_wrong_fixture_fails() -> None:
    """GPT-2 weights do not reproduce BERT's numbers, even on the same text."""
    bert = expected("tiny_bert")
    gpt2 = expected("tiny_gpt2")
    assert str(bert["text_1"]) == str(gpt2["text_1"])
    actual = run_model(FIXTURES / "tiny_gpt2", str(gpt2["text_1"]))
    compare(actual, gpt2, 1)
    with pytest.raises(AssertionError):
        compare(actual, bert, 1)


def test_fixtures_are_small_and_complete() -> None:
    from safetensors import safe_open

    for d in ("tiny_bert", "tiny_gpt2", "tiny_gpt2/fp16"):
        files = {p.name: p.stat().st_size for p in (FIXTURES / d).iterdir() if p.is_file()}
        assert {"config.json", "model.safetensors", "tokenizer.json"} <= set(files)
        assert max(files.values()) < 32_000, files
        with safe_open(str(FIXTURES / d / "model.safetensors"), framework="np") as f:
            dtypes = {f.get_slice(k).get_dtype() for k in f.keys()}  # noqa: SIM118
            names = list(f.keys())  # noqa: SIM118
        assert dtypes == ({"F16"} if d.endswith("fp16") else {"F32"})
        if d == "tiny_bert":  # BertFor* naming: the loader strips the prefix
            assert all(n.startswith("bert.") for n in names)
        else:  # the hub's gpt2 naming
            assert "h.0.attn.c_attn.weight" in names


@pytest.mark.parametrize(
    "script",
    [
        "make_fixtures",
        "make_decoder_fixtures",
        "make_vision_fixtures",
        "make_seq2seq_fixtures",
        "make_whisper_fixtures",
    ],
)
@pytest.mark.reference
def test_fixture_scripts_run_without_pytest(script):
    """.ci/run checks the fixtures before the test extras (pytest) are installed: a fixture
    script must not import a test module that imports pytest. The scripts need the reference
    libraries (torch, transformers, and Pillow for the vision one) that make the fixtures."""
    import subprocess
    import sys

    from tests.conftest import require

    for module in ("torch", "transformers", "PIL"):
        require(module)

    code = (
        "import runpy, sys; sys.modules['pytest'] = None; sys.path.insert(0, '.'); "
        f"runpy.run_path('scripts/{script}.py', run_name='imported')"
    )
    root = FIXTURES.parent.parent
    done = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
