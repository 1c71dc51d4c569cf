"""Reading IDLE through imapclient's ``idle_check``, with the traps it hides made visible.

``idle_check`` swallows EOF and resets (it returns ``[]`` at once, forever), reports a
server's BYE as an ordinary response, and reads with no deadline of its own. The reader here
reads in short slices (to notice a stop, another thread's call, and EOF), raises
:class:`~mailtether.ConnectionLost` on BYE or EOF, and keeps the IDLE's deadline on the
injected clock.
"""

from __future__ import annotations

import select
import ssl
import threading
import time
from typing import Any, Final

from imapclient import IMAPClient

from mailtether._clock import Clock
from mailtether._errors import ConnectionLost
from mailtether.imap._errors import translate_error
from mailtether.imap._locked import LockedClient

__all__ = ["is_chatter", "read_idle"]

_SLICE: Final = 0.25  # IDLE is read in slices this long, to notice stop, waiting callers, EOF
_EARLY_EMPTY: Final = 3  # so many instant empty idle_check returns in a row mean EOF
# Untagged responses that only say "still here": not a change of the mailbox.
_CHATTER: Final = {b"OK"}


def read_idle(
    client: IMAPClient,
    locked: LockedClient[IMAPClient],
    clock: Clock,
    deadline: float,
    stop: threading.Event | None,
    *,
    secret: str,
) -> list[Any]:
    """Read an IDLE already started; return its changes (``[]`` for none).

    Returns at the first change, at *deadline* (on *clock*), when *stop* is set, or when
    another thread waits to call through *locked*.

    Raises:
        ConnectionLost: BYE, EOF, a reset, or no answer in time.
    """
    early_empties = 0
    changes: list[Any] = []
    while True:
        remaining = deadline - clock.monotonic()
        if (
            remaining <= 0
            or (stop is not None and stop.is_set())
            or locked.callers_waiting  # another thread's call: end IDLE for it
        ):
            return changes
        window = min(_SLICE, remaining)
        # How long the read itself took is a fact about the socket, not a schedule: it is
        # measured in real time whatever the clock.
        started = time.monotonic()
        try:
            responses = client.idle_check(timeout=window)
        except Exception as error:
            raise translate_error(error, "waiting in IDLE", secret=secret) from None
        except BaseException:  # Ctrl-C, SystemExit: passed on, the connection given up
            locked.mark_dead(ConnectionLost("waiting in IDLE: interrupted"))
            raise
        if responses:
            early_empties = 0
            locked.touch()
            for response in responses:
                if response and response[0] == b"BYE":
                    words = b" ".join(part for part in response[1:] if isinstance(part, bytes))
                    raise ConnectionLost(
                        f"the server said BYE during IDLE ({words.decode('utf-8', 'replace')})"
                    )
            changes.extend(response for response in responses if not is_chatter(response))
            if changes:
                return changes
            continue
        # idle_check swallows EOF and returns [] at once; a real quiet spell takes the
        # whole window. Several instant empty returns in a row: the socket is closed.
        if time.monotonic() - started < window / 2 and _readable_now(client):
            early_empties += 1
            if early_empties >= _EARLY_EMPTY:
                raise ConnectionLost("the server closed the connection during IDLE (EOF)")
        else:
            early_empties = 0


def is_chatter(response: Any) -> bool:
    """Whether an untagged response only says "still here" (not a change of the mailbox)."""
    return bool(response) and response[0] in _CHATTER


def _readable_now(client: IMAPClient) -> bool:
    sock = client.socket()
    try:
        if isinstance(sock, ssl.SSLSocket) and sock.pending():
            return True
        ready, _, _ = select.select([sock], [], [], 0)
    except (OSError, ValueError):
        return True  # a closed socket: as good as EOF
    return bool(ready)
