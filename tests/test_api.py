"""The public Python API: the snippet of issue 12 / the README, natural argument types, errors
naming parameters, Trace accessors, Trace.from_attentions, and the shape of the package (no
import cycles, a light `import attn_cli`, --help for every command)."""

from __future__ import annotations

import ast
import io
import math
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from rich.console import Console

import attn_cli
from attn_cli.errors import InputError
from tests.conftest import invoke, minilm_dir, require

PACKAGE = Path(attn_cli.__file__).resolve().parent


def test_public_names_are_exported():
    for name in attn_cli.__all__:
        assert getattr(attn_cli, name) is not None
    assert callable(attn_cli.explain) and callable(attn_cli.load_model)


def test_explain_toy_is_the_cli_default_and_hand_checkable():
    t = attn_cli.explain("hi how are you")
    assert t.tokens == ["hi", "how", "are", "you"]
    A = t.attention()
    assert A.shape == (1, 1, 4, 4)
    # Independent recomputation from the trace's own X: softmax(X·Xᵀ) row by row.
    X = t.step("X").data
    for i in range(4):
        logits = [float(np.dot(X[i], X[j])) for j in range(4)]
        top = max(logits)
        e = [math.exp(z - top) for z in logits]
        np.testing.assert_allclose(A[0, 0, i], [v / sum(e) for v in e], atol=1e-12)
    cli = invoke(["explain", "hi how are you", "--json", "-", "--steps", "all"])
    assert cli.exit_code == 0, cli.stderr
    import orjson

    doc = orjson.loads(cli.stdout)
    w = next(s for s in doc["steps"] if s["name"] == "W")
    np.testing.assert_array_equal(np.array(w["data"]), A[0, 0])


def test_explain_qkv_heads_causal():
    t = attn_cli.explain("the cat sat", qkv=True, heads=2, causal=True)
    A = t.attention()
    assert A.shape == (1, 2, 3, 3)
    assert np.all(A[..., np.triu_indices(3, 1)[0], np.triu_indices(3, 1)[1]] == 0)
    np.testing.assert_allclose(A.sum(axis=-1), 1.0, atol=1e-12)
    assert t.step("W", head=1).head == 1
    assert t.config["heads"] == 2 and t.config["causal"] is True


def test_repr_is_one_short_line():
    r = repr(attn_cli.explain("hi how are you"))
    assert "\n" not in r and len(r) < 120
    assert r.startswith("<Trace toy · 4 tokens")


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"layer": 2}, "layer applies to model"),
        ({"heads": 2}, "heads applies to the Q/K/V pipeline: add qkv=True"),
        ({"qkv": True, "temperature": 0}, "temperature must be a positive number, got 0"),
        ({"qkv": "yes"}, "qkv='yes': must be True or False"),
        ({"heads": 2.5, "qkv": True}, "heads=2.5: must be an integer"),
        ({"steps": "W,Z"}, "steps='W,Z': 'Z' is not a step"),
        ({"colour": True}, "unexpected keyword argument 'colour'"),
    ],
)
def test_api_errors_name_the_parameter(kwargs, message):
    with pytest.raises(InputError) as err:
        attn_cli.explain("hi", **kwargs)
    assert message in str(err.value)


def test_explain_all_checks_options_before_iterating():
    with pytest.raises(InputError):
        attn_cli.explain_all(["a", "b"], heads=3)  # raises here, not at next()
    traces = attn_cli.explain_all(iter(["a b", "c d e"]))
    assert [len(t.tokens) for t in traces] == [2, 3]


def test_steps_filter_keeps_only_named_steps():
    t = attn_cli.explain("the cat sat", qkv=True, heads=2, steps=["W", "Y"])
    assert set(t.step_names) == {"W", "Y"}
    with pytest.raises(InputError, match=r"name='Q': this trace has no such step"):
        t.step("Q")


def test_step_errors_name_the_parameter():
    t = attn_cli.explain("the cat sat", qkv=True, heads=2)
    with pytest.raises(InputError, match=r"head=None: step W is present for heads 0, 1"):
        t.step("W")
    with pytest.raises(InputError, match=r"head=5"):
        t.step("W", head=5)


def test_save_and_load_round_trip(tmp_path):
    t = attn_cli.explain("the cat sat", qkv=True, heads=2, causal=True)
    t.save(tmp_path / "x.json")
    back = attn_cli.load(tmp_path / "x.json")
    assert back.tokens == t.tokens and back.config == t.config
    np.testing.assert_array_equal(back.attention(), t.attention())
    masked = back.step("W_masked", head=0).data
    assert np.isneginf(masked[0, 1])
    with pytest.raises(InputError, match="does not exist"):
        attn_cli.load(tmp_path / "missing.json")


def test_show_renders_to_a_given_console():
    buf = io.StringIO()
    console = Console(file=buf, width=100, color_system=None)
    attn_cli.explain("hi how are you").show(view="top", console=console)
    out = buf.getvalue()
    assert "Top 3 attended tokens" in out and "hi" in out


def test_trace_displays_itself_through_rich():
    buf = io.StringIO()
    Console(file=buf, width=100, color_system=None).print(attn_cli.explain("hi how are you"))
    assert "W = softmax(W_raw) per row" in buf.getvalue()


VIEWS = ["steps", "overview", "summary", "top", "heatmap", "geometry", "grid"]


def test_from_attentions_takes_arrays_and_renders_every_view():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(2, 3, 4, 4))
    A = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    t = attn_cli.Trace.from_attentions(["a", "b", "c", "d"], A)
    np.testing.assert_array_equal(t.attention(), A)
    assert t.step("W", layer=1, head=2).data[0, 0] == A[1, 2, 0, 0]
    for view in VIEWS:
        buf = io.StringIO()
        t.show(view=view, console=Console(file=buf, width=100, color_system=None))
        assert buf.getvalue().strip(), view
    with pytest.raises(InputError, match=r"expected \(layers, heads, 3, 3\)"):
        attn_cli.Trace.from_attentions(["a", "b", "c"], A)
    import jsonschema
    import orjson

    from attn_cli.export import SCHEMA_PATH, dumps_traces, loads_traces

    data = dumps_traces([t])
    jsonschema.validate(orjson.loads(data), orjson.loads(SCHEMA_PATH.read_bytes()))
    np.testing.assert_array_equal(loads_traces(data)[0].attention(), A)


@pytest.mark.reference
def test_from_attentions_on_transformers_output_attentions():
    torch = require("torch")
    transformers = require("transformers")
    d = minilm_dir()
    tok = transformers.AutoTokenizer.from_pretrained(str(d))
    model = transformers.AutoModel.from_pretrained(str(d), attn_implementation="eager")
    enc = tok("the bank of the river", return_tensors="pt")
    with torch.no_grad():
        out = model(**enc, output_attentions=True)
    tokens = tok.convert_ids_to_tokens(enc["input_ids"][0])
    t = attn_cli.Trace.from_attentions(tokens, out.attentions)
    assert t.attention().shape == (6, 12, 7, 7)
    # The same weights as our own numpy forward pass.
    ours = attn_cli.load_model("minilm").trace("the bank of the river")
    np.testing.assert_allclose(ours.attention(), t.attention(), atol=1e-5)
    for view in VIEWS:
        buf = io.StringIO()
        t.show(view=view, console=Console(file=buf, width=120, color_system=None))
        assert "bank" in buf.getvalue(), view


@pytest.mark.reference
def test_load_model_trace_and_natural_types():
    minilm_dir()
    m = attn_cli.load_model("minilm")
    assert repr(m) == "<Model minilm · bert · 6 layers × 12 heads>"
    t = m.trace("the bank of the river", layers="all", heads="all")
    assert t.attention().shape == (6, 12, 7, 7)
    assert t.step("W", layer=2, head=5).where == "layer 2 · head 5"
    two = m.trace("the bank of the river", layers=[0, 2], heads=np.int64(3))
    assert two.attention().shape == (2, 1, 7, 7)
    np.testing.assert_array_equal(two.attention()[1, 0], t.attention()[2, 3])
    with pytest.raises(InputError, match=r"^layers=9: minilm has 6 layers \(0–5\) or 'all'$"):
        m.trace("hi", layers=9)
    with pytest.raises(InputError, match=r"^heads='x': takes a number, a list or 'all'$"):
        m.trace("hi", heads="x")
    via_explain = attn_cli.explain("the bank of the river", model="minilm", layer=2, head=5)
    np.testing.assert_array_equal(via_explain.attention()[0, 0], t.attention()[2, 5])


@pytest.mark.reference
def test_readme_python_snippet_runs_as_written(tmp_path):
    """The README's API example, executed verbatim in a fresh interpreter."""
    minilm_dir()
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    blocks = [b.split("```", 1)[0] for b in readme.split("```python\n")[1:]]
    assert blocks, "the README has no python example"
    for block in blocks:
        r = subprocess.run(
            [sys.executable, "-c", block], cwd=tmp_path, capture_output=True, text=True
        )
        assert r.returncode == 0, r.stderr[-2000:]


def _modules() -> dict[str, Path]:
    return {
        ".".join(("attn_cli", *p.relative_to(PACKAGE).with_suffix("").parts)).removesuffix(
            ".__init__"
        ): p
        for p in PACKAGE.rglob("*.py")
    }


def _is_type_checking(node: ast.If) -> bool:
    return ast.unparse(node.test) in ("TYPE_CHECKING", "typing.TYPE_CHECKING")


def _import_statements(path: Path) -> list[tuple[str, bool]]:
    """(imported name, inside a function) for every import a module runs: top level or in a
    function, never under `if TYPE_CHECKING:` (those never run). `from attn_cli import narrate`
    names the module attn_cli.narrate."""
    found: list[tuple[str, bool]] = []

    def visit(node: ast.AST, lazy: bool) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child, lazy)
            return
        if isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.append((node.module, lazy))
            found.extend((f"{node.module}.{a.name}", lazy) for a in node.names)
        elif isinstance(node, ast.Import):
            found.extend((a.name, lazy) for a in node.names)
        inner = lazy or isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        for child in ast.iter_child_nodes(node):
            visit(child, inner)

    visit(ast.parse(path.read_text(encoding="utf-8")), False)
    return found


def _imports(path: Path) -> set[str]:
    """attn_cli modules imported anywhere in a module (top level or inside functions)."""
    return {name for name, _ in _import_statements(path) if name.startswith("attn_cli")}


# Imports inside functions, each for a reason; any other import belongs at the top of its
# module. Libraries that are optional, heavy, or needed by one path only:
LAZY_LIBRARIES = {
    "rich": "the views and progress lines; `import attn_cli` and --help stay without it",
    "textual": "the browser only (optional)",
    "tokenizers": "built on first use: the bundled tokenizer's start-up shortcut avoids it",
    "gguf": "dequantising some GGUF tensor types only (optional)",
    "scipy": "attention flow only (optional)",
    "PIL": "pictures only (optional)",
    "numpy.random": "random embeddings only",
    "hashlib": "hashing a user's embeddings file only",
    "zipfile": "the .npz export only",
    "multiprocessing": "attn-cli heads with several workers only",
    "concurrent.futures": "attn-cli heads with several workers, and a model run's pieces on free cores",
    "distributed": "attn-cli heads --scheduler only (the optional cluster extra)",
    "ctypes": "finding OpenBLAS's thread setter, only when a model runs on a busy machine",
    "jinja2": "rendering a chat template only (generate --chat; the optional chat extra)",
    "soundfile": "FLAC, MP3 and Ogg files only (the optional audio extra; WAV needs nothing)",
}
# attn_cli modules imported inside a function of another one:
LAZY_MODULES = {
    # every command imports what it uses, so --help and each command start light
    "attn_cli.cli": "*",
    # the model machinery (families, GGUF, methods) loads when a model is asked for
    "attn_cli.api": {"attn_cli.pretrained"},
    # generation, and chat templates within it, load when a model is asked to generate
    "attn_cli.pretrained": {"attn_cli.generation"},
    "attn_cli.generation": {"attn_cli.chat"},
    "attn_cli.comparison": {
        "attn_cli.pretrained",
        "attn_cli.render.common",
        "attn_cli.render.compare",
    },
    # the data model's show/save/browse reach the presentation modules that read it
    "attn_cli.trace": {
        "attn_cli.browse",
        "attn_cli.export",
        "attn_cli.render.common",
        "attn_cli.render.interactive",
        "attn_cli.render.views",
    },
    "attn_cli.browse": {"attn_cli.browse.app"},  # Textual, only once a browser opens
}
# The only imports that may close a circle: the Trace's presentation methods reach modules
# that import trace.py (lazily, so either side loads first).
BACK_EDGES = {("attn_cli.trace", m) for m in LAZY_MODULES["attn_cli.trace"]}


def test_function_level_imports_are_the_listed_ones():
    unlisted = []
    for module, path in _modules().items():
        allowed = LAZY_MODULES.get(module, set())
        for name, lazy in _import_statements(path):
            if not lazy or allowed == "*" or name in allowed:
                continue
            if name.startswith("attn_cli"):
                if name in _modules():
                    unlisted.append(f"{module}: {name}")
            elif not any(name == lib or name.startswith(lib + ".") for lib in LAZY_LIBRARIES):
                unlisted.append(f"{module}: {name}")
    assert not unlisted, "move to the top of the module, or list with a reason: " + ", ".join(
        unlisted
    )


def test_import_graph_has_no_cycle_lazy_imports_included():
    modules = _modules()
    graph = {
        m: {n for n in _imports(p) if n in modules and n != m and (m, n) not in BACK_EDGES}
        for m, p in modules.items()
    }
    state: dict[str, int] = {}

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for n in sorted(graph[m]):
            if state.get(n) == 1:
                raise AssertionError("import cycle: " + " -> ".join([*path, m, n]))
            if n not in state:
                visit(n, [*path, m])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [])


def test_pipeline_names_are_the_schemas():
    import json

    from attn_cli.trace import PIPELINES

    schema = json.loads((PACKAGE / "schema" / "trace-v1.schema.json").read_text(encoding="utf-8"))
    assert tuple(schema["properties"]["config"]["properties"]["pipeline"]["enum"]) == PIPELINES
    assert attn_cli.explain("a b").config["pipeline"] == "toy"
    assert attn_cli.explain("a b", qkv=True).config["pipeline"] == "qkv"


def test_readme_lists_every_module_once():
    """The README's module table: one row per module of attn_cli, no more, no fewer."""
    readme = (PACKAGE.parent / "README.md").read_text(encoding="utf-8")
    table = readme.split("| module | what it holds |", 1)[1].split("\n\n", 1)[0]
    listed = re.findall(r"^\| `([^`]+)` \|", table, re.M)
    files = sorted(str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*.py"))
    assert sorted(listed) == files
    assert len(listed) == len(set(listed))


def test_compute_modules_do_no_io_and_never_import_torch():
    for p in PACKAGE.rglob("*.py"):
        text = p.read_text(encoding="utf-8")
        assert "import torch" not in text and "from torch" not in text, p
    for name in ("attention.py", "narrate.py"):
        mods = _imports(PACKAGE / name)
        assert not {m for m in mods if m.startswith(("attn_cli.render", "attn_cli.cli"))}, name


def test_import_attn_cli_is_light():
    code = "import sys, attn_cli; print(sorted(m for m in ('numpy', 'rich', 'tokenizers', 'textual', 'gguf', 'torch') if m in sys.modules))"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert r.stdout.strip() == "[]"


def test_every_command_has_help_text():
    import typer.main

    from attn_cli.cli import app

    group = typer.main.get_group(app)
    assert group.commands
    for name, command in group.commands.items():
        assert (command.help or "").strip(), name
        r = invoke([name, "--help"])
        assert r.exit_code == 0, (name, r.stderr)
        assert "Usage" in r.stdout
