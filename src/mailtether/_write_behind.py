"""Recording a batch's outcomes on a thread of its own while the next batch is handled.

On a store whose server works apart from this process (Redis, PostgreSQL), a batch's outcome
write is mostly waiting for that server. The pipeline starts it here and goes on: it reads
the next batch, claims it and hands it over while the server writes, and takes the result
(or the error) before the batch's mailbox change is sent. Nothing is marked before its
outcome is recorded; the outcomes are only recorded a little later than they could be —
what a crash in between costs is what it always cost: those mails are handed out again.

A store that serialises its writers (SQLite: a second writer waits for the first one's lock)
gains nothing and is written in line, as is any store that does not say it takes writes from
several threads at once (:func:`writes_in_parallel`).
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from mailtether.stores._protocol import Store

__all__ = ["Behind", "writes_in_parallel"]


def writes_in_parallel(store: Store) -> bool:
    """Whether *store*'s writes from two threads run at once (its own server does them)."""
    return getattr(store, "_parallel_writes", False) is True


class Behind:
    """One piece of work on a thread of its own; :meth:`wait` takes its end, or its error."""

    __slots__ = ("_error", "_thread")

    def __init__(self, work: Callable[[], None], name: str) -> None:
        self._error: BaseException | None = None
        self._thread = threading.Thread(
            target=self._run, args=(work,), name=f"mailtether-record-{name}", daemon=True
        )
        self._thread.start()

    def _run(self, work: Callable[[], None]) -> None:
        try:
            work()
        except BaseException as error:  # handed to the waiting thread, which raises it
            self._error = error

    def wait(self) -> None:
        """Wait for the work to end; raise what it raised (once)."""
        self._thread.join()
        error, self._error = self._error, None
        if error is not None:
            raise error
