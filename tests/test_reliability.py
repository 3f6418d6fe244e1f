"""Bad input of every kind: a one-line error and exit code 2, or a literal rendering; never a
traceback, never a mangled terminal, never a half-written file."""

from __future__ import annotations

import re
import subprocess
import sys

import numpy as np
import orjson
import pytest
from tokenizers import Tokenizer, models, pre_tokenizers

from attn_cli.cli import main
from tests.conftest import ANSI, SAMPLES, invoke


def err(message: str) -> str:
    return f"attn-cli: error: {message}\n"


def run_main(args, capsys) -> tuple[int, str, str]:
    code = main(args)
    out = capsys.readouterr()
    return code, out.out, out.err


# ------------------------------------------------------------------ text


def test_hundred_thousand_characters():
    r = invoke(["explain", "a" * 100_000, "--json", "-"])
    assert r.exit_code == 0, r.stderr
    assert orjson.loads(r.stdout)["tokens"] == ["[UNK]"]  # one word longer than WordPiece's 100
    words = " ".join(["x" * 199] * 500)  # 100,000 characters, 500 tokens
    assert len(words) == 100_000 - 1
    r = invoke(["explain", words, "-e", "random", "--dim", "4", "--view", "heatmap"])
    assert r.exit_code == 0, r.stderr


def test_too_many_tokens_for_this_machine(monkeypatch):
    monkeypatch.setattr("attn_cli.memory.total_memory", lambda: 2**30)
    # From 4,096 tokens on the matrices are float32: W_raw and W, 12,000² × 4 bytes each.
    r = invoke(["explain", " ".join(["hi"] * 12000)])
    assert r.exit_code == 2
    assert r.stderr.startswith(err("the text is 12,000 tokens: the run would need about ")[:-1])
    assert r.stderr.endswith("more than 85% of this machine's 1.0 GiB; use a shorter text\n")


def test_invalid_utf8_on_stdin():
    r = invoke(["explain"], input=b"hi \xff there\n")
    assert r.exit_code == 2
    assert r.stderr == err("stdin is not valid UTF-8 (byte 0xff at offset 3)")


def test_invalid_utf8_in_the_argument():
    r = invoke(["explain", "hi \udcff"])  # how Python hands over argv byte 0xff
    assert r.exit_code == 2
    assert r.stderr == err("the text is not valid UTF-8 (byte 0xff at offset 3)")
    r = invoke(["explain", "hi \ud800"])
    assert r.stderr == err("the text holds unpaired surrogate characters, which are not text")


def test_nul_bytes_are_data():
    r = invoke(["explain", "--json", "-"], input=b"hi\x00how are you\n")
    assert r.exit_code == 0, r.stderr
    doc = orjson.loads(r.stdout)
    assert doc["text"] == "hi\x00how are you"
    # BERT's normaliser deletes control characters, so "hi\x00how" is read as "hihow".
    assert doc["tokens"] == ["hi", "##how", "are", "you"]


def word_tokenizer(tmp_path, words: list[str]):
    """A whitespace tokenizer whose tokens are exactly these words (markup, escapes, emoji…)."""
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token=words[0]))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    path = tmp_path / "tokenizer.json"
    tok.save(str(path))
    return path


@pytest.mark.parametrize("color", ["--color", "--no-color"])
def test_markup_and_escape_sequences_are_shown_literally(tmp_path, color):
    words = ["[red]x[/red]", "[link=https://e.invalid]y", "\x1b[31mz", "[bold]"]
    path = word_tokenizer(tmp_path, words)
    r = invoke(["explain", " ".join(words), "--tokenizer", str(path), "-e", "random", color])
    assert r.exit_code == 0, r.stderr
    assert "[red]x[/red]" in r.stdout and "[link=https://e.invalid]y" in r.stdout
    assert "\\x1b[31mz" in r.stdout
    assert "\x1b[31mz" not in r.stdout and "\x1b]8;" not in r.stdout
    if color == "--no-color":
        assert not ANSI.search(r.stdout)


def test_rich_markup_in_the_text_with_the_bundled_tokenizer():
    r = invoke(["explain", "[red]x[/red] [link=https://e.invalid]y", "--color"])
    assert r.exit_code == 0, r.stderr
    plain = re.sub(r"\x1b\[[0-9;]*m", "", r.stdout)
    assert "attn-cli · [red]x[/red] [link=https://e.invalid]y" in plain
    assert "\x1b]8;" not in r.stdout


def test_emoji_rtl_and_zero_width_keep_tables_aligned(tmp_path):
    from rich.cells import cell_len

    words = ["🙂", "שלום", "مرحبا", "a\u200bb", "e\u0301", "猫"]
    path = word_tokenizer(tmp_path, words)
    r = invoke(
        ["explain", " ".join(words), "--tokenizer", str(path), "-e", "random", "--width", "100"]
    )
    assert r.exit_code == 0, r.stderr
    assert "a\\u200bb" in r.stdout and "\u200b" not in r.stdout
    block = r.stdout.split("W = softmax")[1].split("\nEach")[0].splitlines()[1:]
    widths = {cell_len(line.rstrip()) for line in block if line.strip()}
    assert len(widths) == 1, widths  # every row of the W table ends in the same column


# ------------------------------------------------------------------ files


def test_a_tokenizer_json_that_is_not_one(tmp_path):
    bad = tmp_path / "tokenizer.json"
    bad.write_text('{"hello": "world"}')
    r = invoke(["explain", "hi", "--tokenizer", str(bad)])
    assert r.exit_code == 2
    assert r.stderr.startswith(err(f"{bad} is not a valid tokenizer.json (")[:-1])
    assert r.stderr.count("\n") == 1
    r = invoke(["explain", "hi", "--tokenizer", str(tmp_path / "missing.json")])
    assert r.stderr == err(f"--tokenizer: {tmp_path / 'missing.json'} does not exist")


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "t.json: not valid JSON"),
        (b'{"format": "attn-cli/trace", "vers', "t.json: not valid JSON"),
        (b"[1, 2]", "t.json: not an attn-cli trace (expected a JSON object)"),
        (b'{"format": "other"}', "t.json: not an attn-cli trace (format is not 'attn-cli/trace')"),
        (
            b'{"format": "attn-cli/trace", "version": 3}',
            "t.json: trace version 3 is newer than this attn-cli reads (2): upgrade attn-cli",
        ),
        (
            b'{"format": "attn-cli/trace", "version": 1, "text": "x"}',
            "t.json: trace field 'tokens' is missing or not a list",
        ),
    ],
)
def test_show_rejects_bad_traces(tmp_path, content, message):
    path = tmp_path / "t.json"
    path.write_bytes(content)
    r = invoke(["show", str(path)])
    assert r.exit_code == 2
    assert r.stderr.startswith(f"attn-cli: error: {str(tmp_path)}/{message}")
    assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr


def test_show_rejects_a_truncated_export(tmp_path):
    good = invoke(["explain", "hi how are you", "--json", "-"]).stdout.encode()
    path = tmp_path / "t.json"
    path.write_bytes(good[: len(good) // 2])
    r = invoke(["show", str(path)])
    assert r.exit_code == 2 and r.stderr.startswith(f"attn-cli: error: {path}: not valid JSON")
    doc = orjson.loads(good)
    doc["steps"][1]["data"] = [[1, 2], [3]]
    path.write_bytes(orjson.dumps(doc))
    r = invoke(["show", str(path)])
    assert r.exit_code == 2
    assert r.stderr == err(
        f"{path} step 1: 'shape' does not match 'rows' and 'cols'"
    ) or r.stderr.startswith(f"attn-cli: error: {path} step 1: 'data'")


def test_show_missing_file():
    r = invoke(["show", "/nonexistent/t.json"])
    assert r.exit_code == 2 and r.stderr == err("/nonexistent/t.json does not exist")


def test_output_in_a_missing_directory(tmp_path):
    target = tmp_path / "nope" / "hi.json"
    r = invoke(["explain", "hi", "--json", str(target)])
    assert r.exit_code == 2
    assert r.stderr == err(f"cannot write {target}: directory {target.parent} does not exist")
    assert not target.parent.exists()


def test_output_without_permission(tmp_path, monkeypatch):
    def denied(*a, **k):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr("attn_cli.export.tempfile.mkstemp", denied)
    r = invoke(["explain", "hi", "--json", str(tmp_path / "hi.json")])
    assert r.exit_code == 2
    assert r.stderr == err(f"cannot write {tmp_path / 'hi.json'}: Permission denied")
    assert list(tmp_path.iterdir()) == []


def test_output_path_is_a_directory(tmp_path):
    r = invoke(["explain", "hi", "--svg", str(tmp_path)])
    assert r.exit_code == 2 and r.stderr == err(f"cannot write {tmp_path}: it is a directory")


# ------------------------------------------------------------------ process behaviour


def test_usage_errors_are_one_line(capsys):
    code, out, e = run_main(["explain", "--nope"], capsys)
    assert code == 2 and out == ""
    assert e.startswith("attn-cli: error: No such option: --nope") and e.count("\n") == 1
    assert e.endswith("(see attn-cli --help)\n")
    code, _, e = run_main(["explain", "hi", "--dim", "x"], capsys)
    assert code == 2 and e == err(
        "Invalid value for '--dim': 'x' is not a valid int. (see attn-cli --help)"
    )


def test_internal_errors_are_one_line_unless_debug(capsys, monkeypatch):
    def boom(*a, **k):
        raise RuntimeError("kaput")

    monkeypatch.setattr("attn_cli.narrate.toy_steps", boom)
    code, _, e = run_main(["explain", "hi"], capsys)
    assert code == 1
    assert e == err("internal error: RuntimeError: kaput (rerun with --debug for the traceback)")
    with pytest.raises(RuntimeError):
        main(["--debug", "explain", "hi"])


def test_ctrl_c_exits_130_and_leaves_no_file(tmp_path, capsys, monkeypatch):
    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr("attn_cli.export.trace_document", interrupted)
    target = tmp_path / "hi.json"
    code, _, e = run_main(["explain", "hi", "--json", str(target)], capsys)
    assert code == 130 and "Traceback" not in e
    assert list(tmp_path.iterdir()) == []


def test_broken_pipe_ends_quietly():
    cmd = f"{sys.executable} -m attn_cli explain - --width 80 < {SAMPLES / 'long.txt'} | head -1"
    p = subprocess.run(
        ["bash", "-o", "pipefail", "-c", cmd], capture_output=True, text=True, timeout=120
    )
    assert p.stdout.startswith("attn-cli · ")
    assert p.stderr == ""  # no BrokenPipeError, no traceback


def test_sigint_in_a_real_process_exits_130(tmp_path):
    import signal
    import time

    target = tmp_path / "big.json"
    text = " ".join(["hi"] * 3000)
    proc = subprocess.Popen(
        [sys.executable, "-m", "attn_cli", "explain", text, "-e", "random", "--json", str(target)],
        stderr=subprocess.PIPE,
        text=True,
    )
    time.sleep(1.0)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    if proc.returncode == 0:
        pytest.skip("finished before the signal arrived")
    assert proc.returncode == 130 and "Traceback" not in stderr
    assert [p.name for p in tmp_path.iterdir()] in ([], ["big.json"])  # nothing partial
    if target.exists():
        orjson.loads(target.read_bytes())


# ------------------------------------------------------------------ numerics


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_extreme_embeddings(tmp_path, dtype):
    table = np.zeros((30522, 2), dtype=dtype)
    table[7632] = [1e15, 0]
    table[2129] = [-1e15, 1]
    np.save(tmp_path / "e.npy", table)
    doc = orjson.loads(
        invoke(["explain", "hi how are", "-e", str(tmp_path / "e.npy"), "--json", "-"]).stdout
    )
    w = np.array(doc["steps"][2]["data"])
    assert np.all(np.isfinite(w))
    np.testing.assert_allclose(w.sum(axis=1), 1.0)
    np.testing.assert_allclose(w[2], [1 / 3] * 3)  # 'are' is the zero vector: equal scores


def test_overflowing_scores_are_an_error(tmp_path):
    table = np.zeros((30522, 2))
    table[7632] = [1e200, 1e200]
    np.save(tmp_path / "e.npy", table)
    r = invoke(["explain", "hi how", "-e", str(tmp_path / "e.npy")])
    assert r.exit_code == 2
    assert r.stderr == err(
        "the scores overflowed (W_raw holds ±inf): the vectors are too large; scale them down"
    )


def test_nothing_prints_a_traceback_for_unreadable_stdin(monkeypatch):
    r = invoke(["show", "-"], input=b"\x00\x01garbage")
    assert r.exit_code == 2 and "Traceback" not in r.stderr
    assert r.stderr.startswith("attn-cli: error: stdin: not valid JSON")
