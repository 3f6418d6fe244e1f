"""One error type for everything a user can get wrong.

The CLI prints ``str(error)`` as a single line on stderr and exits with ``exit_code``:
2 for bad usage or bad input (the user can fix it), 1 for anything else.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar


class AttnError(Exception):
    """A user-facing error: one line, what was wrong and what to do."""

    def __init__(self, message: str, exit_code: int = 2) -> None:
        # One line, always: a newline inside a message would break the contract.
        super().__init__(" ".join(str(message).split()))
        self.exit_code = exit_code


class InputError(AttnError):
    """Bad text, bad file, bad option value: exit code 2."""


class OutputError(AttnError):
    """A file could not be written."""


# Error messages name what the user typed: a flag on the command line (`--layer 9`), a
# parameter in Python (`layer=9`). The CLI switches the vocabulary for the duration of a command.
_FLAGS: ContextVar[bool] = ContextVar("attn_cli_flags", default=False)
_NO_VALUE = object()


@contextmanager
def flag_vocabulary() -> Iterator[None]:
    token = _FLAGS.set(True)
    try:
        yield
    finally:
        _FLAGS.reset(token)


def opt(param: str, value: object = _NO_VALUE, flag: str | None = None) -> str:
    """How to name an option in a message: 'layer=9' from Python, '--layer 9' from the CLI."""
    if _FLAGS.get():
        name = flag or "--" + param.replace("_", "-")
        return name if value is _NO_VALUE or value is True else f"{name} {value}"
    return param if value is _NO_VALUE else f"{param}={value!r}"
