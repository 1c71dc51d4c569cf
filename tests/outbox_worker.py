"""An outbox sender process, killed mid-run by tests/test_outbox.py.

Usage: outbox_worker.py DB PORT

Delivers the outbox in the SQLite file DB through the SMTP server on 127.0.0.1:PORT until it
is killed (claims last 60 s).
"""

from __future__ import annotations

import sys

from mailtether import Outbox, SmtpRelay, SQLiteStore


def main() -> None:
    db, port = sys.argv[1:]
    relay = SmtpRelay("127.0.0.1", port=int(port), security="plain", timeout=10)
    Outbox(SQLiteStore(db), relay, claim_ttl=60, poll_interval=0.1).run()


if __name__ == "__main__":
    main()
