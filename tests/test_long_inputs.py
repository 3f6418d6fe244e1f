"""Long inputs: a 20,000-token text runs (it used to crash in OpenBLAS's threaded SYRK), the
parameter-free pipeline switches to float32 from FLOAT32_FROM tokens with a checked error bound,
a progress line appears on a terminal's stderr only, and --json writes through a symlink."""

from __future__ import annotations

import math
import os
import resource
import shutil
import subprocess
import sys
import time

import numpy as np
import orjson
import pytest

import attn_cli
from attn_cli.pipelines import FLOAT32_FROM
from attn_cli.progress import Progress
from tests.conftest import SAMPLES, invoke, run_with_stderr_on_a_terminal

GIB = 2**30


def cli() -> list[str]:
    exe = shutil.which("attn-cli")
    return [exe] if exe else [sys.executable, "-m", "attn_cli"]


@pytest.fixture(scope="module")
def twenty_thousand():
    """The issue's command, once: `python -c "print('word ' * 20000)" | attn-cli explain -
    --json /dev/null` (exit 139 before W_raw was computed in row blocks). Peak RSS of the
    child, from getrusage (the largest child this test process has waited for)."""
    text = "word " * 20000 + "\n"
    start = time.monotonic()
    r = subprocess.run(
        [*cli(), "explain", "-", "--json", "/dev/null"],
        input=text.encode(),
        capture_output=True,
        timeout=1800,
    )
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
    return r, peak, time.monotonic() - start


def test_twenty_thousand_tokens_exit_0(twenty_thousand):
    r, _, _ = twenty_thousand
    assert r.returncode == 0, r.stderr.decode()[-2000:]
    assert r.stderr == b""  # no progress line: stderr is a pipe here
    out = r.stdout.decode()
    assert "20000 tokens" in out and "float32" in out


def test_twenty_thousand_tokens_peak_memory(twenty_thousand):
    _, peak, _ = twenty_thousand
    assert peak <= 9 * GIB, f"peak RSS {peak / GIB:.1f} GiB"


def long_text(min_tokens: int) -> str:
    words = (SAMPLES / "long.txt").read_text().split()
    out: list[str] = []
    while len(out) < min_tokens:
        out += words
    return " ".join(out)


def test_float32_from_the_threshold_and_its_error_bound():
    """Below FLOAT32_FROM tokens the toy pipeline is float64; from there on float32, and the
    config says so. Error bound, against an independent float64 computation (einsum on the
    float64 embeddings): scores S = X·Xᵀ change by at most δ_ij = (d + 2)·u·‖x_i‖·‖x_j‖ with
    u = 2⁻²⁴ (inputs rounded to float32, then d products summed), so each weight changes by a
    factor within exp(±2·max_j δ_ij), plus a few roundings of exp, sum and division."""
    small = attn_cli.explain("hi how are you")
    assert small.config["dtype"] == "float64" and small.config["float32_from_tokens"] == 4096
    t = attn_cli.explain(long_text(FLOAT32_FROM + 500))
    n = len(t.tokens)
    assert n >= FLOAT32_FROM
    assert t.config["dtype"] == "float32" and t.step("W").data.dtype == np.float32
    assert any("float32" in note for note in t.notes)

    from attn_cli.embeddings import bundled_embeddings

    x = bundled_embeddings(t.token_ids)  # float64
    s = np.einsum("id,jd->ij", x, x)
    w64 = np.exp(s - s.max(axis=1, keepdims=True))
    w64 /= w64.sum(axis=1, keepdims=True)
    u, d = 2.0**-24, x.shape[1]
    norms = np.linalg.norm(x, axis=1)
    delta = (d + 2) * u * norms * norms.max()  # max over j of δ_ij, per row i
    rel_bound = np.expm1(2 * delta)[:, None] + (8 + math.log2(n)) * u
    w32 = t.step("W").data.astype(np.float64)
    rel = np.abs(w32 - w64) / w64
    assert np.all(rel <= rel_bound), float((rel / rel_bound).max())
    # In absolute terms: every weight within 1e-7 of float64 (measured: 2e-9 at 6,144 tokens).
    assert np.abs(w32 - w64).max() < 1e-7
    y64 = w64 @ x
    np.testing.assert_allclose(t.step("Y").data, y64, atol=1e-5)


def test_json_writes_through_a_symlink(tmp_path):
    target = tmp_path / "target.json"
    target.write_text("old")
    link = tmp_path / "link.json"
    link.symlink_to(target)
    r = invoke(["explain", "hi how are you", "--json", str(link)])
    assert r.exit_code == 0, r.stderr
    assert link.is_symlink() and os.readlink(link) == str(target)
    assert orjson.loads(target.read_bytes())["tokens"] == ["hi", "how", "are", "you"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link.json", "target.json"]


# --- the progress line ------------------------------------------------------------------


class FakeStream:
    def __init__(self, tty: bool) -> None:
        self.tty, self.parts = tty, []

    def isatty(self) -> bool:
        return self.tty

    def write(self, s: str) -> int:
        self.parts.append(s)
        return len(s)

    def flush(self) -> None:
        pass


def test_progress_is_silent_when_stderr_is_not_a_terminal():
    stream = FakeStream(tty=False)
    with Progress("explain", 3, stream=stream, delay=0.01) as bar:
        bar.phase("working")
        time.sleep(0.3)
        bar.advance()
    assert stream.parts == []


def test_progress_is_silent_for_short_work():
    stream = FakeStream(tty=True)
    with Progress("explain", 3, stream=stream, delay=1.0) as bar:
        bar.phase("quick")
        bar.advance()
    time.sleep(0.2)
    assert "".join(stream.parts) == ""


def test_progress_line_on_a_terminal_only_on_stderr():
    """The CLI with stderr on a pseudo-terminal and stdout on a pipe: the progress line goes
    to the terminal (and is erased at the end), stdout holds the JSON and nothing else."""
    text = "word " * 6000 + "\n"
    # The bar shows from the first moment: the test does not depend on machine speed.
    env = {**os.environ, "COLUMNS": "80", "TERM": "xterm-256color", "ATTN_CLI_PROGRESS_DELAY": "0"}
    code, out, seen = run_with_stderr_on_a_terminal(
        [*cli(), "explain", "-", "--json", "-", "--steps", "X"], env, text.encode()
    )
    assert code == 0
    assert b"explain" in seen and b"6,000 tokens" in seen, bytes(seen[-300:])
    doc = orjson.loads(out)  # stdout: exactly one JSON document
    assert len(doc["tokens"]) == 6000 and b"\x1b" not in out
