"""One error type for everything a user can get wrong.

The CLI prints ``str(error)`` as a single line on stderr and exits with ``exit_code``:
2 for bad usage or bad input (the user can fix it), 1 for anything else.
"""

from __future__ import annotations


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
