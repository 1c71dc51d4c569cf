"""How a command ends: its exit code, and the one line that says what it did."""

from __future__ import annotations

import json
from typing import Final, TextIO

__all__ = ["ERROR", "NOT_FOUND", "OK", "USAGE", "answer"]

# Exit codes; `check` adds 4 (unreachable) and 5 (misconfigured), see CheckReport.exit_code.
OK: Final = 0
NOT_FOUND: Final = 1
"""Not found, or not in a state that allows what was asked."""
USAGE: Final = 2
ERROR: Final = 3
"""An error: the store cannot be opened (a SQLite file that does not exist is one: the
commands that read a store never create it), or a command failed on the way."""


def answer(out: TextIO, *, as_json: bool, field: str, subject: str, done: bool, said: str) -> int:
    """Write what a command did to one thing, as a line or as JSON; return the exit code.

    Args:
        out: Where to write.
        as_json: ``{field: subject, "ok": done, "result": said}`` instead of
            ``subject: said``.
        field: What the subject is, in the JSON (``"source"``, ``"key"``).
        subject: The source or message acted on.
        done: Whether it was done; if not, the exit code is :data:`NOT_FOUND`.
        said: What happened, in a few words.
    """
    data = {field: subject, "ok": done, "result": said}
    out.write((json.dumps(data) if as_json else f"{subject}: {said}") + "\n")
    return OK if done else NOT_FOUND
