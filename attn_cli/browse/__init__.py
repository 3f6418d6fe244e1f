"""`attn-cli browse`: a full-screen terminal browser (Textual) over traces.

Textual is imported only when the browser runs (or `BrowseApp` is asked for), so importing
attn_cli, or this package, stays light and works without Textual installed.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

from attn_cli.errors import InputError

if TYPE_CHECKING:
    from attn_cli.browse.app import BrowseApp
    from attn_cli.trace import Trace

__all__ = ["BrowseApp", "run_browser", "textual_missing"]

INSTALL_HINT = "pip install 'attn-cli[browse]' (or: pip install textual)"


def textual_missing() -> bool:
    import importlib.util

    return importlib.util.find_spec("textual") is None


def run_browser(traces: list[Trace], precision: int = 2, top_k: int = 3) -> None:
    """Open the browser on these traces; returns when the user quits (q), with the terminal
    restored. One-line InputError when Textual is missing or there is no terminal."""
    if not traces:
        raise InputError("nothing to browse: no input text")
    if textual_missing():
        raise InputError(f"attn-cli browse needs Textual: {INSTALL_HINT}")
    if not (sys.stdin.isatty() and sys.stdout.isatty()):
        raise InputError(
            "attn-cli browse needs a terminal (stdin and stdout): pass the text as an argument, "
            "or save a trace with --json and run `attn-cli show FILE --browse`"
        )
    from attn_cli.browse.app import BrowseApp

    BrowseApp(traces, precision=precision, top_k=top_k).run()


def __getattr__(name: str) -> Any:
    if name == "BrowseApp":
        if textual_missing():
            raise InputError(f"attn-cli browse needs Textual: {INSTALL_HINT}")
        from attn_cli.browse.app import BrowseApp

        return BrowseApp
    raise AttributeError(name)
