"""Tools for testing mail listeners: ours, and yours.

Everything here is public and documented, so integration developers can test their own
listeners the way mailtether tests itself:

- :class:`FakeClock`: an injectable clock that advances instantly.
- :func:`simulate` and :func:`check_strategy`: the plug-in author kit for reconnect
  strategies.
- :class:`FaultProxy`: a TCP proxy that resets, black-holes, delays or cuts connections.
- :class:`ScriptedImapServer`: a small IMAP4rev1 server that misbehaves on command.
"""

from mailtether.testing._clock import FakeClock
from mailtether.testing._proxy import FaultProxy
from mailtether.testing._scripted_imap import ScriptedImapServer
from mailtether.testing._strategies import (
    Schedule,
    ScheduleStep,
    StrategyCheckError,
    check_strategy,
    simulate,
)

__all__ = [
    "FakeClock",
    "FaultProxy",
    "Schedule",
    "ScheduleStep",
    "ScriptedImapServer",
    "StrategyCheckError",
    "check_strategy",
    "simulate",
]
