"""Hostile files and hostile environments (issue 28, items 1, 8, 9, 10, 12, 13), replayed
through the CLI from the small files tests/hostile.py makes. Each case must end in its exit
code, one line on stderr and no traceback, with no terminal escape sequence from a file
reaching the terminal or an exported file, in bounded time (subprocess timeouts) and bounded
memory (RLIMIT_AS in the child, so a regression fails instead of eating the machine)."""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import orjson
import pytest

from tests import hostile
from tests.conftest import ROOT, invoke

GIB = 2**30
TINY_BERT = ROOT / "tests" / "fixtures" / "tiny_bert"
# What a file's payload would do on a terminal: clear it, write the clipboard, link.
PAYLOADS = (b"\x1b[2J", b"\x1b]52", b"\x1b]8", "\x9b".encode())


def run(
    args: list[str],
    *,
    input: bytes | None = None,
    timeout: float = 30,
    memory: int = 2 * GIB,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
    close_stdout: bool = False,
    **streams,
) -> subprocess.CompletedProcess:
    """The CLI in a child process with at most `memory` bytes of address space; stdout and
    stderr captured unless `streams` says otherwise."""

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
        if close_stdout:
            os.close(1)

    r = subprocess.run(
        [sys.executable, "-m", "attn_cli", *args],
        input=input,
        stdout=streams.get("stdout", subprocess.PIPE),
        stderr=subprocess.PIPE,
        stdin=streams.get("stdin"),
        timeout=timeout,
        preexec_fn=limit,
        cwd=cwd,
        env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
    )
    r.stdout = r.stdout or b""
    return r


def one_line_error(r: subprocess.CompletedProcess, *, says: str, code: int = 2) -> str:
    """Exit `code`, and one line on stderr that says `says`: no traceback, no 'internal
    error', no Rust panic report, no escape byte."""
    err = r.stderr.decode()
    assert r.returncode == code, (r.returncode, err[-3000:])
    assert err.startswith("attn-cli: error: ") and err.count("\n") == 1, err[-3000:]
    assert says in err, err
    assert "internal error" not in err and "Traceback" not in err
    assert b"\x1b" not in r.stdout + r.stderr
    return err


# --- 1. a closed stdout keeps the exports; 12. stdout failures are one line ----------------


def _reader_gone(args: list[str], cwd: Path | None = None) -> subprocess.Popen:
    """The CLI writing into a pipe whose reader has already left (`| head -1` done, `less`
    quit): its first write to stdout meets EPIPE."""
    read, write = os.pipe()
    os.close(read)
    try:
        return subprocess.Popen(
            [sys.executable, "-m", "attn_cli", *args],
            cwd=cwd,
            stdout=write,
            stderr=subprocess.PIPE,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
    finally:
        os.close(write)


def test_closing_stdout_early_keeps_every_export(tmp_path):
    """`explain … --json y.json --npz y.npz --svg y.svg | head -1`: the files are whole and the
    run ends quietly with SIGPIPE's status (before: killed by SIGPIPE, no y.json)."""
    exports = ["--json", "y.json", "--npz", "y.npz", "--svg", "y.svg"]
    proc = _reader_gone(["explain", "hi how are you", *exports], cwd=tmp_path)
    assert proc.wait(timeout=60) == 141
    assert proc.stderr is not None and proc.stderr.read() == b""
    doc = orjson.loads((tmp_path / "y.json").read_bytes())
    assert doc["tokens"] == ["hi", "how", "are", "you"]
    with np.load(tmp_path / "y.npz") as npz:
        assert "0/trace.json.npy" in [f + ".npy" for f in npz.files]
    assert (tmp_path / "y.svg").read_text().rstrip().endswith("</svg>")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["y.json", "y.npz", "y.svg"]


def test_closing_stdout_early_without_exports_stops_quietly():
    proc = _reader_gone(["explain", "hi how are you"])
    assert proc.wait(timeout=60) == 141
    assert proc.stderr is not None and proc.stderr.read() == b""


def test_a_full_disk_on_stdout_is_one_line():
    with open("/dev/full", "wb") as full:
        r = run(["explain", "hi"], stdout=full)
    one_line_error(r, says="cannot write to standard output: No space left on device")


def test_a_closed_stdout_is_one_line():
    r = run(["explain", "hi"], close_stdout=True)
    one_line_error(r, says="cannot write to standard output: Bad file descriptor")


# --- 9. outputs: planted symlinks, SIGTERM, one path twice -----------------------------------


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a symlink to another user needs root")
def test_a_symlink_planted_in_a_sticky_directory_is_not_followed(tmp_path):
    victim = tmp_path / "victim"
    victim.write_text("secret")
    victim.chmod(0o600)
    link = hostile.sticky_directory_with_planted_link(tmp_path, victim)
    for flag in ("--json", "--svg", "--npz"):
        r = run(["explain", "hi", flag, str(link)])
        one_line_error(r, says="symbolic link another user made in a shared (sticky) directory")
        assert victim.read_text() == "secret" and link.is_symlink()
    assert sorted(p.name for p in link.parent.iterdir()) == ["report.json"]  # no temp left


def test_sigterm_mid_export_removes_the_temp_file(tmp_path):
    """SIGTERM while --json is being computed: exit 143, one line, no `.out.json.*.tmp` left
    (before: killed, the temp file stayed)."""
    text = ("word " * 3000).encode()
    proc = subprocess.Popen(
        [sys.executable, "-m", "attn_cli", "explain", "-", "--qkv", "--heads", "4"]
        + ["--steps", "all", "--json", "out.json"],
        cwd=tmp_path,
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert proc.stdin is not None and proc.stderr is not None
    proc.stdin.write(text)
    proc.stdin.close()
    deadline = time.monotonic() + 30
    while not list(tmp_path.glob(".out.json.*.tmp")):
        assert time.monotonic() < deadline and proc.poll() is None, "no temp file appeared"
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 143
    assert proc.stderr.read() == b"attn-cli: terminated\n"
    assert list(tmp_path.iterdir()) == []


def test_two_exports_to_one_path_are_refused(tmp_path):
    target = tmp_path / "x.out"
    r = invoke(["explain", "hi", "--json", str(target), "--html", str(target)])
    assert r.exit_code == 2 and not target.exists()
    assert (
        r.stderr
        == f"attn-cli: error: --json and --html both write {target}: give each its own path\n"
    )
    r = invoke(["compare", "a b", "a c", "--json", str(target), "--svg", str(target)])
    assert r.exit_code == 2 and "--json and --svg both write" in r.stderr
    corpus = tmp_path / "c.txt"
    corpus.write_text("hi\n")
    # before the model is even looked for
    r = invoke(
        ["heads", str(corpus), "-m", "no-such-model", "--svg", str(target), "--html", str(target)]
    )
    assert r.exit_code == 2 and "--svg and --html both write" in r.stderr


# --- 8. escape sequences from files ----------------------------------------------------------


VIEWS = ("steps", "overview", "summary", "top", "heatmap", "geometry", "grid")


@pytest.mark.parametrize("view", VIEWS)
def test_a_saved_trace_with_escape_sequences_prints_them_as_text(tmp_path, view):
    """Notes, config, step names, formulas, descriptions and labels of a saved trace hold
    clear-screen, OSC 52 and OSC 8 sequences: none reaches stdout, stderr, --svg or --html."""
    saved = hostile.escaping_trace(tmp_path)
    svg, html = tmp_path / "o.svg", tmp_path / "o.html"
    r = invoke(["show", str(saved), "--view", view, "--svg", str(svg), "--html", str(html)])
    assert r.exit_code == 0, r.stderr
    assert "\x1b" not in r.stdout + r.stderr and "\x9b" not in r.stdout
    assert b"\x1b" not in svg.read_bytes() + html.read_bytes()
    assert "\\x1b" in r.stdout  # shown, escaped
    coloured = invoke(["show", str(saved), "--view", view, "--color"]).stdout.encode()
    assert not any(p in coloured for p in PAYLOADS)  # Rich's own colours only


def test_the_interactive_page_of_a_hostile_trace_holds_no_escape_byte(tmp_path):
    saved = hostile.escaping_trace(tmp_path)
    page = tmp_path / "p.html"
    r = invoke(["show", str(saved), "--html", str(page), "--interactive", "--view", "summary"])
    assert r.exit_code == 0, r.stderr
    assert b"\x1b" not in page.read_bytes() and "\x1b" not in r.stdout


def test_the_no_vector_note_escapes_the_file_name(tmp_path):
    vectors = hostile.word_vectors_with_escapes(tmp_path)
    r = invoke(["explain", "hi there", "-e", str(vectors)])
    assert r.exit_code == 0, r.stderr
    assert "has no vector for 2 of 2 tokens" in r.stdout and "\x1b" not in r.stdout


def test_models_lists_hostile_names_and_metadata_as_text(tmp_path, monkeypatch):
    """Repository names, a config's model_type, GGUF file names and architectures with escape
    sequences are listed escaped (they are escaped where they are read)."""
    from attn_cli.gguf.locate import discover as discover_gguf
    from attn_cli.models.checkpoint import discover

    lmstudio = tmp_path / ".lmstudio" / "models" / "x"
    lmstudio.mkdir(parents=True)
    hostile.gguf_with_escapes(lmstudio)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("HF_HUB_CACHE", str(hostile.hf_cache_with_escapes(tmp_path / "hub")))
    monkeypatch.setenv("OLLAMA_MODELS", str(tmp_path / "ollama"))
    found = {listed.name: listed for listed in discover()}
    name = "evil\\x1b[2J\\x1b[H/name\\x1b]52;c;aGFja2Vk\\x07"
    listed = found[name]
    assert listed.family is not None and listed.family.startswith("bert\\x1b[2J")
    assert listed.problem is not None and listed.problem.endswith("is not supported")
    (gguf,) = [g for g in discover_gguf() if g.source == "lmstudio"]
    assert gguf.family == (
        "llama\\x1b[2J\\x1b[H\\x1b]52;c;aGFja2Vk\\x07"
        "\\x1b]8;;https://evil.example/\\x1b\\click\\x1b]8;;\\x1b\\\\x9b31m"
    )
    assert gguf.name.endswith("model\\x1b[2J\\x1b[H.gguf") and gguf.error is None
    r = invoke(["models"])
    assert r.exit_code == 0, r.stderr
    assert "\x1b" not in r.stdout and "\x9b" not in r.stdout
    assert name in r.stdout and "llama\\x1b[2J" in r.stdout


# --- 10. unbounded allocations ----------------------------------------------------------------


@pytest.mark.parametrize("flag", [["-e"], ["--qkv", "--weights"]])
def test_an_npz_bomb_is_refused_by_its_headers(tmp_path, flag):
    """A 200-byte .npz claiming 3 GiB: refused before anything is inflated, within 1 GiB of
    address space."""
    bomb = hostile.npz_bomb(tmp_path)
    assert bomb.stat().st_size < 1000
    r = run(["explain", "hi", *flag, str(bomb)], memory=GIB, timeout=20)
    one_line_error(r, says="bomb.npz would decompress to 3.0 GiB")


def test_an_npz_whose_header_claims_more_than_it_holds_is_refused(tmp_path):
    import io
    import zipfile

    from attn_cli.embeddings import load_npz
    from attn_cli.errors import InputError

    member = io.BytesIO()
    np.save(member, np.zeros((4, 2)))
    path = tmp_path / "liar.npz"
    with zipfile.ZipFile(path, "w") as z:  # numpy would allocate 9 × 2 before reading 4 × 2
        z.writestr("embeddings.npy", member.getvalue().replace(b"(4, 2)", b"(9, 2)"))
    with pytest.raises(InputError, match=r"claims 144 bytes of data .* but holds 64"):
        load_npz(path)


@pytest.mark.parametrize("command", ["explain", "models"])
def test_a_gguf_of_millions_of_empty_nested_arrays_is_refused_at_once(tmp_path, command):
    """25 million empty nested arrays (a sparse 300 MB file): one line at once, in 1 GiB
    (before: 4.3 GB and 79 s)."""
    home = tmp_path / "home"
    folder = home / ".lmstudio" / "models" / "x"
    folder.mkdir(parents=True)
    nested = hostile.gguf_nested_arrays(folder)
    assert nested.stat().st_blocks * 512 < 1 << 20  # sparse: no disk used
    env = {"HOME": str(home), "HF_HUB_CACHE": str(tmp_path / "hub"), "OLLAMA_MODELS": str(home)}
    if command == "explain":
        r = run(["explain", "hi", "--model", str(nested)], memory=GIB, timeout=20, env=env)
        one_line_error(r, says="'general.nested': more than 65536 nested arrays")
    else:
        r = run(["models"], memory=GIB, timeout=20, env=env)
        assert r.returncode == 0 and r.stderr == b""
        shown = b" ".join(r.stdout.split())  # the table wraps long cells
        assert b"nested.gguf is not a valid GGUF file: 'general.nested': more than 65536" in shown


@pytest.mark.parametrize(
    "args", [["show", "/dev/zero"], ["show", "-"], ["explain"], ["explain", "-"]]
)
def test_an_endless_input_is_refused_within_a_bound(args):
    with open("/dev/zero", "rb") as zero:
        r = run(args, stdin=zero, memory=GIB, timeout=20)
    says = (
        "not valid JSON (it holds NUL bytes)"
        if args[0] == "show"
        else "stdin: line 1 is longer than 4,000,000"
    )
    one_line_error(r, says=says)


def test_heads_over_dev_zero_stops(tmp_path):
    r = run(
        ["heads", "/dev/zero", "--model", str(TINY_BERT), "-j", "1"], memory=2 * GIB, timeout=30
    )
    one_line_error(r, says="/dev/zero: line 1 is longer than 4,000,000 bytes")


@pytest.mark.parametrize(
    "line, says",
    [
        (b"ab " * 7_000_000, "stdin: line 1 is longer than 4,000,000 bytes"),  # read no further
        (b"ab " * 1_000_000, "stdin line 1 is 3,000,000 characters, more than the 1,000,000"),
    ],
    ids=["21-MB", "3-MB"],
)
def test_a_very_long_line_is_refused_before_it_is_tokenized(line, says):
    """Before: a 20 MB line took 112 s and 4 GB to tokenize, then came the length check."""
    start = time.monotonic()
    r = run(["explain"], input=line + b"\n", memory=GIB, timeout=30)
    one_line_error(r, says=says)
    assert time.monotonic() - start < 15


def test_heads_caps_its_workers_to_the_cores(tmp_path):
    corpus = tmp_path / "c.txt"
    corpus.write_text("the cat sat\nhello world\n")
    r = run(
        ["heads", str(corpus), "--model", str(TINY_BERT), "-j", "64"], memory=8 * GIB, timeout=120
    )
    cores = os.cpu_count()
    assert r.returncode == 0, r.stderr.decode()[-2000:]
    assert (
        r.stderr.decode()
        == f"attn-cli: note: --workers 64 capped to this machine's {cores} cores\n"
    )


# --- 12. tracebacks that escaped ---------------------------------------------------------------


@pytest.mark.parametrize(
    "make, text, extra, reason",
    [
        (
            hostile.catastrophic_regex_tokenizer,
            hostile.CATASTROPHIC_TEXT,
            [],
            "retry-limit-in-match",
        ),
        (hostile.missing_special_token_tokenizer, "hi", ["--special"], "no entry found for key"),
    ],
)
def test_a_tokenizer_panic_is_one_line(tmp_path, make, text, extra, reason):
    """A Rust panic inside `tokenizers` is a BaseException: before, ~50 lines of traceback
    (and Rust's own panic report) reached the user."""
    tokenizer = make(tmp_path)
    r = run(["explain", text, "--tokenizer", str(tokenizer), "-e", "random", *extra])
    one_line_error(r, says="the tokenizer failed on this text (")
    assert reason in r.stderr.decode() and b"panicked" not in r.stderr


def test_heads_reports_a_checkpoint_that_does_not_load_once(tmp_path):
    """Before: a traceback per worker, then death by SIGPIPE with no error line."""
    broken = hostile.checkpoint_that_does_not_load(tmp_path, TINY_BERT)
    corpus = tmp_path / "c.txt"
    corpus.write_text("the cat sat\n" * 4)
    r = run(["heads", str(corpus), "--model", str(broken), "-j", "2"], memory=4 * GIB)
    one_line_error(r, says="model.safetensors is not a readable safetensors file")


def _session(sid: int) -> list[int]:
    """Live processes of a session (a spawned worker or resource tracker outlives its parent
    in it)."""
    members = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[3]) == sid and fields[0] != "Z":
                members.append(int(entry))
    return members


def test_sigterm_stops_heads_workers(tmp_path):
    corpus = tmp_path / "c.txt"
    corpus.write_text("the cat sat on the mat\n" * 20000)
    proc = subprocess.Popen(
        [sys.executable, "-m", "attn_cli", "heads", str(corpus), "--model", str(TINY_BERT)]
        + ["-j", "2"],
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert proc.stderr is not None
    deadline = time.monotonic() + 60
    while len(_session(proc.pid)) < 4:  # the parent, its resource tracker, two workers
        assert time.monotonic() < deadline and proc.poll() is None, "workers did not start"
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 143
    assert proc.stderr.read() == b"attn-cli: terminated\n"
    deadline = time.monotonic() + 10
    while _session(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _session(proc.pid) == []


def test_a_300k_character_label_renders_at_once(tmp_path):
    """Labels were cut one character at a time (over 120 s for this heatmap)."""
    saved = hostile.long_label_trace(tmp_path)
    r = run(["show", str(saved), "--view", "heatmap"], timeout=30)
    assert r.returncode == 0, r.stderr.decode()[-2000:]
    assert "\n1 xxxxxxxxx… " in r.stdout.decode()


# --- 13. no network from an exported picture ----------------------------------------------------


def test_an_svg_export_loads_no_remote_font(tmp_path):
    svg = tmp_path / "o.svg"
    r = invoke(["explain", "hi how are you", "--svg", str(svg)])
    assert r.exit_code == 0, r.stderr
    text = svg.read_text()
    assert "@font-face" not in text and "cdnjs" not in text and "url(http" not in text
    # the only URLs left are the SVG namespace and Rich's credit, in a comment
    import re

    assert sorted(set(re.findall(r"https?://[^\"\s)]+", text))) == [
        "http://www.w3.org/2000/svg",
        "https://www.textualize.io",
    ]
    assert "monospace" in text


@pytest.mark.parametrize(
    "args, says",
    [
        (
            [b"w3", b"--model", b"tests/fixtures/tiny_seq2seq/t5", b"--target", b"w4 \xff"],
            "--target is not valid UTF-8 (byte 0xff at offset 3)",
        ),
        (
            [b"hi", b"--model", str(TINY_BERT).encode(), b"--pair", b"x \xfe"],
            "--pair is not valid UTF-8 (byte 0xfe at offset 2)",
        ),
    ],
)
def test_a_target_or_pair_that_is_not_utf8_is_one_line(args, says):
    """Undecodable argv bytes in --target / --pair (as in TEXT) are named, not a TypeError
    from the tokenizer; the Python API refuses lone surrogates the same way."""
    import attn_cli
    from attn_cli.errors import InputError

    one_line_error(run(["explain", *args], cwd=ROOT), says=says)
    m = attn_cli.load_model(ROOT / "tests" / "fixtures" / "tiny_seq2seq" / "t5")
    with pytest.raises(InputError, match="target is not valid UTF-8"):
        m.trace("w3", target="w4 \udcff")
