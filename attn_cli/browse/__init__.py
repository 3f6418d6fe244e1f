"""`attn-cli browse`: a full-screen terminal browser (Textual) over traces.

Textual is imported only when the browser runs (or `BrowseApp` is asked for), so importing
attn_cli, or this package, stays light and works without Textual installed.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from typing import TYPE_CHECKING, Any

from attn_cli.errors import InputError

if TYPE_CHECKING:
    from attn_cli.browse.app import BrowseApp
    from attn_cli.trace import Trace

__all__ = ["BrowseApp", "require_browser", "run_browser", "textual_missing"]

INSTALL_HINT = "pip install 'attn-cli[browse]' (or: pip install textual)"


def textual_missing() -> bool:
    return importlib.util.find_spec("textual") is None


def require_browser() -> None:
    """The checks run_browser makes, for the CLI to call before it runs a model or reads a
    large file: one-line InputError when Textual is missing or stdout is not a terminal."""
    if textual_missing():
        raise InputError(f"attn-cli browse needs Textual: {INSTALL_HINT}")
    if not _isatty(sys.stdout):
        raise InputError(
            "the browser needs a terminal, and stdout is not one: print the tables or write "
            "the HTML page instead"
        )


def run_browser(traces: list[Trace], precision: int = 2, top_k: int = 3) -> None:
    """Open the browser on these traces; returns when the user quits (q), with the terminal
    restored. Keys come from the terminal even when stdin was a pipe (already read). One-line
    InputError when Textual is missing or stdout is not a terminal."""
    if not any(t.steps and t.tokens for t in traces):
        raise InputError("nothing to browse: no trace with tokens and steps")
    require_browser()
    if not _isatty(sys.stdin):
        _keys_from_terminal()
    from attn_cli.browse.app import BrowseApp

    BrowseApp(traces, precision=precision, top_k=top_k).run()


def _isatty(stream: Any) -> bool:
    try:
        return stream is not None and stream.isatty()
    except (AttributeError, ValueError):
        return False


def _keys_from_terminal() -> None:
    """stdin was a pipe or a file (the text or the saved trace came from it, and has been read
    by now): read keys from the controlling terminal instead, as `less` does."""
    try:
        fd = os.open("/dev/tty", os.O_RDWR)
    except OSError:
        raise InputError(
            "attn-cli browse reads keys from a terminal, and there is none to open "
            "(stdin is not a terminal and /dev/tty is unavailable)"
        ) from None
    try:
        os.dup2(fd, 0)
    finally:
        os.close(fd)


def __getattr__(name: str) -> Any:
    if name == "BrowseApp":
        if textual_missing():
            raise InputError(f"attn-cli browse needs Textual: {INSTALL_HINT}")
        from attn_cli.browse.app import BrowseApp

        return BrowseApp
    raise AttributeError(name)
