"""How a command ends: its exit code, and the one line that says what it did."""

from __future__ import annotations

import json
import time
from typing import Final, TextIO

from mailtether._redaction import redact_values

__all__ = ["ERROR", "NOT_FOUND", "OK", "USAGE", "answer", "when", "write_json", "write_table"]

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
    if as_json:
        write_json(out, data)
    else:
        out.write(f"{subject}: {said}\n")
    return OK if done else NOT_FOUND


def write_json(out: TextIO, data: object, *, indent: int | None = None) -> None:
    """Write *data* as JSON, every secret removed from its strings (not from the text).

    The command line's stream redacts what it is given as text; JSON is redacted before it
    is dumped instead and written past that (a secret that is also a key, or digits inside
    a number, would otherwise be replaced there and leave JSON that does not parse).
    """
    text = json.dumps(redact_values(data), indent=indent) + "\n"
    getattr(out, "unredacted", out).write(text)


def when(seconds: float | None) -> str:
    """A time as a person reads it, in local time; ``-`` for none."""
    if not seconds:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(seconds))


def write_table(out: TextIO, header: list[str], rows: list[list[str]]) -> None:
    """Write *rows* under *header* in aligned columns (the last one, a sentence, unpadded)."""
    widths = [max(len(cell) for cell in column) for column in zip(header, *rows, strict=True)]
    widths[-1] = 0
    for row in [header, *rows]:
        out.write(
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
            + "\n"
        )
